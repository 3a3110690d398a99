-- #long: a starved CPU (`make test-long`, not `make test`).
-- This process is stopped 2 ms of every 4 ms (SIGSTOP/SIGCONT, as a busy
-- host does to it) while a peer floods 200,000 nested events (the shape of
-- spec/starvation_spec.lua, which does the same with fewer):
--   1. into one quick counting handler, with the default options, under
--      vm:run and under qmp.loop, and with max_queue 1000 (what is read
--      ahead of the handler must not pile up): every event delivered, none
--      lost to overflow, no overflow reported;
--   2. into a slow handler (1 ms a call, max_queue 1000): the client still
--      reads ahead, so every event is read, the bound is reached, and
--      delivered + dropped == sent.
local qmp = require "qmp"
local core = require "qmp.core"
local fake = require "support.fake_qmp"
local starve = require "support.starve"
local measure = require "long.measure"

local cleanup = require("support.cleanup")(after_each)

local N = 200000
local LIMIT = 120   -- seconds any run may take (about 5 s here)

local function flooded(opts)
  return fake.client({ { flood = { count = N, name = "VNC_CONNECTED", data = starve.VNC_DATA } } }, cleanup, opts)
end

-- The quick handler's run under how ("vm:run" or "qmp.loop"), with max_queue
-- (nil: the default).
local function quick(how, max_queue)
  local vm = flooded({ timeout = 5, max_queue = max_queue })
  local got = starve.count(vm)
  local t0 = qmp.monotime()
  local ok, err, stops = starve.run(function()
    if how == "vm:run" then return vm:run({ timeout = LIMIT }) end
    return qmp.loop{ vm }:run({ timeout = LIMIT })
  end, LIMIT)
  local seconds = qmp.monotime() - t0
  starve.assert_none_lost(vm, got, N, 100, ok, err, stops)
  measure.say("starvation, quick handler, %s, max_queue %d: %d events in %.1f s, stopped %d times; %d delivered, "
              .. "0 lost to overflow", how, max_queue or 10000, N, seconds, stops, got.delivered)
end

describe("#long starvation", function()
  it("200,000 nested events into a quick handler under vm:run: every one delivered, none lost", function()
    quick("vm:run")
  end)

  it("200,000 nested events into a quick handler under qmp.loop: every one delivered, none lost", function()
    quick("qmp.loop")
  end)

  -- What was read ahead of the handler must not pile up: a smaller queue
  -- shows it sooner.
  it("200,000 nested events into a quick handler under vm:run with max_queue 1000: every one delivered, none lost",
     function()
    quick("vm:run", 1000)
  end)

  it("200,000 nested events into a slow handler: read ahead, delivered + dropped == sent", function()
    local vm = flooded({ timeout = 5, max_queue = 1000 })
    local got = starve.count(vm)
    vm:on("VNC_CONNECTED", function() core.sleep(0.001) end)
    local t0 = qmp.monotime()
    local ok, err, stops = starve.run(function() return vm:run({ timeout = LIMIT }) end, LIMIT)
    local seconds = qmp.monotime() - t0
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))
    assert.is_true(stops >= 100, "the process was stopped only " .. stops .. " times")
    assert.equal(N, vm.stats.events)                     -- all of it read: the peer never waited on the handler
    assert.is_true(vm.stats.overflow > 0)                -- the bound was reached ...
    assert.equal(N, got.delivered + vm.stats.overflow)   -- ... and every drop counted
    assert.is_true(got.reports > 0)
    measure.say("starvation, 1 ms handler, max_queue 1000: %d events read in %.1f s, stopped %d times; "
                .. "%d delivered + %d dropped", N, seconds, stops, got.delivered, vm.stats.overflow)
  end)
end)
