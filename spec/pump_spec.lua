-- The pump: an event read along with a reply (here, the reply to a
-- handler's own command) is dispatched at once, whoever drives the client:
-- qmp.loop, or an external loop that asks vm:timeout() before it polls.
local qmp = require "qmp"
local core = require "qmp.core"
local fake = require "support.fake_qmp"

local EV = fake.event
local REPLY = '{"return": {}, "id": %ID}\r\n'   -- a reply for a send step
local opening = fake.opening
local monotime = qmp.monotime

local cleanup = require("support.cleanup")(after_each)
local serve, connect = fake.bound(cleanup)

describe("one pump", function()
  -- The peer: a STOP; then the reply to the handler's cont and a RESUME in
  -- one write; then nothing more.
  local function peer()
    return serve(opening({ { send = EV("STOP") }, { expect = "cont" }, { send = REPLY .. EV("RESUME") },
                           { hold = 10 } }))
  end

  it("dispatches under qmp.loop, at once, an event read with the reply to a handler's command", function()
    local vm = connect(peer())
    local loop = qmp.loop{ vm }
    local executed, resumed
    loop:on("STOP", function(_, v)
      assert(v:execute("cont"))
      executed = monotime()
    end)
    loop:on("RESUME", function() resumed = monotime() end)
    -- A safety net, not a bound of the check: with the RESUME stuck, this
    -- timer would be what wakes the loop, a second later.
    vm:after(1, function() loop:stop() end)
    assert.is_true(loop:run({ done = function() return resumed ~= nil end }))
    assert.is_truthy(executed, "the STOP handler did not run")
    assert.is_truthy(resumed, "the RESUME was not delivered")
    assert.is_true(resumed - executed < 0.1, resumed - executed)
  end)

  it("has timeout() 0 while that event waits, and the next step() delivers it without polling", function()
    local vm = connect(peer())
    local in_handler, resumed
    vm:on("STOP", function(_, v)
      assert(v:execute("cont"))
      in_handler = v:timeout()
      v:stop()   -- end this step's dispatch: the RESUME stays queued
    end)
    vm:on("RESUME", function() resumed = true end)
    local deadline = monotime() + 5
    while in_handler == nil and monotime() < deadline do
      local t = vm:timeout()
      core.poll({ vm:pollfd() }, t and math.min(t, 0.2) or 0.2, { vm:events() })
      assert(vm:step())
    end
    assert.equal(0, in_handler)
    assert.is_nil(resumed)
    assert.equal(0, vm:timeout())   -- an external loop must not poll now
    local t0 = monotime()
    assert(vm:step())
    assert.is_true(resumed)
    assert.is_true(monotime() - t0 < 0.05)
  end)
end)
