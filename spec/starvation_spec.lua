-- A handler that keeps up, on a starved CPU: this process is stopped 2 ms of
-- every 4 ms (SIGSTOP/SIGCONT, as a busy host does to it) while a peer
-- floods nested events (VNC_CONNECTED's shape), which take the decoder far
-- longer than a counting handler takes.  Reading ahead (README "Events:
-- handlers, listeners, waits") is for handlers that are really slow: here
-- it must never outrun the handler, so nothing overflows max_queue.
-- spec/long/starvation_long.lua does the same with 200,000 events.
local core = require "qmp.core"
local fake = require "support.fake_qmp"
local starve = require "support.starve"

local cleanup = require("support.cleanup")(after_each)

local N = 100000   -- enough that reading ahead of the handler, as it did, overflowed max_queue

describe("a quick handler on a starved CPU", function()
  -- #timing: 100,000 events within vm:run's 20 s, which memcheck's slowdown does not keep.
  it("gets every event of a flood of nested events, none lost to overflow #timing", function()
    local vm = fake.client({ { flood = { count = N, name = "VNC_CONNECTED", data = starve.VNC_DATA } } }, cleanup)
    local got = starve.count(vm)
    local ok, err, stops = starve.run(function() return vm:run({ timeout = 20 }) end, 20)
    starve.assert_none_lost(vm, got, N, 50, ok, err, stops)
  end)

  it("still reads ahead of a slow handler: every event read, delivered + dropped == sent", function()
    local n = 5000
    local vm = fake.client({ { flood = { count = n, name = "VNC_CONNECTED", data = starve.VNC_DATA } } }, cleanup,
                           { timeout = 5, max_queue = 64 })
    local got = starve.count(vm)
    vm:on("VNC_CONNECTED", function() core.sleep(0.002) end)   -- 10 s for all of them
    local ok, err = starve.run(function() return vm:run({ timeout = 20 }) end, 20)
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))
    assert.equal(n, vm.stats.events)                     -- all of it read: the peer never waited on the handler
    assert.is_true(vm.stats.overflow > 0)                -- the bound was reached ...
    assert.equal(n, got.delivered + vm.stats.overflow)   -- ... and every drop counted
    assert.is_true(got.reports > 0)
  end)
end)
