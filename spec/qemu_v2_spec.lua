-- Version 2 behaviour against a real QEMU 7.2 (TCG): every consumer sees
-- every event, the I/O-error policy leaves alone a pause that is not the
-- error's, and a qmp.loop keeps serving one VM while another reconnects.
local qmp = require "qmp"
local proc = require "support.proc"
local qemu = require "support.qemu"
local tmp = require "support.tmp"

local cleanup = require("support.cleanup")(after_each)

local function connect(path, opts)
  local vm, err = qmp.connect(path, opts)
  assert(vm, tostring(err))
  cleanup(function() vm:close() end)
  return vm
end

local disks = require "support.disks"

describe("resume_on_io_error leaves alone a pause that is not the error's, on a real QEMU #qemu", function()
  local DELAY = 0.5

  -- A QEMU with the failing disk, a client and the policy; with two = true,
  -- a second QMP monitor on the same QEMU and a client on it (someone else).
  local function start(two, opts)
    local dir = tmp.dir("qmpv2p")
    cleanup(function() tmp.remove(dir) end)
    local args = disks.failing_disk(disks.boot_image(dir, disks.SPIN), "on")
    local other_sock = dir .. "/other.sock"
    if two then
      args[#args + 1] = "-qmp"
      args[#args + 1] = "unix:" .. other_sock .. ",server=on,wait=off"
    end
    local machine = qemu.start({ args = args })
    cleanup(function() machine:stop() end)
    opts = opts or {}
    opts.timeout, opts.name = 5, "policy"
    local vm = connect(machine.sock, opts)
    local other
    if two then
      assert(proc.wait_until(function() return proc.listening(other_sock) end, 5))
      other = connect(other_sock, { timeout = 5, name = "other" })
    end
    local lines = {}
    local p = qmp.policy.resume_on_io_error(vm, { delay = DELAY, retries = 3,
      log = function(line) lines[#lines + 1] = line end })
    local errors_at, stops = nil, 0
    vm:on("BLOCK_IO_ERROR", function() errors_at = errors_at or qmp.monotime() end)
    vm:on("STOP", function() stops = stops + 1 end)
    -- Run until the error and its own STOP have been handled.
    local function until_paused()
      local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = function() return p.errors_seen == 1 and stops == 1 end })
      assert(ok, tostring(err) .. "\n" .. machine:log())
      assert.equal("io-error", assert(vm:execute("query-status")).status)
      return errors_at
    end
    -- Run until the policy's timer is well past due, and nothing ends it.
    local function past_delay()
      local left = errors_at + DELAY + 0.2 - qmp.monotime()
      if left > 0 then
        local ok, err = vm:run({ timeout = left })
        assert.is_nil(ok)
        assert.equal("timeout", err.kind)
      end
    end
    return vm, p, lines, until_paused, past_delay, other, machine
  end

  it("resumes an I/O-error pause when nobody interferes (control)", function()
    local vm, p, lines, until_paused = start(false)
    assert(vm:execute("cont"))
    local t0 = until_paused()
    assert(vm:run({ timeout = TEST_TIMEOUT, done = function() return p.resumes == 1 end }))
    assert.is_true(qmp.monotime() - t0 >= DELAY - 0.01)
    assert.equal(2, vm:commands_sent("cont"))
    assert.matches("^disk0: I/O error %(read%), VM paused; resuming in 0.50 s %(attempt 1 of 3%)$", lines[1])
    assert.equal("disk0: cont sent (attempt 1 of 3)", lines[2])
    local st = assert(vm:execute("query-status"))
    assert.equal("running", st.status)
    assert.is_true(st.running)
  end)

  it("does not resume after an operator's stop through the same client during the delay", function()
    local vm, p, lines, until_paused, past_delay = start(false)
    assert(vm:execute("cont"))
    until_paused()
    -- QEMU ignores stop on a VM that is not running: no STOP event, the
    -- status stays io-error; only the policy's own bookkeeping can tell.
    assert(vm:execute("stop"))
    local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = function() return #lines >= 2 end })
    assert(ok, tostring(err))
    assert.equal("disk0: not resuming: stop was sent through this client during the delay", lines[2])
    past_delay()
    assert.equal(1, vm:commands_sent("cont"))  -- the script's own
    assert.equal(0, p.resumes)
    local st = assert(vm:execute("query-status"))
    assert.is_false(st.running)
    assert.equal("io-error", st.status)
    assert.equal(2, #lines)
  end)

  it("does not resume when stop goes out through this client while its query-status is in flight", function()
    -- Two coroutines share the client (cqueues): one runs the dispatch loop,
    -- where the policy's timer fires; the other, the operator, sends stop
    -- once the policy has asked for the status.  QEMU is frozen (SIGSTOP)
    -- from the moment query-status goes out until stop has gone out too, so
    -- it takes them in that order: query-status (io-error), then stop
    -- (nothing to stop: the VM is not running).  A cont after that would
    -- undo the operator's stop.
    local cqueues = require "cqueues"
    local condition = require "cqueues.condition"
    local asked, wire, pid = condition.new(), {}, nil
    local vm, p, lines, until_paused, past_delay, _, machine = start(false, { waiter = qmp.waiters.cqueues,
      trace = function(direction, text)
        if not pid or direction ~= "out" then return end
        local name = text:match('"execute"%s*:%s*"([^"]+)"')
        wire[#wire + 1] = name
        if name == "query-status" and #wire == 1 then
          proc.kill(pid, "STOP")
          asked:signal()
        elseif name == "stop" then
          proc.kill(pid, "CONT")
        end
      end })
    cleanup(function() proc.kill(machine.pid, "CONT") end)
    assert(vm:execute("cont"))
    until_paused()
    pid = machine.pid
    local cq = cqueues.new()
    local ran, stopped
    cq:wrap(function() ran = { vm:run({ timeout = TEST_TIMEOUT, done = function() return #lines >= 2 end }) } end)
    cq:wrap(function()
      if asked:wait(TEST_TIMEOUT) then stopped = { vm:execute("stop") } end
    end)
    local deadline = qmp.monotime() + TEST_TIMEOUT
    while not (ran and stopped) and qmp.monotime() < deadline do assert(cq:step(0.1)) end
    pid = nil
    proc.kill(machine.pid, "CONT")
    assert.is_truthy(ran, "the dispatch loop did not end")
    assert.is_true(ran[1], tostring(ran[2]))
    assert.is_truthy(stopped and stopped[1], "stop was not sent or failed")
    assert.same({ "query-status", "stop" }, { wire[1], wire[2] }, "sent: " .. table.concat(wire, ", "))
    past_delay()
    local st = assert(vm:execute("query-status"))
    assert.is_false(st.running, "the policy resumed the VM over the operator's stop: " .. table.concat(lines, " | ")
                                .. "; sent: " .. table.concat(wire, ", "))
    assert.equal(0, p.resumes)
    assert.equal("disk0: not resuming: stop was sent through this client during the delay", lines[2])
  end)

  it("does not resume when another monitor resumes and stops the VM during the delay", function()
    local vm, p, lines, until_paused, past_delay, other = start(true)
    assert(other:execute("cont"))   -- this client sends no cont at all
    until_paused()
    local acted = false
    -- Someone else, while this client's loop runs, well inside the delay.
    vm:after(DELAY / 10, function()
      assert(other:execute("cont"))
      assert(other:wait("RESUME", nil, 5))
      assert(other:execute("stop"))
      assert(other:wait("STOP", nil, 5))
      acted = true
    end)
    local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = function() return acted and #lines >= 2 end })
    assert(ok, tostring(err))
    assert.equal("disk0: not resuming: the VM was resumed by someone else", lines[2])
    past_delay()
    assert.equal(0, vm:commands_sent("cont"))
    assert.equal(0, p.resumes)
    local st = assert(vm:execute("query-status"))
    assert.is_false(st.running)
    assert.equal("paused", st.status)
    assert.equal(2, #lines)
  end)
end)
