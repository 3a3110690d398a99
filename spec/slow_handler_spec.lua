-- A slow handler during a flood: the client keeps reading the socket while
-- the handlers run, so the pressure lands on its own bounded queue (drops
-- counted, delivered + dropped == sent) and never on the peer, whose
-- output buffer (QEMU's monitor outbuf) would otherwise grow without limit.
local qmp = require "qmp"
local core = require "qmp.core"
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)

local N = 20000        -- events in the flood
local SLOW = 0.002     -- seconds per handler call: 20,000 of them would take 40 s

-- A client behind a peer that floods N numbered events (EV1 ... EVN) as fast
-- as the client reads them, then closes; a 2 ms handler that checks the order.
local function flooded(run)
  local vm = fake.client({ { flood = { count = N, name = "EV%d" } } }, cleanup,
                         { timeout = 5, max_queue = 64 })
  local got = { delivered = 0, last = 0, gaps = 0, disorder = 0, reports = 0 }
  vm.on_error = function(err) if err.kind == "overflow" then got.reports = got.reports + 1 end end
  vm:on("*", function(ev)
    local k = tonumber(ev.event:match("^EV(%d+)$"))
    if not k or k <= got.last then
      got.disorder = got.disorder + 1
    else
      got.gaps, got.last = got.gaps + (k - got.last - 1), k
    end
    got.delivered = got.delivered + 1
    core.sleep(SLOW)
  end)
  local t0 = qmp.monotime()
  local ok, err = run(vm)
  got.seconds = qmp.monotime() - t0
  return vm, got, ok, err
end

local function check(vm, got)
  assert.equal(N, vm.stats.events)                          -- all of it was read, none lost in the read
  assert.equal(0, got.disorder)                             -- order kept, nothing twice
  assert.is_true(vm.stats.overflow > 0)                     -- the bound was reached ...
  assert.equal(N, got.delivered + vm.stats.overflow)        -- ... and every drop counted
  assert.equal(N, got.last)                                 -- drop-oldest: the newest is never lost
  assert.equal(got.gaps, vm.stats.overflow)                 -- the drops are exactly the missing numbers
  assert.is_true(got.reports >= 1)
  assert.is_true(got.seconds < 5, ("took %.1f s"):format(got.seconds))
end

describe("a slow handler during a flood", function()
  it("under vm:run: the socket is drained, the handlers' queue drops and counts", function()
    local vm, got, ok, err = flooded(function(vm) return vm:run({ timeout = 8 }) end)
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))   -- the peer's close, after the last event was handled
    check(vm, got)
  end)

  it("under qmp.loop: the same", function()
    local closed
    local vm, got, ok, err = flooded(function(vm)
      local loop = qmp.loop{ vm }
      loop.on_close = function(v, e) closed = { v, e } end
      return loop:run({ timeout = 8 })
    end)
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))   -- no VM left
    assert.equal(vm, closed and closed[1])
    check(vm, got)
  end)
end)
