--- The QMP client: the public methods of one monitor connection, wiring
-- together the parts that do the work, each the only owner of its state:
--   Session  (session.lua)   the current connection: handshake, ids, replies,
--                            the router of every message
--   Dispatch (dispatch.lua)  handlers, listeners, waits and timers
--   Backoff  (reconnect.lua) when to try again after a lost connection
--   Waiting  (waiting.lua)   waiting for the connection: one coroutine reads,
--                            the others park; blocking, or yielding to a
--                            scheduler (waiters.lua)
--
-- vm.state is one explicit value: "connecting" | "negotiating" | "ready" |
-- "reconnecting" | "closed".
local core = require "qmp.core"
local errors = require "qmp.errors"
local address = require "qmp.address"
local filter = require "qmp.filter"
local events = require "qmp.events"
local schema = require "qmp.schema"
local waiters = require "qmp.waiters"
local Session = require "qmp.session"
local Dispatch = require "qmp.dispatch"
local Backoff = require "qmp.reconnect"
local Waiting = require "qmp.waiting"
local jobs = require "qmp.jobs"
local signals = require "qmp.signals"
local Attached = require "qmp.attached"
local escaping = require "qmp.text"

local type, tostring, pcall, setmetatable = type, tostring, pcall, setmetatable
local min, max, huge = math.min, math.max, math.huge

local Client = {}
Client.__index = Client
Client.__name = "qmp.Client"

local DEFAULT_TIMEOUT = 10
local DEFAULT_MAX_QUEUE = 10000
local BATCH = 256   -- messages routed, or events dispatched, per step: a flood cannot hold a step
local WEAK_KEYS = { __mode = "k" }

local CONNECT_OPTIONS = {
  timeout = true, name = true, negotiate = true, max_message = true, max_queue = true,
  allow_remote = true, expect_uid = true, events = true, reconnect = true, validate = true,
  waiter = true, trace = true, clock = true, explain_end = true,
}
local COMMAND_OPTIONS = { timeout = true, fds = true }
local SEND_OPTIONS = { fds = true, oob = true }
local RUN_OPTIONS = { timeout = true, done = true }
local LISTEN_OPTIONS = { max_queue = true, timeout = true }

-- On stderr, which is often a terminal: a handler's raise may hold the
-- peer's text, so it is escaped (its traceback's lines kept).
local function default_on_error(err, vm)
  io.stderr:write(("qmp: %s: %s\n"):format(escaping.escape(vm.name), escaping.escape(tostring(err), "\n\t")))
end

-- Every timeout of the client: nil for the default, math.huge for no limit.
local TIMEOUT = { optional = true, infinite = true }

local function check_timeout(where, t)
  return errors.check_duration(where, "timeout", t, TIMEOUT)
end

local function check_connect(opts)
  opts = errors.check_options("qmp.connect", opts, CONNECT_OPTIONS)
  check_timeout("qmp.connect", opts.timeout)
  local m = opts.max_queue
  if m ~= nil and (math.type(m) ~= "integer" or m < 1) then
    errors.raise("qmp.connect: max_queue must be a positive integer")
  end
  m = opts.max_message
  if m ~= nil and (math.type(m) ~= "integer" or m < 1) then
    errors.raise("qmp.connect: max_message must be a positive integer")
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then errors.raise("qmp.connect: name must be a string") end
  if opts.expect_uid ~= nil and math.type(opts.expect_uid) ~= "integer" then
    errors.raise("qmp.connect: expect_uid must be an integer")
  end
  if opts.explain_end ~= nil and type(opts.explain_end) ~= "function" then
    errors.raise("qmp.connect: explain_end must be a function() -> text or nil")
  end
  if opts.trace ~= nil and type(opts.trace) ~= "function" then
    errors.raise("qmp.connect: trace must be a function(direction, text)")
  end
  local c = opts.clock
  if c ~= nil and (type(c) ~= "table" or type(c.now) ~= "function" or type(c.sleep) ~= "function"
                   or (c.advance ~= nil and type(c.advance) ~= "function")) then
    errors.raise("qmp.connect: clock must be a table { now = function() -> seconds, sleep = function(seconds) "
                 .. "[, advance = function(seconds)] }")
  end
  local w = waiters.from(opts.waiter)
  if not w then
    errors.raise("qmp.connect: waiter must be qmp.waiters.cqueues, qmp.waiters.luv, "
                 .. "a function(fd, mode, timeout) or a { wait =, condition = } table")
  end
  return opts, w
end

-- opts.events as a set of names for conn:drain, which then skips the other
-- events undecoded; nil unless it is plain names only (a glob or a function
-- needs the decoded event: the session filters those with wants).
local function interest_set(names)
  if type(names) ~= "string" and type(names) ~= "table" then return nil end
  local exact = filter.exact_names(names)
  if #exact ~= (type(names) == "string" and 1 or #names) then return nil end
  local set = {}
  for _, name in ipairs(exact) do set[name] = true end
  return set
end

-- vm.stats: the read-only union of the parts' counters (each part writes
-- only its own); pairs() lists every counter.
local function stats_view(...)
  local parts = { ... }
  return setmetatable({}, {
    __index = function(_, name)
      for i = 1, #parts do
        local n = parts[i][name]
        if n ~= nil then return n end
      end
    end,
    __newindex = function(_, name)
      errors.raise(("qmp: vm.stats is read-only (the client's parts keep the counters): stats.%s")
                   :format(tostring(name)))
    end,
    __pairs = function()
      local all = {}
      for _, counters in ipairs(parts) do
        for name, n in next, counters do all[name] = n end
      end
      return next, all, nil
    end,
  })
end

-- A client whose first connection attempt has started.  announce: emit
-- qmp.connected once connected (qmp.connect returns connected instead).
local function new(addr, opts, announce)
  local waiter
  opts, waiter = check_connect(opts)
  local reconnect = Backoff.check(opts.reconnect)
  local a = address.parse(addr)
  if (a.kind == "fd" or a.kind == "conn") and reconnect then
    errors.raise("qmp.connect: reconnect needs an address to connect to again, not an inherited fd or connection")
  end
  local target, err = address.target(a, opts)
  if not target then return nil, err end
  local max_queue = opts.max_queue or DEFAULT_MAX_QUEUE
  local vm = setmetatable({
    name = opts.name or address.label(a),
    state = "connecting",
    greeting = nil,
    oob = false,               -- out-of-band execution negotiated
    peer = nil,                -- expect_uid: the peer's { uid, gid, pid }
    generation = 0,            -- connections made: 1 once connected, 2 after a reconnect
    default_timeout = opts.timeout or DEFAULT_TIMEOUT,
    on_error = default_on_error,
    stats = nil,               -- the parts' counters, read-only (see _compose)
    _opts = opts, _target = target,
    _interest = opts.events and filter.names(opts.events),   -- see Session.start: wants, interest
    _interest_set = interest_set(opts.events),
    _clock = opts.clock or waiters.clock,
    _session_stats = Session.counters(),   -- kept across reconnects; the sessions write them
    _backoff = reconnect and Backoff.new(reconnect, (opts.clock or waiters.clock).now),
    _session = nil,
    _schema = nil,             -- this connection's live schema (vm:schema())
    _resync = nil,             -- query-status after a reconnect
    _end = nil,                -- the error that closed the client
    _quitting = false,         -- this client sent quit: do not reconnect
    _sent = {},                -- name -> commands sent
    _announce = announce,
    _watchers = nil,           -- vm:watch: fn -> true, weak
    _attached = nil,           -- vm:attach: the parts served with this client (attached.lua)
  }, Client)
  vm:_compose(waiter, max_queue)
  vm:_attempt()
  return vm
end

-- The parts that live as long as the client, each handed what it may ask
-- of the client.
function Client:_compose(waiter, max_queue)
  self._waiting = Waiting.new({
    waiter = waiter, clock = self._clock,
    io = function() return self:_io() end,
    progress = function() return self:_progress() end,
    ended = function() return self.state == "closed" and self._end or nil end,
  })
  self._dispatch = Dispatch.new({
    now = self._clock.now,
    max_queue = max_queue,
    report = function(e) self:report(e) end,
    await = function(ready, deadline) return self._waiting:await(ready, deadline) end,
    unknown_name = function(name) return self:_unknown_name(name) end,
    pump = function() if self:_progress() then self._waiting:signal() end end,
  })
  self.stats = stats_view(self._session_stats, self._dispatch:counters())
end

--- A client that starts connecting now and never waits: its loop (run,
-- step, qmp.loop, a waiter) drives the connection.  With opts.reconnect it
-- keeps trying until QEMU is up.  vm | nil, err (TCP name resolution only).
function Client.new(addr, opts)
  return new(addr, opts, true)
end

--- Connect and wait until negotiated: vm | nil, err.  With opts.reconnect,
-- retries (with back-off) until the timeout passes.  See README.
function Client.connect(addr, opts)
  local vm, err = new(addr, opts, false)
  if not vm then return nil, err end
  local deadline = vm:now() + vm.default_timeout
  local ok, why = vm._waiting:await(function() return vm.state == "ready" end, deadline)
  if ok then return vm end
  err = vm._end and (vm._end.cause or vm._end)
  if why and why.kind == "interrupted" then err = why end
  if not err then
    local last = vm._backoff and vm._backoff.last_error
    err = errors.new("timeout", ("%s not ready within %g s%s"):format(vm.name, vm.default_timeout,
                     last and ("; last error: " .. tostring(last)) or ""), { cause = last })
  end
  vm:close()
  return nil, err
end

-- {==================== connection lifecycle

local function not_a_schema()
  return errors.new("protocol", "the reply to query-qmp-schema is not a list of entities",
                    { command = "query-qmp-schema" })
end

-- Start a connection attempt.
function Client:_attempt()
  local opts, dispatch = self._opts, self._dispatch
  local setup = {}
  self._schema, self._resync = nil, nil  -- the QEMU behind the socket may be another version
  if opts.validate then
    setup[#setup + 1] = { name = "query-qmp-schema", timeout = max(self.default_timeout, 30),
                          handle = function(v)
                            self._schema = schema.parse(v)
                            if not self._schema then return not_a_schema() end
                          end }
  end
  if self.generation > 0 then  -- what changed while the link was down
    setup[#setup + 1] = { name = "query-status", handle = function(v) self._resync = v end }
  end
  if self._backoff then self._backoff:started() end
  self._session = Session.start({
    now = self._clock.now,
    target = self._target, timeout = self.default_timeout, name = self.name,
    max_message = opts.max_message, negotiate = opts.negotiate, expect_uid = opts.expect_uid,
    stats = self._session_stats, trace = opts.trace, setup = setup, explain_end = opts.explain_end,
    wants = self._interest, interest = self._interest_set,
    check = opts.validate and function(ev) return self:_mismatch(ev) end,
    on_events = function(list, n) dispatch:push_list(list, n) end,
    report = function(e) self:report(e) end,
  })
  self.state = "connecting"
  self:_follow()
end

-- Bring vm.state in line with the session's.
function Client:_follow()
  if self.state == "reconnecting" or self.state == "closed" then return end
  local s = self._session
  if s.state == "dead" then return self:_ended(s.error) end
  if s.state ~= "ready" then
    self.state = s.state
    return
  end
  if self.state == "ready" then return end
  self.state = "ready"
  self.greeting, self.oob, self.peer = s.greeting, s.oob, s.peer
  self.generation = self.generation + 1
  local attempts = self._backoff and self._backoff:succeeded() or 1
  if self.generation == 1 then
    if self._announce then self:_synthetic("qmp.connected", { generation = 1, attempts = attempts }) end
  else
    local st = type(self._resync) == "table" and self._resync or {}   -- the peer's reply, any shape
    self:_synthetic("qmp.reconnected", { generation = self.generation, attempts = attempts,
                                         status = st.status, running = st.running })
  end
end

-- The session is over: reconnect or close.
function Client:_ended(err)
  local was_ready = self.state == "ready"
  if self._backoff and not self._quitting and self.state ~= "closed" then
    if was_ready then
      self:_synthetic("qmp.disconnected", { generation = self.generation, kind = err.kind,
                                            reason = err.message })
    end
    self:_drop_session()   -- a new socket comes: this fd must not linger
    self._backoff:failed(err)
    self.state = "reconnecting"
  else
    self.state = "closed"
    self._end = self._end or (err.kind == "closed" and err
                 or errors.new("closed", "connection lost: " .. tostring(err), { cause = err }))
  end
  self._waiting:signal()
end

function Client:_drop_session()
  local s = self._session
  if s then
    self._waiting:cancel(s:pollfd())
    s:close()
  end
end

-- Do what can be done now, without waiting.  true when anything changed
-- (a message routed, a new state): only then are parked coroutines woken.
function Client:_progress()
  local state = self.state
  if state == "closed" then return false end
  if state == "reconnecting" then
    if not self._backoff:due() then return self:_step_parts(false) end
    self:_attempt()
  end
  local routed = self._session:advance(BATCH)
  self:_follow()
  self:_changed()
  return self:_step_parts(routed > 0 or self.state ~= state)
end

-- Attached parts are stepped after every progress of the client (they
-- may forward what it read); changed passes through.
function Client:_step_parts(changed)
  local attached = self._attached
  if attached then attached:step() end
  return changed
end

-- Why a command cannot run now.
function Client:_not_ready()
  if self.state == "closed" then return self._end end
  local what = self.state == "reconnecting" and "reconnect pending" or self.state
  local detail = self._backoff and ("; " .. self._backoff:describe()) or ""
  return errors.new("closed", ("%s is not connected (%s%s)"):format(self.name, what, detail),
                    { state = self.state })
end

-- }==================== connection lifecycle

-- What the waiting part waits on: the fd and what for, and the seconds
-- until there is work without it (0: now; nil: only the fd can bring any).
function Client:_io()
  local fd, mode, due
  if self.state == "reconnecting" then
    fd, mode, due = -1, "r", self._backoff:left()
  elseif self.state == "closed" then
    fd, mode, due = -1, "r", nil
  else
    local s = self._session
    fd, mode, due = s:pollfd(), s:events(), s:buffered() and 0 or s:time_left()
  end
  local attached = self._attached
  if not attached then return fd, mode, due end
  local parts_due = attached:timeout()
  if parts_due then due = min(due or huge, parts_due) end
  return attached:sync(fd >= 0 and self._session or nil, fd, mode), "r", due
end

-- {==================== events in

--- Hand err to vm.on_error, as the client does with trouble that has no
-- caller to return to: for policies and scripts with such trouble of their
-- own.  A failing on_error is itself reported on stderr.
function Client:report(err)
  if err == nil then errors.raise("qmp: report: expected an error") end
  local handler = self.on_error
  if handler then
    local ok, why = pcall(handler, err, self)
    if not ok then default_on_error(errors.new("handler", "on_error failed: " .. tostring(why)), self) end
  end
end

function Client:_synthetic(name, data)
  self._dispatch:push(events.synthetic(name, data))
  self:_changed()
end

-- Validation mode: the error to report for an event that does not match
-- this connection's live schema, or nil.  (The session counts and reports
-- it, and lets the event in all the same.)
function Client:_mismatch(ev)
  local s = self._schema
  if not s then return nil end
  local problems = s:validate(ev)
  if problems then
    return errors.new("schema", ("%s does not match the live schema: %s")
                                :format(schema.quote(ev.event), table.concat(problems, "; ")),
                      { event = ev, problems = problems })
  end
end

-- Why an event name looks wrong, or nil when the catalogue or this
-- connection's live schema knows it.
function Client:_unknown_name(name)
  return events.unknown_name(name, self._schema)
end

-- }==================== events in

-- {==================== commands

-- opts.fds, checked whole before the command is queued: a list the socket
-- write would refuse (too many fds, a hole) must raise here, not inside the
-- flush, where the command would stay at the head of the output queue and
-- every later one fail behind it.  Read raw, as the C core reads it; a
-- __len is asked once and must agree, never walked to (it may say 2^40).
local function check_fds(where, fds)
  if fds == nil then return end
  if type(fds) ~= "table" then errors.raise(where .. ": fds must be a list of file descriptors") end
  local n, limit = rawlen(fds), core.MAX_FDS
  if n > limit then
    errors.raise(("%s: fds: %d file descriptors, but one command carries at most %d"):format(where, n, limit))
  end
  for k in next, fds do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      errors.raise(("%s: fds must be a list without holes or other keys: it has the key %s")
                   :format(where, type(k) == "string" and ("%q"):format(k) or tostring(k)))
    end
  end
  for i = 1, n do
    local fd = rawget(fds, i)
    if fd == nil then errors.raise(("%s: fds must be a list without holes: fds[%d] is nil"):format(where, i)) end
    local v = type(fd) == "number" and math.tointeger(fd)   -- luasocket's getfd() gives a float
    if not (v and core.isfd(v)) then
      errors.raise(("%s: fds[%d] = %s is not an open file descriptor"):format(where, i, tostring(fd)))
    end
  end
  local len = #fds
  if len ~= n then
    errors.raise(("%s: fds has a __len that says %s, but holds %d fd%s"):format(where, tostring(len), n,
                                                                              n == 1 and "" or "s"))
  end
end

local function check_command(method, name, args, opts)
  if type(name) ~= "string" or name == "" then
    errors.raise(("qmp: %s: command name must be a non-empty string"):format(method))
  end
  if args ~= nil and type(args) ~= "table" then
    errors.raise(("qmp: %s: arguments must be a table"):format(method))
  end
  opts = errors.check_options("qmp: " .. method, opts, COMMAND_OPTIONS)
  check_timeout("qmp: " .. method, opts.timeout)
  check_fds("qmp: " .. method, opts.fds)
  return opts
end

function Client:_command(method, name, args, opts, oob)
  opts = check_command(method, name, args, opts)
  if self.state ~= "ready" then return nil, self:_not_ready() end
  local s = self._session
  self._dispatch:mark_command()
  self._sent[name] = (self._sent[name] or 0) + 1
  if name == "quit" then self._quitting = true end
  local timeout = opts.timeout or self.default_timeout
  local deadline = self:now() + timeout   -- encoding a big argument is part of the wait
  local ok, cmd = pcall(s.send, s, name, args, opts.fds, oob)
  if not ok then errors.raise("qmp: " .. method .. ": " .. tostring(cmd)) end  -- unencodable arguments
  if s.state == "dead" then self:_follow() end  -- sending can end the session
  self:_changed()   -- a partial write waits for "w"; the command has a deadline
  local _, why = self._waiting:await(function() return cmd.done end, deadline)
  if not cmd.done then
    s:abandon(cmd)   -- its late reply is dropped
    self:_follow()
    if cmd.done then return cmd.value, cmd.err end  -- cut half-way: the session ended
    if why then return nil, why end   -- interrupted
    local silent = s:silence()   -- QEMU stopped or hung: say so (see qmp.peer)
    return nil, errors.new("timeout", ("no reply to %s from %s within %g s%s"):format(name, self.name, timeout,
                           silent and (": " .. silent) or ""), { command = name })
  end
  if name == "quit" and cmd.err and cmd.err.kind == "qmp" then self._quitting = false end
  if cmd.err then
    if cmd.err.kind == "closed" and self.state == "reconnecting" then
      return nil, errors.new("closed", cmd.err.message .. "; " .. self._backoff:describe(), { cause = cmd.err.cause })
    end
    return nil, cmd.err
  end
  return cmd.value
end

--- Run a command: its "return" value | nil, err.
-- opts.timeout overrides the client's timeout; opts.fds passes fds.
function Client:execute(name, args, opts)
  return self:_command("execute", name, args, opts, false)
end

--- Run a command out-of-band (needs the oob capability).
function Client:execute_oob(name, args, opts)
  if self.state == "ready" and not self.oob then
    check_command("execute_oob", name, args, opts)
    return nil, errors.new("unsupported", "out-of-band execution was not negotiated with " .. self.name)
  end
  return self:_command("execute_oob", name, args, opts, true)
end

--- Send a command without waiting for its reply: callback(result, err)
-- runs when the reply comes (or the connection ends first), from whatever
-- reads the socket next (vm:run, qmp.loop, another command's wait).
-- opts.fds passes fds, opts.oob sends it out-of-band.  true, or nil, err
-- when the client is not connected (the callback is not called then).
function Client:send(name, args, opts, callback)
  if callback == nil and type(opts) == "function" then opts, callback = nil, opts end
  if callback == nil and opts == nil and type(args) == "function" then args, callback = nil, args end
  if type(name) ~= "string" or name == "" then errors.raise("qmp: send: command name must be a non-empty string") end
  if args ~= nil and type(args) ~= "table" then errors.raise("qmp: send: arguments must be a table") end
  if type(callback) ~= "function" then errors.raise("qmp: send: callback must be a function") end
  opts = errors.check_options("qmp: send", opts, SEND_OPTIONS)
  check_fds("qmp: send", opts.fds)
  if self.state ~= "ready" then return nil, self:_not_ready() end
  if opts.oob and not self.oob then
    return nil, errors.new("unsupported", "out-of-band execution was not negotiated with " .. self.name)
  end
  self._dispatch:mark_command()
  self._sent[name] = (self._sent[name] or 0) + 1
  if name == "quit" then self._quitting = true end
  local called = false
  local function done(cmd)
    called = true
    if name == "quit" and cmd.err and cmd.err.kind == "qmp" then self._quitting = false end
    local ok, why = pcall(callback, cmd.value, cmd.err)
    if not ok then self:report(errors.new("handler", "the callback of " .. name .. " failed: " .. tostring(why))) end
  end
  local s = self._session
  local ok, cmd = pcall(s.send, s, name, args, opts.fds, opts.oob and true or false, done)
  if not ok then errors.raise("qmp: send: " .. tostring(cmd)) end  -- unencodable arguments
  if cmd.done and not called then return nil, cmd.err end   -- refused before it was sent
  if s.state == "dead" then self:_follow() end
  self:_changed()
  return true
end

--- Run an HMP command line; returns its output text.  QEMU ends every
-- line of it with "\r\n": the text comes back with "\n" line ends and
-- without the last line's end ("" when HMP printed nothing).
function Client:hmp(command_line, opts)
  if type(command_line) ~= "string" then errors.raise("qmp: hmp: command line must be a string") end
  local word = command_line:match("^%s*(%S+)")
  if word then self._sent["hmp " .. word] = (self._sent["hmp " .. word] or 0) + 1 end
  local text, err = self:_command("hmp", "human-monitor-command", { ["command-line"] = command_line }, opts, false)
  if type(text) == "string" then return (text:gsub("\r\n", "\n"):gsub("\n$", "")) end
  if text == nil then return nil, err end
  return nil, errors.new("protocol", ("human-monitor-command returned a %s, not text"):format(type(text)),
                         { command = "human-monitor-command" })
end

--- How many commands named name this client has sent (all coroutines);
-- "hmp stop" counts vm:hmp("stop ...") command lines.
function Client:commands_sent(name)
  return self._sent[name] or 0
end

--- Follow job `id` to its end (see jobs.lua): its last query-jobs entry | nil, err.
function Client:job_wait(id, opts)
  return jobs.wait(self, id, opts)
end

--- The live schema of this connection, read once: schema | nil, err.
-- timeout: seconds to wait for it (default the client's timeout, at least 30).
function Client:schema(timeout)
  if self._schema then return self._schema end
  check_timeout("qmp: schema", timeout)
  local entities, err = self:execute("query-qmp-schema", nil, { timeout = timeout or max(self.default_timeout, 30) })
  if not entities then return nil, err end
  local s = schema.parse(entities)
  if not s then return nil, not_a_schema() end
  self._schema = s
  return self._schema
end

-- }==================== commands

-- {==================== consumers

--- vm:on(filter [, data_filter], handler) -> subscription; handler(ev, vm).
function Client:on(names, data, fn)
  local sub = self._dispatch:on(names, data, fn, false)
  self._dispatch:check_names(names)
  return sub
end

--- Like on, but the handler runs at most once.
function Client:once(names, data, fn)
  local sub = self._dispatch:on(names, data, fn, true)
  self._dispatch:check_names(names)
  return sub
end

--- How many handlers are registered.
function Client:handlers()
  return self._dispatch:handlers()
end

--- A listener: buffers every matching event from now on (l:next, l:wait, l:close).
function Client:listen(names, data, opts)
  opts = errors.check_options("qmp: listen", opts, LISTEN_OPTIONS)
  local m = opts.max_queue
  if m ~= nil and (math.type(m) ~= "integer" or m < 1) then
    errors.raise("qmp: listen: max_queue must be a positive integer")
  end
  return self._dispatch:listen(names, data, m, check_timeout("qmp: listen", opts.timeout) or self.default_timeout)
end

--- vm:wait(filter [, data_filter] [, timeout]) -> ev | nil, err: the first
-- matching event since this coroutine's last command that no wait returned
-- yet, else the next to arrive.  Handlers and listeners see it too.
function Client:wait(names, data, timeout)
  if type(data) == "number" and timeout == nil then data, timeout = nil, data end
  check_timeout("qmp: wait", timeout)
  local d = self._dispatch
  local match = filter.compile(names, data)
  d:check_names(names)
  timeout = timeout or self.default_timeout
  d:waiting_now(true)
  local ev, err = self._waiting:await(function() return d:take(match) end, self:now() + timeout)
  d:waiting_now(false)
  if ev then return ev end
  if err then return nil, err end
  local text = ("no %s within %g s"):format(filter.describe(names, data), timeout)
  if d:matched_before(match) then
    text = text .. "; a matching event came before the last command (vm:listen, opened before the "
           .. "command, would have caught it)"
  end
  return nil, errors.new("timeout", text .. d:hint(names))
end

--- Call fn(vm) after seconds, from the dispatch loop (run, step, qmp.loop).
function Client:after(seconds, fn)
  local timer = self._dispatch:after(seconds, fn)
  self:_changed()
  return timer
end

-- }==================== consumers

-- {==================== loops

-- The dispatch loop's read (run, step): only while fewer than a batch of
-- events wait for the handlers.  What the handlers read ahead (a stopped
-- process makes even a quick one look slow, see dispatch.lua) is handed out
-- first, so it never piles up to max_queue; a slow handler's own reads go on.
function Client:_loop_progress()
  if self._dispatch:waiting() >= BATCH then return end
  if self:_progress() then self._waiting:signal() end   -- a coroutine may wait for what was read
end

-- The error to end a loop with: closed, every event dispatched.
function Client:_finished()
  if self.state == "closed" and not self._dispatch:pending() then return self._end end
end

--- One non-blocking step for external loops: progress the connection, run
-- due timers, dispatch.  true, or nil, err once closed with nothing left.
-- A simulated clock with advance(seconds) (qmp.replay's fast mode) is first
-- moved on to the next thing due: waiting on it costs nothing.
function Client:step()
  local advance = self._clock.advance
  if advance then
    local t = self:timeout()
    if t and t > 0 then advance(t) end
  end
  self:_loop_progress()
  local d = self._dispatch
  d:deliver(self, BATCH)   -- events first: a handler may cancel a timer now due
  d:run_timers(self)
  d:clear_stop()   -- a stop ends this step's dispatch, nothing more
  local finished = self:_finished()
  if finished then return nil, finished end
  return true
end

--- The cqueues polling protocol, also for other loops: poll pollfd() for
-- events(), at most timeout() seconds, then call step().
function Client:pollfd()
  if self._attached then return (self:_io()) end   -- the parts' epoll fd, whatever the state
  if self.state == "reconnecting" then return -1 end
  return self._session:pollfd()   -- a lost socket stays open until close()
end

function Client:events()
  if self._attached or self.state == "closed" or self.state == "reconnecting" then return "r" end
  return self._session:events()
end

--- 0 while there is work without waiting (events to dispatch, a complete
-- message already read); else seconds to the next timer, reconnect attempt
-- or handshake deadline; nil when only the socket can bring work.
function Client:timeout()
  if self._dispatch:pending() or self.state == "closed" then return 0 end
  local t = self._dispatch:next_due() or huge
  if self._attached then t = min(t, self._attached:timeout() or huge) end
  if self.state == "reconnecting" then
    t = min(t, self._backoff:left() or huge)
  else
    local s = self._session
    if s:buffered() then return 0 end
    t = min(t, s:time_left() or huge)
  end
  if t == huge then return nil end
  return max(0, t)
end

--- For loops that keep a client registered instead of asking it on every
-- turn (qmp.loop): fn(vm) is called whenever pollfd(), events() or
-- timeout() may have changed other than by step() -- a command sent, a
-- timer set, messages read while a command waited, a reconnect, close.
-- Held weakly, as listeners are: a loop that is dropped goes away.
function Client:watch(fn)
  if type(fn) ~= "function" then errors.raise("qmp: watch: expected a function") end
  local watchers = self._watchers
  if not watchers then
    watchers = setmetatable({}, WEAK_KEYS)
    self._watchers = watchers
  end
  watchers[fn] = true
end

--- Serve part from this client's loop (qmp.mux does): part:pollfd(),
-- part:events() and part:step() as a client has them, part:timeout()
-- optional.  Whatever waits for the client then wakes for the part too,
-- and the part is stepped after each progress of the client, also after it
-- closes (once).  true | nil, err ("unsupported" where there is no epoll).
function Client:attach(part)
  if not self._attached then
    local attached, err = Attached.new(function(e) self:report(e) end)
    if not attached then return nil, err end
    self._attached = attached
  end
  self._attached:add(part)
  self:_changed()
  return true
end

--- Stop serving part (vm:attach); idempotent.
function Client:detach(part)
  local attached = self._attached
  if attached and attached:remove(part) == 0 then
    self._attached = nil
    attached:close()
  end
  self:_changed()
end

--- Stop calling fn (vm:watch).
function Client:unwatch(fn)
  local watchers = self._watchers
  if watchers then watchers[fn] = nil end
end

function Client:_changed()
  local watchers = self._watchers
  if watchers then
    for fn in next, watchers do fn(self) end
  end
end

--- Run the dispatch loop until vm:stop(), done() returns true, the timeout
-- passes or the client closes.  true for stop/done; nil, err otherwise.
function Client:run(opts)
  opts = errors.check_options("qmp: run", opts, RUN_OPTIONS)
  check_timeout("qmp: run", opts.timeout)
  local done = opts.done
  if done ~= nil and type(done) ~= "function" then errors.raise("qmp: run: done must be a function") end
  local deadline = opts.timeout and self:now() + opts.timeout or huge
  local d = self._dispatch
  local waited = false   -- a wait progresses after it: no need again
  d:clear_stop()
  while true do
    if not waited then self:_loop_progress() end
    waited = false
    d:deliver(self, BATCH)   -- events first: a handler may cancel a timer now due
    d:run_timers(self)
    if d:stopped() or (done and done(self)) then
      d:clear_stop()
      return true
    end
    local finished = self:_finished() or signals.error()
    if finished then return nil, finished end
    local now = self:now()
    if now >= deadline then
      return nil, errors.new("timeout", ("run: %g s passed"):format(opts.timeout))
    end
    if d:pending() then
      self._waiting:pass()   -- let other coroutines run
    else
      local due = d:next_due()
      self._waiting:wait(min(deadline, due and now + due or huge))
      waited = true
    end
  end
end

--- End vm:run() (or the dispatch of the current step) after the current
-- handler returns.
function Client:stop()
  self._dispatch:stop()
  self._waiting:signal()   -- a run parked in another coroutine sees it now
end

-- }==================== loops

--- Seconds on the client's clock (monotonic; opts.clock for simulations).
function Client:now()
  return self._clock.now()
end

--- true once the client is closed for good (not while reconnecting).
function Client:closed()
  return self.state == "closed"
end

--- Why the client is not connected: the error that closed it, or that
-- ended its last session or connection attempt while it reconnects; nil
-- otherwise.
function Client:last_error()
  if self.state == "closed" then return self._end end
  if self.state == "reconnecting" then return self._backoff.last_error end
end

--- Close the connection.  Idempotent; events already received stay
-- readable (listeners, vm:wait); reconnecting ends.
function Client:close()
  self:_drop_session()
  if not self._end then
    self._end = errors.new("closed", "the connection was closed by this client")
  end
  self.state = "closed"
  self._waiting:signal()
  self:_changed()
  self:_step_parts()   -- they see the end
end
Client.__close = Client.close

function Client:__tostring()
  return ("qmp.Client (%s, %s)"):format(self.name, self.state)
end

--- The socket's fd for external event loops (-1 while there is none).
Client.fileno = Client.pollfd

return Client
