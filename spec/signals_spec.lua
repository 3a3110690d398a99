-- qmp.signals: a caught SIGINT/SIGTERM ends the library's blocking waits
-- with kind "interrupted", at once while it is pending, until taken.
local qmp = require "qmp"
local core = require "qmp.core"
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)

local PID = tonumber(io.open("/proc/self/stat"):read("l"):match("^(%d+)"))

-- Send this process `signal` after `delay` seconds, from a child: the
-- signal must arrive while the spec blocks in the library.
local function signal_later(signal, delay)
  os.execute(("(sleep %g; kill -%s %d) >/dev/null 2>&1 &"):format(delay, signal, PID))
end

describe("qmp.signals", function()
  before_each(function() assert(qmp.signals.catch("INT", "TERM")) end)
  after_each(function()
    qmp.signals.take()
    qmp.signals.release()
  end)

  it("ends a command waiting for a silent peer with kind interrupted, and drops its late reply", function()
    local vm, srv = fake.client({ { expect = "query-status", save = "late" }, { wait_for = "go" },
                                  { send = fake.reply('{"status": "late"}', "late") .. "\r\n" },
                                  { expect = "query-status", reply = fake.reply('{"status": "running"}') },
                                  { wait_close = true } }, cleanup)
    signal_later("INT", 0.2)
    local t0 = core.monotime()
    local ret, err = vm:execute("query-status", nil, { timeout = 10 })
    local took = core.monotime() - t0
    assert.is_nil(ret)
    assert.are.equal("interrupted", err.kind)
    assert.are.equal("SIGINT", err.signal)
    assert.are.equal("interrupted: interrupted by SIGINT", tostring(err))
    assert.is_true(took < 5, ("took %.2f s"):format(took))
    -- Still pending: the next wait returns at once, without asking the peer.
    t0 = core.monotime()
    assert.are.equal("interrupted", select(2, vm:wait("STOP", 10)).kind)
    assert.is_true(core.monotime() - t0 < 1)
    assert.are.same({ "SIGINT", 2 }, { qmp.signals.take() })
    assert.is_nil(qmp.signals.pending())
    srv:tell("go")   -- the late reply to the interrupted command comes first
    assert.are.same({ status = "running" }, assert(vm:execute("query-status")))
  end)

  it("ends vm:run and qmp.loop:run on an idle connection", function()
    local vm = fake.client({ { wait_close = true } }, cleanup)
    signal_later("TERM", 0.1)
    local ok, err = vm:run({ timeout = 10 })
    assert.is_nil(ok)
    assert.are.equal("interrupted", err.kind)
    assert.are.equal("SIGTERM", err.signal)
    assert.are.same({ "SIGTERM", 15 }, { qmp.signals.take() })
    signal_later("INT", 0.1)
    ok, err = qmp.loop({ vm }):run({ timeout = 10 })
    assert.is_nil(ok)
    assert.are.equal("interrupted", err.kind)
  end)

  it("leaves waits alone when nothing is pending, and after release", function()
    local t0 = core.monotime()
    assert.are.same({}, core.poll({}, 0.05))
    assert.is_true(core.monotime() - t0 >= 0.04)
    qmp.signals.release()
    assert.is_nil(qmp.signals.pending())
  end)

  it("rejects signal names it does not catch, pointing at the caller", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, err = pcall(qmp.signals.catch, "KILL")
    assert.is_false(ok)
    assert.are.equal("signals_spec.lua:" .. line .. ": qmp.signals.catch: KILL is not a signal it catches (INT, TERM, HUP)",
                     err:match("[^/]*$"))
  end)
end)
