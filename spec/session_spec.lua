-- The session, the state machine of one connection: driven directly through
-- a fake connection (the handshake, routing by id, abandoned commands, the
-- handshake's deadline), then its states as a client shows them in vm.state.
local qmp = require "qmp"
local core = require "qmp.core"
local socket = require "socket"
local address = require "qmp.address"
local errors = require "qmp.errors"
local Session = require "qmp.session"
local fake = require "support.fake_qmp"
local tcp_peer = require "support.tcp_peer"

local EV = fake.event
local OK = fake.reply("{}")
local monotime = qmp.monotime

local cleanup = require("support.cleanup")(after_each)
local serve = fake.bound(cleanup)

-- {==================== a session on a fake connection

-- A connection without a socket, with the interface of address's
-- { conn = }: what the peer sends (conn:send(text)) goes into a real
-- decoder; each command the session writes whole is kept, decoded, in
-- conn.commands.  conn.room: bytes write() takes before the socket would
-- be full.  conn.connecting: the connect is still under way.
local function fake_conn()
  local d = core.decoder()
  local c = { commands = {}, room = math.huge, connecting = false, closed = false }
  function c.send(_, text) d:feed(text) end
  function c.drain(_, limit, interest) return d:drain(limit, interest) end
  function c.buffered() return d:buffered() end
  function c.write(self, text, off)
    local n = math.min(#text - off, self.room)
    self.room = self.room - n
    if off + n == #text then self.commands[#self.commands + 1] = assert(core.decode(text)) end
    return off + n
  end
  function c.fileno() return -1 end
  function c.finish_connect(self) return not self.connecting end
  function c.peercred() return nil, errors.new("unsupported", "no socket, no peer credentials") end
  function c.close(self) self.closed = true end
  return c
end

-- A session on conn, named "vm0", with a handshake timeout of 5 s on a
-- clock the test moves (clock.t).  p: Session.start's parameters (over
-- overrides them); got: the events it handed on and the errors it reported.
local function start(conn, over)
  address.parse({ conn = conn })   -- raises unless conn has the whole interface
  local clock, got = { t = 0 }, { events = {}, reports = {} }
  local p = {
    now = function() return clock.t end,
    -- what address.target makes of { conn = }, but connected only once
    -- conn.connecting is false, as a TCP socket may be
    target = { kind = "fd", take = function() return conn, not conn.connecting end },
    timeout = 5, name = "vm0",
    stats = { events = 0, skipped = 0, replies = 0, stale = 0, unknown = 0, malformed = 0 },
    on_events = function(list, n) for i = 1, n do got.events[#got.events + 1] = list[i] end end,
    report = function(e) got.reports[#got.reports + 1] = e end,
  }
  for k, v in pairs(over or {}) do p[k] = v end
  return Session.start(p), p, clock, got
end

-- The reply to the command cmd (as decoded from the wire) with value, as
-- the peer would send it.
local function reply_to(cmd, json)
  return ('{"return": %s, "id": "%s"}\r\n'):format(json, cmd.id)
end

-- A session through its handshake: greeted, qmp_capabilities answered.
local function ready(over)
  local conn = fake_conn()
  local s, p, clock, got = start(conn, over)
  conn:send(fake.greeting)
  s:advance(10)
  conn:send(reply_to(conn.commands[1], "{}"))
  s:advance(10)
  assert.equal("ready", s.state)
  return s, conn, p, clock, got
end

describe("a session on a fake connection", function()
  it("goes from connecting to negotiating, sends qmp_capabilities with oob after the greeting, then is ready", function()
    local conn = fake_conn()
    conn.connecting = true
    local s, p = start(conn)
    assert.equal("connecting", s.state)
    assert.equal("w", s:events())        -- a connect under way waits for writability
    s:advance(10)
    assert.equal("connecting", s.state)
    conn.connecting = false
    s:advance(10)
    assert.equal("negotiating", s.state)
    assert.equal("r", s:events())
    assert.same({}, conn.commands)       -- nothing is sent before the greeting
    conn:send(fake.greeting)
    s:advance(10)
    assert.equal("negotiating", s.state)
    assert.equal(7, s.greeting.QMP.version.qemu.major)
    assert.equal(1, #conn.commands)
    local caps = conn.commands[1]
    assert.equal("qmp_capabilities", caps.execute)
    assert.same({ "oob" }, caps.arguments.enable)
    conn:send(reply_to(caps, "{}"))
    s:advance(10)
    assert.equal("ready", s.state)
    assert.is_true(s.oob)
    assert.equal(1, p.stats.replies)
  end)

  it("runs the setup commands in order after negotiation, and is ready only once the last is answered", function()
    local conn, seen = fake_conn(), {}
    local setup = {
      { name = "query-version", handle = function(v) seen[#seen + 1] = v.qemu.major end },
      { name = "query-status", handle = function(v) seen[#seen + 1] = v.status end },
    }
    local s = start(conn, { setup = setup })
    conn:send(fake.greeting)
    s:advance(10)
    conn:send(reply_to(conn.commands[1], "{}"))
    s:advance(10)
    assert.equal("negotiating", s.state)
    assert.equal("query-version", conn.commands[2].execute)
    assert.is_nil(conn.commands[3])      -- one at a time
    conn:send(reply_to(conn.commands[2], '{"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}'))
    s:advance(10)
    assert.equal("negotiating", s.state)
    assert.equal("query-status", conn.commands[3].execute)
    conn:send(reply_to(conn.commands[3], '{"status": "running", "running": true}'))
    s:advance(10)
    assert.equal("ready", s.state)
    assert.same({ 7, "running" }, seen)
  end)

  it("routes each reply to its command by id, in whatever order they come", function()
    local s, conn, p = ready()
    local order = {}
    local a = s:send("a", nil, nil, false, function(cmd) order[#order + 1] = cmd.name end)
    local b = s:send("b", nil, nil, false, function(cmd) order[#order + 1] = cmd.name end)
    assert.are_not.equal(a.id, b.id)
    assert.same({ a.id, b.id }, { conn.commands[2].id, conn.commands[3].id })
    conn:send(reply_to(b, '"two"') .. reply_to(a, '"one"'))
    assert.is_true(s:buffered())
    s:advance(10)
    assert.same({ "b", "a" }, order)
    assert.is_true(a.done and b.done)
    assert.same({ "one", "two" }, { a.value, b.value })
    assert.equal(3, p.stats.replies)     -- qmp_capabilities, b, a
    assert.equal(0, p.stats.unknown)
  end)

  it("counts a reply whose id is not its own in stats.unknown, and goes on", function()
    local s, conn, p = ready()
    local x = s:send("x")
    conn:send('{"return": {}, "id": "theirs"}\r\n' .. '{"return": {}, "id": 42}\r\n' .. reply_to(x, '"mine"'))
    s:advance(10)
    assert.equal(2, p.stats.unknown)
    assert.equal("mine", x.value)
    assert.equal("ready", s.state)
  end)

  it("hands on an event sent before the greeting, then takes the greeting", function()
    -- With a tracer every message goes through the router; without, a drain
    -- of nothing but events is handed on whole.
    for _, over in ipairs({ {}, { trace = function() end } }) do
      local conn = fake_conn()
      local s, _, _, got = start(conn, over)
      conn:send(EV("STOP") .. fake.greeting)
      s:advance(10)
      assert.equal(1, #got.events)
      assert.equal("STOP", got.events[1].event)
      assert.equal("negotiating", s.state)
      assert.equal("qmp_capabilities", conn.commands[1].execute)   -- the greeting counted
      assert.same({}, got.reports)
    end
  end)

  it("asks the interest again only of events the drain did not find in it, and keeps none it lent", function()
    local s, conn, p, _, got = ready()
    local asked, lists, lent = 0, {}, {}
    -- the set, read by the session, counts its reads (the fake drain below
    -- filters with a plain one)
    p.interest = setmetatable({}, { __index = function(_, name) asked = asked + 1; return name == "STOP" end })
    p.wants = function(ev) asked = asked + 1; return ev.event == "STOP" end
    p.on_events = function(list, n)
      lent[#lent + 1] = list
      for i = 1, n do got.events[#got.events + 1] = list[i] end
    end
    -- as conn:drain: the caller's list filled again, and how many listed
    -- events it found in the interest set (claimed here by the test)
    local claim
    function conn.drain(_, limit, _, list)
      lists[#lists + 1] = list
      local d = core.decoder()
      d:feed(conn.pending or "")
      conn.pending = nil
      local fresh, skipped, err, events = d:drain(limit, { STOP = true })
      for i = 1, #fresh do list[i] = fresh[i] end
      return list, skipped, err, events, claim(#fresh)
    end
    claim = function(n) return n end    -- every one found in the set
    conn.pending = EV("STOP") .. EV("STOP")
    s:advance(10)
    assert.equal(0, asked)
    assert.equal(2, #got.events)
    claim = function(n) return n - 1 end  -- one not asked about (e.g. decoded ahead)
    conn.pending = EV("STOP") .. EV("STOP") .. EV("RESUME")
    s:advance(10)
    assert.equal(2, asked)   -- the drain skipped RESUME; each listed STOP was asked about
    assert.equal(4, #got.events)
    assert.equal(lists[1], lists[2])                      -- one list for every drain
    assert.equal(lists[1], lent[1])
    assert.is_nil(next(lists[1]), "the session keeps events it handed on alive")
    assert.equal(1, p.stats.skipped)
  end)

  it("dies on a malformed greeting with a protocol error, failing later commands, leaving the socket to its owner", function()
    local conn = fake_conn()
    local s = start(conn)
    conn:send('{"QMP": {"version": {}}}\r\n')   -- no capabilities
    s:advance(10)
    assert.equal("dead", s.state)
    assert.equal("protocol", s.error.kind)
    assert.matches('expected the QMP greeting from vm0, got an object with members "QMP"', s.error.message, 1, true)
    assert.same({}, conn.commands)
    local later = s:send("query-status")
    assert.is_true(later.done)
    assert.equal("closed", later.err.kind)
    assert.equal("protocol", later.err.cause.kind)
    assert.same({}, conn.commands)       -- nothing sent
    assert.is_false(conn.closed)         -- an external loop may still poll it
    s:close()
    assert.is_true(conn.closed)
  end)

  it("drops a reply that comes after abandon(), counting it stale; the next command gets its own", function()
    local s, conn, p = ready()
    local slow = s:send("slow")
    s:abandon(slow)
    local fast = s:send("fast")
    conn:send(reply_to(slow, '"late"') .. reply_to(fast, '"fast"'))
    s:advance(10)
    assert.equal("fast", fast.value)
    assert.is_false(slow.done)           -- abandoned: nobody waits for it
    assert.is_nil(slow.value)
    assert.equal(1, p.stats.stale)
    assert.equal(0, p.stats.unknown)
    assert.equal("ready", s.state)
  end)

  it("dies when a command abandoned half-written leaves the stream unusable", function()
    local s, conn = ready()
    conn.room = 10
    local big = s:send("big", { data = ("x"):rep(100) })
    assert.is_true(s:writing())
    assert.equal("rw", s:events())
    s:abandon(big)
    assert.equal("dead", s.state)
    assert.equal("closed", s.error.kind)
    assert.matches("^sending big timed out after 10 of %d+ bytes: the stream is unusable", s.error.message)
    assert.is_true(big.done)
    assert.equal("closed", big.err.kind)
  end)

  it("dies at the handshake's deadline: no greeting, or no answer to qmp_capabilities; never once ready", function()
    local conn = fake_conn()
    local s, _, clock = start(conn)
    clock.t = 4.9
    assert.is_false(s:buffered())
    assert.is_true(math.abs(s:time_left() - 0.1) < 1e-9, s:time_left())
    s:advance(10)
    assert.equal("negotiating", s.state)
    clock.t = 5
    assert.is_true(s:buffered())         -- work to do without the socket
    s:advance(10)
    assert.equal("dead", s.state)
    assert.equal("timeout", s.error.kind)
    assert.matches("no QMP greeting from vm0 within 5 s: the monitor may be held by another client",
                   s.error.message, 1, true)

    local conn2 = fake_conn()
    local greeted, _, clock2 = start(conn2)
    conn2:send(fake.greeting)
    greeted:advance(10)
    clock2.t = 5
    greeted:advance(10)
    assert.equal("dead", greeted.state)
    assert.equal("vm0 did not finish negotiating within 5 s", greeted.error.message)

    local done, _, _, clock3 = ready()
    clock3.t = 1000
    assert.is_nil(done:time_left())
    done:advance(10)
    assert.equal("ready", done.state)
  end)
end)

-- }==================== a session on a fake connection

describe("the session's states through a client", function()
  local tcp_client, accept = tcp_peer.bound(cleanup)
  local step_until, answer = tcp_peer.step_until, tcp_peer.answer

  it("walks vm.state from connecting through negotiating to ready", function()
    -- Over TCP, where a non-blocking connect is still under way when
    -- qmp.client returns (a unix connect completes at once).  The peer is
    -- this process: it greets only when the test says.
    local vm, listener = tcp_client()
    local connected = vm:listen("qmp.connected")
    local states = { vm.state }
    local function track()
      if states[#states] ~= vm.state then states[#states + 1] = vm.state end
    end
    step_until(vm, function() return vm.state ~= "connecting" end, track)
    local peer = accept(listener)
    local steps = 0
    step_until(vm, function() steps = steps + 1 return steps > 5 end, track)   -- a few more steps: no greeting yet
    assert.equal("negotiating", vm.state)
    assert(peer:send(fake.greeting))
    step_until(vm, function() return #socket.select({ peer }, nil, 0) > 0 end, track)   -- qmp_capabilities comes
    assert.equal("negotiating", vm.state)
    assert.matches('"execute":"qmp_capabilities"', answer(peer))
    step_until(vm, function() return vm.state == "ready" end, track)
    assert.same({ "connecting", "negotiating", "ready" }, states)
    assert.equal("qmp.connected", assert(connected:next()).event)
  end)

  it("stays negotiating over a unix socket until the peer's late greeting, then is ready", function()
    local srv = serve({ { sleep = 0.2 }, { greet = true }, { expect = "qmp_capabilities", reply = OK },
                        { hold = 10 } })
    local vm = qmp.client(srv.path, { timeout = 5 })
    cleanup(function() vm:close() end)
    local states = { vm.state }
    local deadline = monotime() + 5
    while vm.state ~= "ready" and monotime() < deadline do
      core.poll({ vm:pollfd() }, 0.01, { vm:events() })
      assert(vm:step())
      if states[#states] ~= vm.state then states[#states + 1] = vm.state end
    end
    if states[1] == "connecting" then table.remove(states, 1) end
    assert.same({ "negotiating", "ready" }, states)
  end)

  local HOSTILE = fake.hostile_first

  -- Audit defect: such a first message made qmp.connect raise.
  it("returns a protocol error, never raises, for a first message with 1e999 or invalid UTF-8", function()
    for _, first in ipairs(HOSTILE) do
      local srv = serve({ { send = first }, { hold = 10 } })
      local ok, vm, err = pcall(qmp.connect, srv.path, { timeout = 2 })
      assert.is_true(ok, vm)
      assert.is_nil(vm)
      assert.equal("protocol", err.kind, tostring(err))
      srv:stop()
    end
  end)
end)
