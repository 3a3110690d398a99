-- Handlers, timers and the dispatch loop, against the scripted fake peer.
local qmp = require "qmp"
local fake = require "support.fake_qmp"

local EV = fake.event
local cleanup = require("support.cleanup")(after_each)

local _, _, vm_with = fake.bound(cleanup)

describe("vm:on()", function()
  it("runs several handlers per event in registration order, events in arrival order", function()
    local vm = vm_with({ { send = EV("STOP") .. EV("RESUME") .. EV("STOP") }, { hold = 5 } })
    local seen = {}
    vm:on("STOP", function(ev) seen[#seen + 1] = "a:" .. ev.event end)
    vm:on({ "STOP", "RESUME" }, function(ev) seen[#seen + 1] = "b:" .. ev.event end)
    vm:on("*", function(ev, v) assert.equal(vm, v); seen[#seen + 1] = "c:" .. ev.event end)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 8 end }))
    assert.same({ "a:STOP", "b:STOP", "c:STOP", "b:RESUME", "c:RESUME", "a:STOP", "b:STOP", "c:STOP" }, seen)
  end)

  it("applies data filters", function()
    local vm = vm_with({ { send = EV("BLOCK_IO_ERROR", '{"device": "ide0", "operation": "read", "action": "report"}')
                               .. EV("BLOCK_IO_ERROR", '{"device": "virtio0", "operation": "write", "action": "stop"}')
                               .. EV("VNC_CONNECTED", '{"server": {}, "client": {"host": "127.0.0.1", "service": "5901"}}') },
                       { hold = 5 } })
    local got = {}
    vm:on("BLOCK_IO_ERROR", { action = "stop", device = qmp.match("^virtio"), operation = { "read", "write" } },
          function(ev) got[#got + 1] = ev.device end)
    vm:on("VNC_*", { client = { host = "127.0.0.1" } }, function(ev) got[#got + 1] = ev.client.service end)
    vm:on("BLOCK_IO_ERROR", function(v) return v.device == "ide0" end, function(ev) got[#got + 1] = ev.action end)
    assert(vm:run({ timeout = 5, done = function() return #got >= 3 end }))
    assert.same({ "report", "virtio0", "5901" }, got)
  end)

  it("lets a handler remove itself or others while running; once runs once", function()
    local vm = vm_with({ { send = EV("STOP") .. EV("STOP") .. EV("STOP") }, { hold = 5 } })
    local a, b, c = 0, 0, 0
    local sub_b
    local sub_a
    sub_a = vm:on("STOP", function() a = a + 1; sub_a:off(); sub_b:off() end)
    sub_b = vm:on("STOP", function() b = b + 1 end)
    vm:once("STOP", function() c = c + 1 end)
    local total = 0
    vm:on("STOP", function() total = total + 1 end)
    assert(vm:run({ timeout = 5, done = function() return total >= 3 end }))
    assert.same({ 1, 0, 1 }, { a, b, c })
  end)

  it("sees a glob handler added, and no longer one removed, between two events of the same name", function()
    local ready = EV("BLOCK_JOB_READY", '{"device": "job0", "len": 10, "offset": 10, "speed": 0, "type": "mirror"}')
    local vm = vm_with({ { send = ready }, { expect = "x", reply = fake.reply("{}") }, { send = ready },
                         { expect = "y", reply = fake.reply("{}") }, { send = ready }, { hold = 5 } })
    local all, globbed = 0, 0
    vm:on("*", function() all = all + 1 end)
    assert(vm:run({ timeout = 5, done = function() return all >= 1 end }))
    local sub = vm:on({ "STOP", "BLOCK_JOB_*" }, function() globbed = globbed + 1 end)
    assert(vm:execute("x"))
    assert(vm:run({ timeout = 5, done = function() return all >= 2 end }))
    assert.equal(1, globbed)
    sub:off()
    assert(vm:execute("y"))
    assert(vm:run({ timeout = 5, done = function() return all >= 3 end }))
    assert.same({ 3, 1 }, { all, globbed })
  end)

  it("isolates a failing handler: reported with a traceback, counted, the loop goes on", function()
    local vm = vm_with({ { send = EV("STOP") .. EV("RESUME") }, { hold = 5 } })
    local reports, seen = {}, {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    vm:on("STOP", function() error("boom") end)
    vm:on("*", function(ev) seen[#seen + 1] = ev.event end)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 2 end }))
    assert.same({ "STOP", "RESUME" }, seen)
    assert.equal(1, vm.stats.handler_errors)
    assert.equal("handler", reports[1].kind)
    assert.matches("boom", reports[1].message)
    assert.not_matches("\n", reports[1].message)
    assert.matches("traceback", reports[1].traceback)
  end)

  it("lets a handler execute commands; events arriving meanwhile wait their turn", function()
    local vm = vm_with({
      { send = EV("BLOCK_IO_ERROR", '{"device": "d0", "operation": "read", "action": "stop"}') .. EV("STOP") },
      { expect = "cont" }, { send = EV("RESUME") .. '{"return": {}, "id": %ID}\r\n' }, { hold = 5 },
    })
    local order = {}
    vm:on("*", function(ev, v)
      order[#order + 1] = ev.event
      if ev.event == "BLOCK_IO_ERROR" then
        assert(v:execute("cont"))
        order[#order + 1] = "cont done"
      end
    end)
    assert(vm:run({ timeout = 5, done = function() return #order >= 4 end }))
    assert.same({ "BLOCK_IO_ERROR", "cont done", "STOP", "RESUME" }, order)
  end)

  it("lets handlers yield when the loop runs in a coroutine", function()
    local vm = vm_with({ { send = EV("STOP") .. EV("RESUME") }, { hold = 5 } })
    local seen = {}
    vm:on("*", function(ev)
      local resumed = coroutine.yield(ev.event)
      seen[#seen + 1] = ev.event .. "/" .. resumed
    end)
    local co = coroutine.wrap(function() return vm:run({ timeout = 5, done = function() return #seen >= 2 end }) end)
    assert.equal("STOP", co())
    assert.equal("RESUME", co("one"))
    assert.is_true(co("two"))
    assert.same({ "STOP/one", "RESUME/two" }, seen)
  end)
end)

describe("vm:run()", function()
  it("ends on vm:stop() from a handler, leaving later events queued", function()
    local vm = vm_with({ { send = EV("STOP") .. EV("RESUME") }, { hold = 5 } })
    local l <close> = vm:listen("RESUME")
    assert(l:wait(2))   -- both events are in: STOP comes first
    vm:on("STOP", function(_, v) v:stop() end)
    assert.is_true(vm:run({ timeout = 5 }))
    assert.equal("RESUME", assert(vm:wait("RESUME", nil, 1)).event)
  end)

  -- Found by the protocol fuzzer: the handlers after the one that stopped
  -- the loop never got its event (the next run began with the next event).
  it("leaves the stopping event's later handlers their turn, at the next run or step", function()
    local vm = vm_with({ { send = EV("STOP") .. EV("RESUME") }, { hold = 5 } })
    local l <close> = vm:listen("RESUME")
    assert(l:wait(2))
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = "a:" .. ev.event end)
    vm:on("*", function(_, v) v:stop() end)
    vm:on("*", function(ev) seen[#seen + 1] = "b:" .. ev.event end)
    assert.is_true(vm:run({ timeout = 5 }))
    assert.same({ "a:STOP" }, seen)
    assert.equal(0, vm:timeout())   -- the rest of STOP's handlers are due
    assert.is_true(vm:run({ timeout = 5 }))
    assert.same({ "a:STOP", "b:STOP", "a:RESUME" }, seen)
    assert(vm:step())
    assert.same({ "a:STOP", "b:STOP", "a:RESUME", "b:RESUME" }, seen)
  end)

  it("returns timeout when nothing ends it", function()
    local vm = vm_with({ { hold = 5 } })
    local t0 = qmp.monotime()
    local ok, err = vm:run({ timeout = 0.1 })
    assert.is_nil(ok)
    assert.equal("timeout", err.kind)
    assert.is_true(qmp.monotime() - t0 < 2)
  end)

  it("returns closed after dispatching the last events", function()
    local vm = vm_with({ { send = EV("SHUTDOWN", '{"guest": true, "reason": "guest-shutdown"}') }, { close = true } })
    local got
    vm:on("SHUTDOWN", function(ev) got = ev end)
    local ok, err = vm:run({ timeout = 5 })
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    assert.is_true(got.guest)
  end)

  it("runs timers in order, and not cancelled ones", function()
    local vm = vm_with({ { hold = 5 } })
    local fired = {}
    vm:after(0.05, function() fired[#fired + 1] = "b" end)
    vm:after(0, function() fired[#fired + 1] = "a" end)
    local t = vm:after(0.02, function() fired[#fired + 1] = "never" end)
    t:cancel()
    vm:after(0.1, function(v) fired[#fired + 1] = "c"; v:stop() end)
    assert.is_true(vm:run({ timeout = 5 }))
    assert.same({ "a", "b", "c" }, fired)
  end)
end)

describe("external event loops", function()
  it("drive a client through pollfd/events/timeout and step (cqueues)", function()
    local ok, cqueues = pcall(require, "cqueues")
    if not ok then pending("lua-cqueues is not installed") return end
    local vm = vm_with({ { sleep = 0.05 }, { send = EV("STOP") }, { sleep = 0.05 }, { send = EV("RESUME") }, { hold = 5 } })
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev.event end)
    assert.equal(vm:fileno(), vm:pollfd())
    assert.equal("r", vm:events())
    local cq = cqueues.new()
    cq:wrap(function()
      while #seen < 2 do
        cqueues.poll(vm, 2)
        assert(vm:step())
      end
    end)
    assert(cq:loop(5))
    assert.same({ "STOP", "RESUME" }, seen)
  end)
end)
