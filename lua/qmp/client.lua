--- The QMP client: connect, negotiate, execute, events.
-- One Client per monitor connection.  The C core reads, frames and decodes;
-- this file does the protocol: greeting, capabilities, id matching, the
-- event queue and waiting.  Nothing here blocks longer than a deadline.
local core = require "qmp.core"
local errors = require "qmp.errors"
local address = require "qmp.address"
local filter = require "qmp.filter"

local type, ipairs, tostring, error, setmetatable = type, ipairs, tostring, error, setmetatable
local monotime, encode, max = core.monotime, core.encode, math.max

local Client = {}
Client.__index = Client
Client.__name = "qmp.Client"

local DEFAULT_TIMEOUT = 10
local DEFAULT_MAX_QUEUE = 10000
local ID_PREFIX = "qmp#"   -- our ids; replies with other ids are not ours
local MAX_STALE = 1024     -- timed-out ids remembered; older late replies count as unknown

local function remaining(deadline)
  return max(0, deadline - monotime())
end

local function check_opts(opts)
  if opts == nil then return {}, nil end
  if type(opts) ~= "table" then error("qmp.connect: options must be a table", 3) end
  local t = opts.timeout
  if t ~= nil and (type(t) ~= "number" or t < 0) then
    error("qmp.connect: timeout must be a non-negative number of seconds", 3)
  end
  local reconnect = Client._check_reconnect(opts.reconnect)
  local m = opts.max_queue
  if m ~= nil and (math.type(m) ~= "integer" or m < 1) then
    error("qmp.connect: max_queue must be a positive integer", 3)
  end
  return opts, reconnect
end

local function default_on_error(err, vm)
  io.stderr:write(("qmp: %s: %s\n"):format(vm.name, tostring(err)))
end

--- Connect to a monitor: vm | nil, err.  See README "qmp.connect".
function Client.connect(addr, opts)
  local reconnect
  opts, reconnect = check_opts(opts)
  local a = address.parse(addr)
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  local deadline = monotime() + timeout
  local conn, err = address.open(a, timeout, opts)
  if not conn then return nil, err end
  local vm = setmetatable({
    conn = conn,
    name = opts.name or address.label(a),
    default_timeout = timeout, -- for commands and waits; vm:timeout() is the cqueues method
    greeting = nil,
    oob = false,               -- out-of-band execution negotiated
    max_queue = opts.max_queue or DEFAULT_MAX_QUEUE,
    on_error = default_on_error,
    stats = { events = 0, replies = 0, stale = 0, unknown = 0, overflow = 0,
              skipped = 0, handler_errors = 0, invalid = 0 },
    _queue = {}, _qhead = 1, _qtail = 0,  -- events received, not yet consumed
    _nextid = 0,
    _stale = {}, _nstale = 0,  -- ids whose caller gave up: late replies are dropped
    _interest = opts.events and filter.names(opts.events),
    _closed = nil,             -- the error that closed the connection
    generation = 1,            -- counts connections: 2 after the first reconnect
    _address = a, _opts = opts,
    _reconnect = reconnect,    -- { min, max } or nil (reconnect.lua)
    _attempts = 0,
    _validating = opts.validate, -- check events against the live schema (schema.lua)
    _handlers = {},            -- subscriptions, in registration order (handlers.lua)
    _timers = {},              -- vm:after timers, sorted by due time
  }, Client)
  if opts.expect_uid ~= nil then
    local ok, why = vm:_check_peer(opts.expect_uid)
    if not ok then conn:close(); return nil, why end
  end
  vm._reconnecting = true  -- a failure now is connect's to report, not a reconnect's
  local ok, why = vm:_handshake(deadline, opts.negotiate ~= false)
  if ok and opts.validate then ok, why = vm:schema() end
  vm._reconnecting = false
  if not ok then
    conn:close()
    return nil, why
  end
  return vm
end

function Client:_check_peer(uid)
  local cred, err = self.conn:peercred()
  if not cred then return nil, err end
  if cred.uid ~= uid then
    return nil, errors.new("denied", ("monitor peer uid %d is not the expected uid %d")
                                     :format(cred.uid, uid), { uid = cred.uid, pid = cred.pid })
  end
  self.peer = cred
  return true
end

-- Read the greeting (queueing any event that comes before it), then
-- negotiate capabilities, enabling oob when the monitor offers it.
function Client:_handshake(deadline, negotiate)
  while not self.greeting do
    local msg, err = self:_receive(remaining(deadline))
    if not msg then
      if err.kind == "timeout" then
        err = errors.new("timeout", "no QMP greeting from " .. self.name ..
                         " within the timeout (is it a QMP monitor?)")
      end
      return nil, err
    end
    if msg ~= true then
      local g = msg.QMP
      if type(g) ~= "table" or type(g.capabilities) ~= "table" then
        return nil, errors.new("protocol", "expected the QMP greeting, got " ..
                               tostring(core.encode(msg)):sub(1, 120))
      end
      self.greeting = msg
    end
  end
  if not negotiate then return true end
  local offered = {}
  for _, cap in ipairs(self.greeting.QMP.capabilities) do offered[cap] = true end
  local args = offered.oob and { enable = core.array{ "oob" } } or nil
  local ok, err = self:_call({ execute = "qmp_capabilities", arguments = args },
                             remaining(deadline))
  if not ok then
    if err.kind == "qmp" then err.kind = "protocol"; err.message = "negotiation failed: " .. err.message end
    return nil, err
  end
  self.oob = offered.oob or false
  return true
end

-- The connection is gone: remember why.  The fd stays open until vm:close(),
-- so an external event loop never polls a closed (or reused) descriptor.
function Client:_lost(err)
  if not self._closed then
    self._closed = err.kind == "closed" and err
      or errors.new("closed", "connection lost: " .. tostring(err), { cause = err })
    if self._reconnect and not self._user_closed and not self._reconnecting then
      self:_start_reconnect(self._closed)
    end
  end
end

-- Put an event at the back of the queue; the oldest goes when it is full.
-- always: bypass the interest set (the client's own lifecycle events).
function Client:_enqueue(ev, always)
  local stats = self.stats
  stats.events = stats.events + 1
  if self._interest and not always and not self._interest(ev) then
    stats.skipped = stats.skipped + 1
    return
  end
  if self._validating then self:_validate(ev) end
  local tail = self._qtail + 1
  self._queue[tail], self._qtail = ev, tail
  if tail - self._qhead + 1 > self.max_queue then
    self._queue[self._qhead] = nil
    self._qhead = self._qhead + 1
    stats.overflow = stats.overflow + 1
    local n = stats.overflow
    if n & (n - 1) == 0 then  -- report the 1st, 2nd, 4th, 8th ... drop: never silent, never a flood
      self:_report(errors.new("overflow", ("event queue full (max_queue %d): dropped the oldest event, %d so far")
                                           :format(self.max_queue, n)))
    end
  end
end

function Client:_report(err)
  local handler = self.on_error
  if handler then
    local ok, why = pcall(handler, err, self)
    if not ok then default_on_error(errors.new("handler", "on_error failed: " .. tostring(why)), self) end
  end
end

-- Read one message.  Events are queued and reported as true; anything else
-- is returned.  A broken or closed stream closes the client.
function Client:_receive(timeout)
  if self._closed then return nil, self._closed end
  local msg, err = self.conn:recv(timeout)
  if msg == nil then
    if err.kind ~= "timeout" then self:_lost(err); return nil, self._closed end
    return nil, err
  end
  if msg.event ~= nil then
    if type(msg.event) ~= "string" then
      self:_report(errors.new("protocol", "event with a non-string name dropped"))
      return true
    end
    self:_enqueue(msg)
    return true
  end
  return msg
end

-- A reply nobody waits for: late (after a timeout) or unknown.
function Client:_stray(msg)
  local id = msg.id
  if id ~= nil and self._stale[id] then
    self._stale[id] = nil
    self._nstale = self._nstale - 1
    self.stats.stale = self.stats.stale + 1
  elseif msg.QMP == nil then
    self.stats.unknown = self.stats.unknown + 1
  end
end

-- Send cmd with a fresh id and wait for its reply: return value | nil, err.
function Client:_call(cmd, timeout, fds)
  if self._closed then return nil, self._closed end
  local name = cmd.execute or cmd["exec-oob"]
  self._nextid = self._nextid + 1
  local id = ID_PREFIX .. self._nextid
  cmd.id = id
  local text = encode(cmd) .. "\n"   -- raises on unencodable arguments: a programmer error
  local deadline = monotime() + timeout
  local ok, err = self.conn:send(text, timeout, fds)
  if not ok then
    if err.kind == "closed" or self.conn:isclosed() then self:_lost(err); err = self._closed end
    return nil, err
  end
  while true do
    local msg, rerr = self:_receive(remaining(deadline))
    if msg == nil then
      if rerr.kind == "timeout" then
        if self._nstale >= MAX_STALE then  -- bounded: forget the old ones
          self._stale, self._nstale = {}, 0
        end
        self._stale[id], self._nstale = true, self._nstale + 1
        return nil, errors.new("timeout", ("no reply to %s within %g s"):format(name, timeout),
                               { command = name })
      end
      if name == "quit" then return {} end  -- QEMU may close before its reply reaches us
      return nil, rerr
    end
    if msg ~= true then
      -- QEMU answers without an id only when it could not parse the request,
      -- which can only be the one in flight.
      if msg.id == id or (msg.id == nil and msg.error ~= nil and msg.QMP == nil) then
        self.stats.replies = self.stats.replies + 1
        if msg.error ~= nil then return nil, errors.qmp(name, msg.error) end
        if msg["return"] == nil then
          return nil, errors.new("protocol", "reply to " .. name .. " has neither return nor error")
        end
        return msg["return"]
      end
      self:_stray(msg)
    end
  end
end

local function check_command(method, name, args, opts)
  if type(name) ~= "string" or name == "" then
    error(("qmp: %s: command name must be a non-empty string"):format(method), 3)
  end
  if args ~= nil and type(args) ~= "table" then
    error(("qmp: %s: arguments must be a table"):format(method), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("qmp: %s: options must be a table"):format(method), 3)
  end
  opts = opts or {}
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout < 0) then
    error(("qmp: %s: timeout must be a non-negative number"):format(method), 3)
  end
  return opts
end

--- Run a command: its "return" value | nil, err.
-- opts.timeout overrides the connection's timeout; opts.fds passes fds.
function Client:execute(name, args, opts)
  opts = check_command("execute", name, args, opts)
  return self:_call({ execute = name, arguments = args }, opts.timeout or self.default_timeout, opts.fds)
end

--- Run a command out-of-band (needs the oob capability).
function Client:execute_oob(name, args, opts)
  opts = check_command("execute_oob", name, args, opts)
  if not self.oob then
    return nil, errors.new("unsupported", "out-of-band execution was not negotiated with " .. self.name)
  end
  return self:_call({ ["exec-oob"] = name, arguments = args }, opts.timeout or self.default_timeout, opts.fds)
end

--- Run an HMP command line; returns its output text.
function Client:hmp(command_line, opts)
  if type(command_line) ~= "string" then error("qmp: hmp: command line must be a string", 2) end
  return self:execute("human-monitor-command", { ["command-line"] = command_line }, opts)
end

-- Take the first queued event that satisfies match, keeping the others in order.
function Client:_take(match)
  local q = self._queue
  for i = self._qhead, self._qtail do
    local ev = q[i]
    if match(ev) then
      table.move(q, i + 1, self._qtail, i)
      q[self._qtail] = nil
      self._qtail = self._qtail - 1
      return ev
    end
  end
end

--- Wait for an event: the first matching event already received, else the
-- next to arrive.  The event is taken: handlers never see it.
-- vm:wait(filter [, data_filter] [, timeout]) -> ev | nil, err
function Client:wait(names, data, timeout)
  if type(data) == "number" and timeout == nil then data, timeout = nil, data end
  local match = filter.compile(names, data)
  timeout = timeout or self.default_timeout
  local deadline = monotime() + timeout
  local function expired()
    return nil, errors.new("timeout", ("no matching event within %g s"):format(timeout))
  end
  while true do
    local ev = self:_take(match)
    if ev then return ev end
    if self._closed and self._reconnect_timer then  -- reconnecting: let the timer run
      local left = remaining(deadline)
      if left <= 0 then return expired() end
      core.sleep(math.min(left, self:timeout() or left))
      self:_run_timers()
    else
      local msg, err = self:_receive(remaining(deadline))
      if msg == nil then
        if err.kind == "timeout" then return expired() end
        if not self._reconnect_timer then return nil, err end
      elseif msg ~= true then
        self:_stray(msg)
      end
    end
  end
end

--- Read what is available without blocking longer than timeout (default 0)
-- for the first message; events go to the queue.  Returns the number of
-- events queued, or nil, err once the connection is closed and the queue empty.
function Client:poll(timeout)
  local first = true
  while not self._closed do
    local msg = self:_receive(first and (timeout or 0) or 0)
    first = false
    if msg == nil then break end
    if msg ~= true then self:_stray(msg) end
  end
  local queued = self._qtail - self._qhead + 1
  if queued == 0 and self._closed then return nil, self._closed end
  return queued
end

--- Queued events, oldest first, without taking them.
function Client:events_pending()
  local list = {}
  table.move(self._queue, self._qhead, self._qtail, 1, list)
  return list
end

--- true once the connection is closed (locally or by the peer).
function Client:closed()
  return self._closed ~= nil
end

--- Close the connection.  Idempotent; queued events stay readable.
function Client:close()
  self._user_closed = true
  if self._reconnect_timer then
    self._reconnect_timer:cancel()
    self._reconnect_timer = nil
  end
  if not self._closed then
    self._closed = errors.new("closed", "the connection was closed by this client")
  end
  self.conn:close()
end
Client.__close = Client.close

function Client:__tostring()
  return ("qmp.Client (%s%s)"):format(self.name, self._closed and ", closed" or "")
end

--- The connection's fd, for external event loops.
function Client:fileno()
  return self.conn:fileno()
end

require("qmp.handlers")(Client)
require("qmp.reconnect")(Client)
require("qmp.schema")(Client)

return Client
