--- One connection to a monitor, from connect() to its end: the handshake as
-- a state machine, command ids, pending replies, the single router that
-- classifies every message (greeting / reply / event) once, and the intake
-- of events: the interest set (opts.events) and validation decide what is
-- handed on.
-- Nothing here blocks: advance() does what the socket allows now, and the
-- owner (the Client) decides when and how to wait (pollfd, events, deadline).
--
-- state: "connecting" -> "negotiating" -> "ready", or "dead" (s.error says
-- why) from any of them.  A session is never revived: a reconnect is a new one.
local core = require "qmp.core"
local errors = require "qmp.errors"
local peer = require "qmp.peer"

local type, pairs, ipairs, tostring, pcall = type, pairs, ipairs, tostring, pcall
local encode, concat, sort = core.encode, table.concat, table.sort

local Session = {}
Session.__index = Session

local ID_PREFIX = "qmp#"   -- our ids; replies with other ids are not ours
local MAX_STALE = 1024     -- timed-out ids remembered; older late replies count as unknown

-- A short description of a message, for errors: never its text, which may
-- hold anything (1e999, invalid UTF-8) and may be huge.  Member names are
-- the peer's too: quoted as errors.quote does.
local function describe(msg)
  if type(msg) ~= "table" then return "a JSON " .. type(msg) end
  local keys = {}
  for k in pairs(msg) do
    if #keys >= 6 then keys[#keys + 1] = "..." break end
    keys[#keys + 1] = type(k) == "string" and ('"%s"'):format(errors.quote(k, 40)) or tostring(k)
  end
  sort(keys)
  return "an object with members " .. (#keys > 0 and concat(keys, ", ") or "(none)")
end

-- A JSON array as decoded: an empty one carries core.array_mt, a full one
-- has the key 1 (a decoded object's keys are strings).
local function is_array(v)
  return type(v) == "table" and (getmetatable(v) == core.array_mt or rawget(v, 1) ~= nil)
end

-- Does the JSON text hold the escape \u0000 (and not an escaped backslash
-- followed by "u0000")?
local function has_nul_escape(text)
  local at = text:find("\\u0000", 1, true)
  while at do
    local i = at - 1
    while i > 0 and text:byte(i) == 92 do i = i - 1 end
    if (at - 1 - i) % 2 == 0 then return true end
    at = text:find("\\u0000", at + 1, true)
  end
  return false
end

--- The counters sessions keep (see vm.stats in the README): a client hands
-- the same table to each of its sessions, so they add up over reconnects;
-- only sessions write them.
function Session.counters()
  return { events = 0, replies = 0, stale = 0, unknown = 0, skipped = 0, invalid = 0, malformed = 0 }
end

--- Start a connection attempt.  p: now (the clock), target (address.target), timeout,
-- name, max_message, negotiate, expect_uid, stats (Session.counters()),
-- on_events(list, n) (the events let in, n at once, in order: list[1..n],
-- read during the call only, as the session fills the list again later),
-- report(err), setup = { { name, args, handle(value) -> nil | err }, ... }
-- run in order after negotiation, before the session counts as ready;
-- the interest (optional): wants(ev) -> true for the events to let in, and
-- interest, a set { [name] = true } when it is names only: the other
-- events are then never decoded (unless p.trace, which must see every
-- message); the events not let in are counted in stats.skipped;
-- check(ev) (optional, validation) -> the error to report for an event
-- that does not match the live schema, counted in stats.invalid (the event
-- is let in all the same); explain_end() (optional) -> text or nil: how
-- the peer ended, added to the error when the session dies.
function Session.start(p)
  local s = setmetatable({
    state = "connecting",
    name = p.name,
    greeting = nil,
    oob = false,
    error = nil,                 -- why the session died
    _lost = nil,                 -- then: the "closed" error its commands fail with
    conn = nil,
    _p = p,
    _deadline = p.now() + p.timeout,   -- for the whole handshake
    _hosts = p.target.hosts and 1,        -- tcp: index of the address being tried
    _pending = {}, _npending = 0, -- id -> pending command
    _stale = {}, _nstale = 0,     -- ids whose caller gave up: late replies are dropped
    _nextid = 0,
    _out = {},                    -- texts not yet fully written: { text, off, fds, cmd }
    _setup = 0,                   -- setup commands done
    _list = nil,                  -- what _drain fills, when not lent out
  }, Session)
  s:_open()
  return s
end

-- Open a socket to the target (the current tcp address); no waiting.
function Session:_open()
  local t, max = self._p.target, self._p.max_message
  local conn, connected
  if t.kind == "unix" then conn, connected = core.open_unix(t.path, max)
  elseif t.kind == "tcp" then conn, connected = core.open_tcp(t.hosts[self._hosts], t.port, max)
  else
    conn, connected = t.take(max)  -- an inherited fd, usable once
  end
  if not conn then return self:_connect_failed(connected) end
  self.conn = conn
  if connected then self:_connected() end
end

-- A TCP name may have several addresses (::1 and 127.0.0.1): try the next.
function Session:_connect_failed(err)
  local t = self._p.target
  if t.kind == "tcp" and t.hosts[self._hosts + 1] then
    if self.conn then self.conn:close() end
    self.conn, self._hosts = nil, self._hosts + 1
    return self:_open()
  end
  self:_die(err)
end

function Session:_connected()
  local cred, err = self.conn:peercred()   -- unix sockets only: else nil, err
  self._peer_pid = peer.pid(cred)          -- for timeout messages
  local uid = self._p.expect_uid
  if uid ~= nil then
    if not cred then return self:_die(err) end
    if cred.uid ~= uid then
      return self:_die(errors.new("denied", ("monitor peer uid %d is not the expected uid %d")
                                   :format(cred.uid, uid), { uid = cred.uid, pid = cred.pid }))
    end
    self.peer = cred
  end
  self.state = "negotiating"
end

-- The session is over: fail every pending command.  The socket stays open
-- until the owner closes it (an external loop may still be polling it).
function Session:_die(err)
  if self.state == "dead" then return end
  local why = self._p.explain_end and self._p.explain_end()   -- how the peer ended, when its owner knows
  if why then err = errors.new(err.kind, err.message .. " (" .. why .. ")", { cause = err.cause }) end
  self.state, self.error = "dead", err
  local pending = self._pending
  self._pending, self._npending, self._out = {}, 0, {}
  local lost = err.kind == "closed" and err
    or errors.new("closed", "connection lost: " .. tostring(err), { cause = err })
  self._lost = lost  -- what every later command fails with
  for _, cmd in pairs(pending) do
    if cmd.name == "quit" and cmd.sent then
      cmd.value = {}  -- QEMU may close before its reply reaches us
    else
      cmd.err = lost
    end
    self:_finish(cmd)
  end
end

function Session:_finish(cmd)
  cmd.done = true
  if cmd.on_done then
    local ok, why = pcall(cmd.on_done, cmd)
    if not ok then self:_die(errors.new("protocol", "handling the reply to " .. cmd.name .. ": " .. tostring(why))) end
  end
end

--- The socket's fd (open until close(), even once dead), or -1.
function Session:pollfd()
  return self.conn and self.conn:fileno() or -1
end

--- What to poll for: "w" while connecting, "rw" while a command is only
-- partly written, else "r".
function Session:events()
  if self.state == "connecting" then return "w" end
  return self._out[1] and "rw" or "r"
end

--- true when advance() has work without waiting: a complete message is
-- already read, or the handshake's deadline passed.
function Session:buffered()
  if self.state == "dead" or not self.conn then return false end
  if self.state ~= "ready" and self._p.now() >= self._deadline then return true end
  return self.state ~= "connecting" and self.conn:buffered()
end

--- Seconds until something is due without the socket: the handshake's
-- deadline, or the next message of a connection that is not a socket
-- (conn:due_in(), see address.target); nil when nothing is.
function Session:time_left()
  if self.state == "dead" then return nil end
  local due = self.conn and self.conn.due_in and self.conn:due_in()
  if self.state == "ready" then return due end
  local left = self._deadline - self._p.now()
  return due and math.min(due, left) or left
end

-- Write what the socket takes now.
function Session:_flush()
  local out = self._out
  while out[1] do
    local o = out[1]
    local off, err = self.conn:write(o.text, o.off, o.fds)
    if not off then return self:_die(err) end
    if off > 0 then o.cmd.sent = true end
    o.off = off
    if off < #o.text then return end
    table.remove(out, 1)
  end
end

--- Do what can be done now: finish connecting, write, and route up to
-- `limit` messages.  Returns the number of messages routed or skipped.
function Session:advance(limit)
  if self.state == "dead" then return 0 end
  if self.state == "connecting" and self.conn then
    local ok, err = self.conn:finish_connect()
    if ok == nil then self:_connect_failed(err)
    elseif ok then self:_connected() end
  end
  local n = 0
  if self.state ~= "connecting" and self.state ~= "dead" then
    if self._out[1] then self:_flush() end
    if self.state == "ready" then
      n = self:_drain(limit)
    else
      -- The owner must see the session become ready before any message
      -- that follows (its qmp.connected comes first), and what a drain took
      -- is gone from the connection: so while negotiating, one message per
      -- drain, and stop as soon as the session is ready.
      while self.state == "negotiating" and n < limit do
        local got = self:_drain(1)
        if got == 0 then break end
        n = n + got
      end
    end
  end
  if self.state ~= "ready" and self.state ~= "dead" and self._p.now() >= self._deadline then
    self:_die(self:_handshake_timeout())
  end
  return n
end

-- Take and route up to limit messages in one drain; the number taken.
-- The drain fills the session's own list again (one table for every drain,
-- not one each); it is lent to the code below, which may run user code
-- (filters, reports) that steps this session again: that inner drain then
-- gets a list of its own.
function Session:_drain(limit)
  local conn, p = self.conn, self._p
  local interest = not p.trace and p.interest or nil
  local mine = self._list or {}
  self._list = nil
  local list, skipped, err, events, wanted = conn:drain(limit, interest, mine)
  if skipped > 0 then
    local stats = p.stats
    stats.events, stats.skipped = stats.events + skipped, stats.skipped + skipped
  end
  local n = #list
  if events == n and n > 0 and not p.trace then
    -- nothing but events: the common case, handed on whole; wanted == n:
    -- the drain found each one's name in the interest set already
    self:_let_in(list, n, interest ~= nil and wanted == n)
  else
    for i = 1, n do
      if self.state == "dead" then break end  -- e.g. a bad greeting: the rest is moot
      self:_route(list[i])
    end
  end
  for i = 1, n do mine[i] = nil end  -- holding on to them would keep them alive
  self._list = mine
  if err and self.state ~= "dead" then self:_die(err) end
  return n + skipped
end

-- Hand on the events of list[1..n] the interest wants (they are kept in
-- place: the list is lent to on_events for the call only), each checked
-- first when validating.  wanted: the interest set is known to hold them
-- all.
function Session:_let_in(list, n, wanted)
  local p = self._p
  local stats, set, wants, check = p.stats, p.interest, p.wants, p.check
  stats.events = stats.events + n
  if not check and (wanted or not wants) then return p.on_events(list, n) end
  local kept = 0
  for i = 1, n do
    local ev, wanted = list[i], true
    if set then wanted = set[ev.event]   -- names only: a table read does what wants(ev) would
    elseif wants then wanted = wants(ev) end
    if wanted then
      local mismatch = check and check(ev)
      if mismatch then
        stats.invalid = stats.invalid + 1
        p.report(mismatch)
      end
      kept = kept + 1
      list[kept] = ev
    end
  end
  stats.skipped = stats.skipped + (n - kept)
  p.on_events(list, kept)
end

--- Why the peer does not answer, when its process state tells (stopped,
-- hung in the kernel: see qmp.peer), or nil.  For timeout messages.
function Session:silence()
  return self._peer_pid and peer.silence(self._peer_pid)
end

function Session:_handshake_timeout()
  local t = self._p.timeout
  if self.state == "connecting" then
    return errors.new("timeout", ("cannot connect to %s within %g s"):format(self.name, t))
  end
  local why = self:silence()
  if not self.greeting then
    local pid = self._peer_pid
    why = why or ("the monitor%s may be held by another client (QEMU serves one client per monitor), " ..
      "or it is not a QMP monitor"):format(pid and (" (pid %d)"):format(pid) or "")
    return errors.new("timeout", ("no QMP greeting from %s within %g s: %s"):format(self.name, t, why))
  end
  return errors.new("timeout", ("%s did not finish negotiating within %g s%s")
                               :format(self.name, t, why and (": " .. why) or ""))
end

-- opts.trace(direction, text): wire tracing, for debugging only.  A failing
-- tracer is reported, never allowed to break the connection.
function Session:_trace(direction, text)
  local ok, why = pcall(self._p.trace, direction, text)
  if not ok then self._p.report(errors.new("handler", "trace failed: " .. tostring(why))) end
end

-- The router: every message goes through here once (a batch of nothing but
-- events, not traced, may go straight to on_events from _drain instead).
function Session:_route(msg)
  if self._p.trace then
    local ok, text = pcall(encode, msg)  -- the decoded message, re-encoded
    self:_trace("in", ok and text or describe(msg))
  end
  local name = msg.event
  if name ~= nil then
    local named = type(name) == "string" and name ~= ""
    if named and name:sub(1, 4) ~= "qmp." then return self:_let_in({ msg }, 1) end
    local stats = self._p.stats
    stats.malformed = stats.malformed + 1
    return self._p.report(errors.new("protocol", "dropped an event " .. (named
      and "named like the client's own (qmp.*), a name QEMU never sends ("
      or "whose name is not a non-empty string (") .. describe(msg) .. ")"))
  end
  if not self.greeting then
    local g = msg.QMP
    if type(g) ~= "table" or not is_array(g.capabilities) then
      return self:_die(errors.new("protocol", ("expected the QMP greeting from %s, got %s")
                                               :format(self.name, describe(msg))))
    end
    self.greeting = msg
    return self:_negotiate()
  end
  local id = msg.id
  local cmd = id ~= nil and self._pending[id]
  -- No id: QEMU could not parse a request; it can only be the one in flight.
  -- With several in flight nobody can tell which: the stream is not to be
  -- trusted any more (QEMU may answer one unparsable command many times).
  if not cmd and id == nil and msg.error ~= nil and msg.QMP == nil and self._npending > 0 then
    if self._npending > 1 then
      local e = errors.qmp("(unknown command)", msg.error)
      return self:_die(errors.new("protocol", ("an error reply without an id (%s: %s) while %d commands " ..
        "are in flight: which one it answers is unknown"):format(errors.quote(e.class, 64),
        errors.quote(e.desc, 200), self._npending)))
    end
    local _, only = next(self._pending)
    cmd = only
  end
  if cmd then return self:_answer(cmd, msg) end
  local stats = self._p.stats
  if id ~= nil and self._stale[id] then
    self._stale[id] = nil
    self._nstale = self._nstale - 1
    stats.stale = stats.stale + 1
  else
    stats.unknown = stats.unknown + 1
  end
end

function Session:_answer(cmd, msg)
  self._pending[cmd.id] = nil
  self._npending = self._npending - 1
  self._p.stats.replies = self._p.stats.replies + 1
  local e = msg.error
  if e ~= nil then
    if type(e) == "table" and type(e.class) == "string" and type(e.desc) == "string" then
      cmd.err = errors.qmp(cmd.name, e)
    else
      cmd.err = errors.new("protocol", "reply to " .. cmd.name .. " has an error member without " ..
                           "a string class and desc", { command = cmd.name })
    end
  elseif msg["return"] == nil then
    cmd.err = errors.new("protocol", "reply to " .. cmd.name .. " has neither return nor error")
  else
    cmd.value = msg["return"]
  end
  self:_finish(cmd)
end

-- After the greeting: qmp_capabilities (oob when offered), then the setup commands.
function Session:_negotiate()
  if self._p.negotiate == false then return self:_next_setup() end
  local offered = {}
  for _, cap in ipairs(self.greeting.QMP.capabilities) do offered[cap] = true end
  local args = offered.oob and { enable = core.array{ "oob" } } or nil
  self:send("qmp_capabilities", args, nil, false, function(cmd)
    if cmd.err then
      local e = cmd.err
      if e.kind == "qmp" then e = errors.new("protocol", "negotiation failed: " .. e.message, { cause = e }) end
      return self:_die(e)
    end
    self.oob = offered.oob or false
    self:_next_setup()
  end)
end

function Session:_next_setup()
  if self.state == "dead" then return end
  local setup = self._p.setup or {}
  self._setup = self._setup + 1
  local step = setup[self._setup]
  if not step then
    self.state = "ready"
    return
  end
  if step.timeout then self._deadline = math.max(self._deadline, self._p.now() + step.timeout) end
  self:send(step.name, step.args, nil, false, function(cmd)
    local err = cmd.err or step.handle(cmd.value)
    if err then return self:_die(err) end
    self:_next_setup()
  end)
end

--- Send a command: returns the pending command { id, name, done, value,
-- err }; on_done(cmd) (optional) runs when it completes.  Raises on
-- arguments that cannot be encoded (a bug in the script), with a message
-- that has no location: the Client raises it again at its caller's line,
-- under its own "qmp: METHOD:" prefix.
function Session:send(name, args, fds, oob, on_done)
  self._nextid = self._nextid + 1
  local id = ID_PREFIX .. self._nextid
  local text = encode({ [oob and "exec-oob" or "execute"] = name, arguments = args, id = id }) .. "\n"
  if has_nul_escape(text) then  -- QEMU refuses \u0000, in an error without an id
    error(("%s: a string in the command holds a NUL byte, which QEMU refuses"):format(name), 0)
  end
  local cmd = { id = id, name = name, done = false, on_done = on_done }
  if self.state == "dead" then
    cmd.err, cmd.done = self._lost, true
    return cmd
  end
  if fds and fds[1] ~= nil and self.conn and self.conn.family and self.conn:family() ~= "unix" then
    -- Checked here, as the connection would refuse it only once it is sending.
    cmd.err, cmd.done = errors.new("unsupported", ("%s: passing fds needs a unix socket connection, and %s is %s")
      :format(name, self.name, self.conn:family())), true
    return cmd
  end
  if self._p.trace then self:_trace("out", text:sub(1, -2)) end   -- what is sent, only
  self._pending[id] = cmd
  self._npending = self._npending + 1
  local out = self._out
  out[#out + 1] = { text = text, off = 0, fds = fds, cmd = cmd }
  if #out == 1 then self:_flush() end
  return cmd
end

--- The caller of cmd gave up (its timeout passed): a late reply will be
-- dropped and counted.  A command cut half-way leaves the stream unusable.
function Session:abandon(cmd)
  if cmd.done or self._pending[cmd.id] ~= cmd then return end
  for i, o in ipairs(self._out) do
    if o.cmd == cmd and o.off > 0 then  -- cut half-way: fails with every other command
      return self:_die(errors.new("closed", ("sending %s timed out after %d of %d bytes: the stream "
        .. "is unusable"):format(cmd.name, o.off, #o.text)))
    end
    if o.cmd == cmd then table.remove(self._out, i) break end  -- never sent: nothing will answer it
  end
  self._pending[cmd.id] = nil
  self._npending = self._npending - 1
  if self._nstale >= MAX_STALE then self._stale, self._nstale = {}, 0 end  -- bounded
  self._stale[cmd.id], self._nstale = true, self._nstale + 1
end

--- true while a command's bytes wait to be written.
function Session:writing()
  return self._out[1] ~= nil
end

--- Close the socket (idempotent).  Pending commands fail with `err`.
function Session:close(err)
  self:_die(err or errors.new("closed", "the connection was closed by this client"))
  if self.conn then self.conn:close() end
end

return Session
