-- Commands in flight, against the scripted fake QMP peer: several at once
-- from several coroutines, out of order and out of band; late replies;
-- fds a command cannot carry; a send that ends the session; timeouts.
local qmp = require "qmp"
local socket = require "socket"
local cqueues = require "cqueues"
local fake = require "support.fake_qmp"
local in_flight = require "support.in_flight"
local raises = require "support.raises"
local tcp_peer = require "support.tcp_peer"

local EV = fake.event
local OK = fake.reply("{}")
local opening = fake.opening
local monotime = qmp.monotime

local cleanup = require("support.cleanup")(after_each)
local serve, connect = fake.bound(cleanup)

local tcp_client, accept = tcp_peer.bound(cleanup)
local step_until, answer = tcp_peer.step_until, tcp_peer.answer

local raised, here, at_line = raises.raised, raises.here, raises.at_line

describe("commands in flight", function()
  it("gives each of two coroutines its own reply when the peer answers out of order", function()
    local srv = serve(opening({
      { expect = "first", save = "first" },
      { expect = "second", save = "second" },
      { send = fake.reply('"two"', "second") .. "\r\n" },
      { send = fake.reply('"one"', "first") .. "\r\n" },
      { hold = 5 },
    }))
    local vm = connect(srv, { timeout = 5, waiter = in_flight.waiter })
    local results = in_flight.execute(vm, { "first", "second" })
    assert.same({ "one" }, results.first)
    assert.same({ "two" }, results.second)
    assert.equal(0, vm.stats.unknown)
  end)

  it("answers execute_oob while an in-band command is stuck", function()
    local srv = serve(opening({
      { expect = "slow", save = "slow" },                    -- never answered
      { expect = "migrate-pause", expect_args = '"exec%-oob"', reply = OK },
      { hold = 10 },
    }))
    local vm = connect(srv, { timeout = 5, waiter = qmp.waiters.cqueues })
    assert.is_true(vm.oob)
    local cq = cqueues.new()
    local slow, oob, slow_pending_then
    cq:wrap(function() slow = { vm:execute("slow", nil, { timeout = 5 }) } end)
    assert(cq:step(0))   -- slow is sent and parks on the socket
    assert.equal(1, vm:commands_sent("slow"))
    cq:wrap(function()
      oob = { vm:execute_oob("migrate-pause") }
      slow_pending_then = slow == nil
    end)
    local deadline = monotime() + 3
    while not oob and monotime() < deadline do assert(cq:step(0.1)) end
    assert.is_truthy(oob, "no answer to the oob command:\n" .. srv:log())
    assert.same({}, oob[1])
    assert.is_true(slow_pending_then)
    assert.is_nil(slow)
    vm:close()   -- the in-band command ends with the connection
    deadline = monotime() + 3
    while not slow and monotime() < deadline do assert(cq:step(0.1)) end
    assert.is_truthy(slow, "the in-band command did not end with the connection")
    assert.is_nil(slow[1])
    assert.equal("closed", slow[2].kind)
  end)

  it("drops and counts a late reply after a timeout; it never answers a later command", function()
    local srv = serve(opening({
      { expect = "slow", save = "slow" },
      { expect = "fast" },                                   -- sent after slow timed out
      { send = fake.reply('"late"', "slow") .. "\r\n" },     -- arrives while fast waits
      { send = fake.reply('"fast"') .. "\r\n" },
      { hold = 5 },
    }))
    local vm = connect(srv)
    local ret, err = vm:execute("slow", nil, { timeout = 0.2 })
    assert.is_nil(ret)
    assert.equal("timeout", err.kind)
    assert.equal("fast", assert(vm:execute("fast")))
    assert.equal(1, vm.stats.stale)
    assert.equal(0, vm.stats.unknown)
  end)

  it("refuses fds over TCP for that command alone (unsupported); the connection goes on", function()
    local sent = {}
    local vm, listener = tcp_client(function(direction, text)
      if direction == "out" then sent[#sent + 1] = text:match('"execute":"([^"]*)"') end
    end)
    local peer = accept(listener)
    assert(peer:send(fake.greeting))
    step_until(vm, function() return #socket.select({ peer }, nil, 0) > 0 end)   -- qmp_capabilities comes
    answer(peer)
    step_until(vm, function() return vm.state == "ready" end)
    assert.equal("ready", vm.state)
    local ret, err = vm:execute("getfd", { fdname = "f" }, { fds = { 0 }, timeout = 1 })
    assert.is_nil(ret)
    assert.equal("unsupported", err.kind)
    assert.matches("getfd: passing fds needs a unix socket connection, and 127.0.0.1:%d+ is tcp", err.message)
    assert.equal("ready", vm.state)
    assert.equal(0, #socket.select({ peer }, nil, 0.05))   -- nothing of it was sent
    assert.same({ "qmp_capabilities" }, sent)                -- nor traced as sent
    assert(peer:send(EV("STOP")))
    assert.equal("STOP", assert(vm:wait("STOP", nil, 5)).event)
  end)

  it("raises at the caller's line on an fd that is not open, sending nothing", function()
    local srv = serve(opening({ { expect = "query-status", reply = fake.reply('{"status": "running"}') },
                                { wait_close = true } }))
    local vm = connect(srv)
    local line, msg = here(), raised(function() vm:execute("getfd", { fdname = "f" }, { fds = { 65000 } }) end)
    assert.matches("qmp: execute: fds%[1%] = 65000 is not an open file descriptor", msg)
    at_line(msg, line)
    msg = raised(function() vm:execute("getfd", { fdname = "f" }, { fds = { 0.0, "1" } }) end)
    assert.matches("fds%[2%] = 1 is not an open file descriptor", msg)   -- a string, though fd 1 is open
    assert.equal("running", assert(vm:execute("query-status")).status)
    vm:close()
    assert.is_true(srv:wait(5))
    assert.equal(2, #srv:received())   -- qmp_capabilities and query-status only
  end)

  -- An fd closed after the command was made, while it waited behind another
  -- one, fails the send: nothing can tell what the peer made of the stream.
  it("fails the command whose sending ends the session, and every later one, with closed", function()
    local srv = serve(opening({ { wait_for = "read" }, { hold = 5 } }))
    local vm = connect(srv, { timeout = 5, waiter = qmp.waiters.cqueues })
    local cq, results = cqueues.new(), {}
    local spare = assert(socket.bind("127.0.0.1", 0))   -- any open fd that can be closed
    cq:wrap(function() results.big = { vm:execute("big", { data = ("x"):rep(4 << 20) }) } end)
    assert(cq:step(0))   -- big fills the socket and parks
    cq:wrap(function()
      results.getfd = { vm:execute("getfd", { fdname = "f" }, { fds = { math.tointeger(spare:getfd()) } }) }
    end)
    assert(cq:step(0))   -- queued behind big, its fd checked
    srv:tell("read")     -- before the close: telling opens a file, which could take the fd's number
    spare:close()
    local deadline = monotime() + 10
    while not (results.big and results.getfd) and monotime() < deadline do assert(cq:step(0.1)) end
    for _, name in ipairs({ "big", "getfd" }) do
      local err = assert(results[name] and results[name][2], name)
      assert.equal("closed", err.kind)
      assert.equal("io", err.cause.kind)
    end
    assert.equal("closed", vm.state)
    local _, again = vm:execute("query-status")
    assert.equal("closed", again.kind)
    assert.equal("io", again.cause.kind)
  end)

  -- Audit defect: the time spent sending a command did not count against its timeout.
  it("counts a command's timeout from the call, so the time spent sending spends it #timing", function()
    local srv = serve(opening({ { expect = "slow" }, { hold = 5 } }))
    -- The client's clock jumps 0.4 s while the command is sent, as if
    -- encoding and writing a big argument had taken that long.
    local skew = 0
    local clock = { now = function() return monotime() + skew end, sleep = qmp.waiters.clock.sleep }
    local function trace(direction, text)
      if direction == "out" and text:find('"slow"', 1, true) then skew = skew + 0.4 end
    end
    local vm = connect(srv, { clock = clock, trace = trace })
    local t0 = monotime()
    local ret, err = vm:execute("slow", nil, { timeout = 0.5 })
    local took = monotime() - t0
    assert.is_nil(ret)
    assert.equal("timeout", err.kind)
    assert.is_true(took < 0.3, took)   -- 0.1 s left after the send, not another 0.5 s
  end)
end)
