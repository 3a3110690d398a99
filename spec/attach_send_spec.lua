-- vm:send (a command whose reply comes to a callback) and vm:attach /
-- vm:detach (parts served from the client's own loop), the two client
-- methods qmp.mux is built on; against the scripted fake QEMU.
local qmp = require "qmp"
local unix = require "socket.unix"
local fake = require "support.fake_qmp"
local tmp = require "support.tmp"
local raises = require "support.raises"

local cleanup = require("support.cleanup")(after_each)
local serve, connect = fake.bound(cleanup)
local OK = fake.reply("{}")

-- A client of the fake peer playing steps after the opening (greeting
-- with capabilities, default oob), then holding the connection; its
-- on_error collects into vm.reported.
local function client(steps, capabilities, opts)
  local all = { { greet = { capabilities = capabilities or { "oob" } } },
                { expect = "qmp_capabilities", reply = OK } }
  for _, step in ipairs(steps or {}) do all[#all + 1] = step end
  all[#all + 1] = { hold = 30 }
  local srv = serve(all)
  local vm = connect(srv, opts or { timeout = 5 })
  vm.reported = {}
  vm.on_error = function(err) vm.reported[#vm.reported + 1] = err end
  return vm, srv
end

local function drive(runner, done, what)
  local ok, err = runner:run({ timeout = TEST_TIMEOUT, done = done })
  assert(ok, ("waiting for %s: %s"):format(what, tostring(err)))
end

describe("vm:send", function()
  it("calls back with the reply's value, in each of its argument forms", function()
    local vm, srv = client({
      { expect = "query-status", reply = fake.reply('{"status": "paused", "running": false}') },
      { expect = "query-name", reply = fake.reply('{"name": "vm1"}') },
      { expect = "device_del", expect_args = '"nic1"', reply = OK },
    })
    local got = {}
    local function collect(key)
      return function(...) got[key] = table.pack(...) end
    end
    assert.is_true(vm:send("query-status", collect("status")))
    assert.is_true(vm:send("query-name", nil, collect("name")))
    assert.is_true(vm:send("device_del", { id = "nic1" }, {}, collect("del")))
    drive(vm, function() return got.del ~= nil end, "three replies")
    assert.same({ n = 2, { status = "paused", running = false } }, got.status)
    assert.same({ n = 2, { name = "vm1" } }, got.name)
    assert.same({ n = 2, {} }, got.del)
    assert.equal(4, #srv:received())
    assert.equal(1, vm:commands_sent("query-status"))
  end)

  it("calls back with nil and an error of kind qmp, with QEMU's class and desc", function()
    local vm = client({
      { expect = "device_del",
        reply = [[{"error": {"class": "DeviceNotFound", "desc": "Device 'nic9' not found"}, "id": %ID}]] },
    })
    local value, err, called
    vm:send("device_del", { id = "nic9" }, function(v, e) value, err, called = v, e, true end)
    drive(vm, function() return called end, "the error reply")
    assert.is_nil(value)
    assert.equal("qmp", err.kind)
    assert.equal("DeviceNotFound", err.class)
    assert.equal("Device 'nic9' not found", err.desc)
  end)

  it("calls back with kind closed when the connection ends before the reply", function()
    local srv = serve({ { greet = true }, { expect = "qmp_capabilities", reply = OK },
                        { expect = "query-status" }, { close = true } })
    local vm = connect(srv, { timeout = 5 })
    local got
    vm:send("query-status", function(v, e) got = { v, e } end)
    vm:run({ timeout = TEST_TIMEOUT, done = function() return got ~= nil end })
    assert.is_not_nil(got, "no callback")
    assert.is_nil(got[1])
    assert.equal("closed", got[2].kind)
  end)

  it("returns nil, err and never calls back when the client is not connected", function()
    local vm = client()
    local called = false
    vm:close()
    local ok, err = vm:send("query-status", function() called = true end)
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    -- reconnecting: not connected either
    local srv = serve({ { greet = true }, { expect = "qmp_capabilities", reply = OK }, { close = true } })
    local again = connect(srv, { timeout = 5, reconnect = { min = 5, max = 10 } })
    drive(again, function() return again.state == "reconnecting" end, "the connection to drop")
    ok, err = again:send("query-status", function() called = true end)
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    assert.matches("reconnect pending", err.message)
    again:run({ timeout = 0.05 })
    assert.is_false(called)
  end)

  it("reports a callback that raises through vm.on_error (kind handler); the client goes on", function()
    local vm = client({
      { expect = "query-status", reply = fake.reply('{"status": "paused", "running": false}') },
      { expect = "query-name", reply = fake.reply('{"name": "vm1"}') },
    })
    vm:send("query-status", function() error("callback bug") end)
    drive(vm, function() return #vm.reported > 0 end, "the report")
    assert.equal(1, #vm.reported)
    assert.equal("handler", vm.reported[1].kind)
    assert.matches("query%-status", vm.reported[1].message)
    assert.matches("callback bug", vm.reported[1].message)
    assert.same({ name = "vm1" }, vm:execute("query-name"))
    assert.equal("ready", vm.state)
  end)

  it("raises at the caller's line on misuse: an unknown option, bad fds, no callback, no name", function()
    local vm = client()
    local cb = function() end
    local line, msg = raises.here(), raises.raised(function() vm:send("getfd", { fdname = "f" }, { fd = {} }, cb) end)
    raises.at_line(msg, line)
    assert.matches('unknown option "fd"', msg)
    assert.matches('did you mean "fds"', msg)
    line, msg = raises.here(), raises.raised(function() vm:send("getfd", nil, { fds = "3" }, cb) end)
    raises.at_line(msg, line)
    assert.matches("fds must be a list", msg)
    line, msg = raises.here(), raises.raised(function() vm:send("getfd", nil, { fds = { 1 << 20 } }, cb) end)
    raises.at_line(msg, line)
    assert.matches("is not an open file descriptor", msg)
    line, msg = raises.here(), raises.raised(function() vm:send("query-status") end)
    raises.at_line(msg, line)
    assert.matches("callback must be a function", msg)
    line, msg = raises.here(), raises.raised(function() vm:send("", cb) end)
    raises.at_line(msg, line)
    assert.matches("command name", msg)
    line, msg = raises.here(), raises.raised(function() vm:send("x", "args", cb) end)
    raises.at_line(msg, line)
    assert.matches("arguments must be a table", msg)
    assert.equal(0, vm:commands_sent("getfd"))
  end)

  it("sends exec-oob when oob was negotiated", function()
    local vm, srv = client({ { expect = "migrate-pause", expect_args = '"exec%-oob"', reply = OK } })
    assert.is_true(vm.oob)
    local got
    assert.is_true(vm:send("migrate-pause", nil, { oob = true }, function(v, e) got = { v, e } end))
    drive(vm, function() return got ~= nil end, "the reply")
    assert.same({}, got[1])
    assert.matches('"exec%-oob":"migrate%-pause"', srv:received()[2])
  end)

  it("returns nil, err kind unsupported for oob when the upstream offered none; nothing is sent", function()
    local vm, srv = client({ { expect = "query-name", reply = fake.reply('{"name": "vm1"}') } }, {})
    assert.is_false(vm.oob)
    local called = false
    local ok, err = vm:send("migrate-pause", nil, { oob = true }, function() called = true end)
    assert.is_nil(ok)
    assert.equal("unsupported", err.kind)
    assert.same({ name = "vm1" }, vm:execute("query-name"))
    assert.is_false(called)
    assert.equal(2, #srv:received())
  end)
end)

-- A part whose fd is one end of a unix socket pair: the spec writes to
-- the other end (part.peer); each step reads what came into part.got.
local function socket_part(name)
  local dir = tmp.dir("qmppart")
  cleanup(function() tmp.remove(dir) end)
  local path = dir .. "/p.sock"
  local listener = assert(unix.stream())
  assert(listener:bind(path))
  assert(listener:listen(1))
  local peer = assert(unix.stream())
  assert(peer:connect(path))
  local mine = assert(listener:accept())
  listener:close()
  mine:settimeout(0)
  cleanup(function() peer:close() mine:close() end)
  local part = { name = name, peer = peer, got = "", steps = 0 }
  part.pollfd = function() return math.tointeger(mine:getfd()) end
  part.events = function() return "r" end
  function part:step()
    self.steps = self.steps + 1
    local data, _, partial = mine:receive(4096)
    self.got = self.got .. (data or partial or "")
  end
  return part
end

describe("vm:attach", function()
  it("wakes vm:run when a part's fd becomes readable, and steps the part", function()
    local vm = client()
    local part = socket_part()
    assert.is_true(vm:attach(part))
    assert(part.peer:send("x"))
    local t0 = qmp.monotime()
    drive(vm, function() return part.got == "x" end, "the part's step")
    assert.is_true(qmp.monotime() - t0 < TEST_TIMEOUT / 2)
    assert(part.peer:send("yz"))
    drive(vm, function() return part.got == "xyz" end, "the part's second step")
    assert.same({}, vm.reported)
  end)

  it("is stepped by a qmp.loop that holds the vm, attached before or after the loop took it", function()
    local vm = client()
    local before, after = socket_part("before"), socket_part("after")
    vm:attach(before)
    local loop = qmp.loop({ vm })
    cleanup(function() loop:close() end)
    vm:attach(after)
    assert(before.peer:send("b"))
    drive(loop, function() return before.got == "b" end, "the part attached before")
    assert(after.peer:send("a"))
    drive(loop, function() return after.got == "a" end, "the part attached after")
  end)

  it("stops stepping a part once detached (idempotent), the vm going on", function()
    local vm = client({ { expect = "query-name", reply = fake.reply('{"name": "vm1"}') } })
    local part, other = socket_part("detached"), socket_part("other")
    vm:attach(part)
    vm:attach(other)
    assert(part.peer:send("x"))
    drive(vm, function() return part.got == "x" end, "the part's step")
    vm:detach(part)
    vm:detach(part)
    local steps = part.steps
    assert(part.peer:send("y"))
    assert(other.peer:send("o"))
    drive(vm, function() return other.got == "o" end, "the other part")
    assert.same({ name = "vm1" }, vm:execute("query-name"))
    assert.equal(steps, part.steps)
    assert.equal("x", part.got)
    vm:detach(other)
    assert.is_nil(vm:run({ timeout = 0.05 }))   -- nothing attached: it waits on the session alone
  end)

  it("reports a part that raises (kind handler) and still steps the others", function()
    local vm = client()
    local bad = socket_part("bad")
    bad.step = function() error("part bug") end
    local good = socket_part("good")
    vm:attach(bad)
    vm:attach(good)
    assert(good.peer:send("g"))
    drive(vm, function() return good.got == "g" end, "the good part")
    assert.is_true(#vm.reported >= 1)
    for _, err in ipairs(vm.reported) do
      assert.equal("handler", err.kind)
      assert.matches("part bug", err.message)
    end
    assert.equal("ready", vm.state)
  end)

  it("steps its parts once more when the vm closes", function()
    local vm = client()
    local part = socket_part()
    vm:attach(part)
    local steps = part.steps
    vm:close()
    assert.equal(steps + 1, part.steps)
  end)

  it("raises at the caller's line for what is not a part", function()
    local vm = client()
    local line, msg = raises.here(), raises.raised(function() vm:attach({}) end)
    raises.at_line(msg, line)
    assert.matches("expected an object with pollfd, events and step methods", msg)
    line, msg = raises.here(), raises.raised(function()
      vm:attach({ pollfd = function() return -1 end, events = function() return "r" end }) end)
    raises.at_line(msg, line + 1)
    assert.error_matches(function() vm:attach(42) end, "expected an object")
    assert.error_matches(function() vm:attach(nil) end, "expected an object")
  end)
end)
