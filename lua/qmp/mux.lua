--- qmp.mux: one monitor connection shared by any number of QMP clients.
--   local m = assert(qmp.mux(vm, { listen = "/run/vm1.mux", mode = "0660" }))
-- A QEMU monitor serves one client at a time.  The mux holds the one
-- connection (vm, any client) and serves a unix socket where each client
-- sees a QEMU monitor: the greeting QEMU sent, a negotiation of its own with
-- QEMU's answers, its commands forwarded with ids the mux owns and the
-- replies routed back with its own id, every event from the moment it
-- negotiated, and fds it passes (SCM_RIGHTS) forwarded with its getfd or
-- add-fd.  The mux is served by vm's own loop (vm:attach): vm:run, qmp.loop,
-- a waiter or a command's wait.  A client that stops reading gets a bounded
-- queue; past it, it is cut and the cut reported (vm.on_error, kind
-- "overflow").  When the upstream connection is lost, every client is
-- disconnected, as a QEMU restart would do; the socket stays and serves
-- again once vm is connected again (its reconnect option); when vm closes
-- for good, the mux closes.
local core = require "qmp.core"
local errors = require "qmp.errors"

local type, pairs, ipairs, next, pcall = type, pairs, ipairs, next, pcall
local encode, concat = core.encode, table.concat

local Mux = { __name = "qmp.Mux" }
Mux.__index = Mux

local OPTIONS = { listen = true, mode = true, max_buffer = true, log = true }
local DEFAULT_MODE = tonumber("600", 8)
local ALLOWED_MODE = tonumber("660", 8)   -- owner and group; never others
local DEFAULT_MAX_BUFFER = 8 * 1024 * 1024   -- bytes queued for one client before it is cut
local READS = 64          -- requests taken from one client per step
local ACCEPTS = 16        -- connections accepted per step
local CHUNK = 256 * 1024  -- bytes joined for one write
local EOL = "\r\n"        -- as QEMU ends its lines
local PAUSE = 0.5         -- seconds without accepting after accept failed

-- QEMU's own answers (monitor/qmp.c, qapi/qmp-dispatch.c, 7.2).
local NOT_NEGOTIATED = "Expecting capabilities negotiation with 'qmp_capabilities'"
local NEGOTIATED = "Capabilities negotiation is already complete, command ignored"

local function check_mode(mode)
  if mode == nil then return DEFAULT_MODE end
  local m = mode
  if type(m) == "string" and m:match("^0?[0-7][0-7][0-7]$") then m = tonumber(m, 8) end
  if math.type(m) ~= "integer" or m < 0 or m & ~ALLOWED_MODE ~= 0 or m & DEFAULT_MODE ~= DEFAULT_MODE then
    errors.raise(("qmp.mux: mode must give the owner read and write and nobody but the group more " ..
                  "(\"0600\" or \"0660\"), not %s"):format(tostring(mode)))
  end
  return m
end

local function is_object(v)
  return type(v) == "table" and getmetatable(v) ~= core.array_mt and rawget(v, 1) == nil
end

local function is_array(v)
  return type(v) == "table" and (getmetatable(v) == core.array_mt or rawget(v, 1) ~= nil)
end

--- qmp.mux(vm, opts) -> m | nil, err.  opts.listen: the socket's path;
-- opts.mode: "0600" (default) or "0660"; opts.max_buffer: bytes queued for
-- a client before it is cut (default 8 MiB); opts.log(line): told of
-- clients coming, going and cut.
local function new(vm, opts)
  if type(vm) ~= "table" or type(vm.attach) ~= "function" or type(vm.send) ~= "function" then
    errors.raise("qmp.mux: expected a qmp client")
  end
  opts = errors.check_options("qmp.mux", opts, OPTIONS)
  if type(opts.listen) ~= "string" or opts.listen == "" then
    errors.raise("qmp.mux: listen must be the path of the unix socket to serve")
  end
  local mode = check_mode(opts.mode)
  local max_buffer = opts.max_buffer or DEFAULT_MAX_BUFFER
  if math.type(max_buffer) ~= "integer" or max_buffer < 1 then
    errors.raise("qmp.mux: max_buffer must be a positive integer (bytes)")
  end
  if opts.log ~= nil and type(opts.log) ~= "function" then errors.raise("qmp.mux: log must be a function") end
  local ok, poller = pcall(core.poller, "epoll")
  if not ok then return nil, errors.new("unsupported", "qmp.mux needs epoll (Linux): " .. tostring(poller)) end
  local listener, err = core.listen_unix(opts.listen, mode)
  if not listener then
    poller:close()
    return nil, err
  end
  local m = setmetatable({
    path = opts.listen,
    vm = vm,
    _listener = listener,
    _poller = poller,             -- the listener and every client's socket
    _ready = {},                  -- what a poller wait fills
    _clients = {},                -- fd -> client record
    _count = 0, _serial = 0,
    _events = vm:listen("*"),     -- every event, in order with the replies
    _max_buffer = max_buffer,
    _log = opts.log,
    _generation = nil,            -- the upstream connection the clients were greeted for
    _greeting = nil,              -- its greeting, encoded
    _accepting = false,
    _paused_until = nil,          -- accept failed: not before then
    _again = {},                  -- fd -> true: a client with requests left over
    _dirty = {},                  -- client -> true: text queued since the last flush
    _closed = false,
  }, Mux)
  local attached, why = vm:attach(m)
  if not attached then
    m:close()
    return nil, why
  end
  m:step()
  return m
end

function Mux:_say(fmt, ...)
  if self._log then pcall(self._log, fmt:format(...)) end
end

-- {==================== clients

local function describe(c)
  if c.pid then return ("client %d (pid %d, uid %d)"):format(c.serial, c.pid, c.uid) end
  return ("client %d"):format(c.serial)
end

-- Bytes queued for c beyond the chunk being written: what max_buffer bounds
-- (one message bigger than the bound still goes to a client that reads).
local function unsent(c)
  return c.queued - (c.chunk and #c.chunk - c.off or 0)
end

-- Queue text for c; it is written at the end of the step (one write for
-- many messages), or when the socket takes more.
function Mux:_send(c, text)
  if c.closed then return end
  local out = c.out
  out[#out + 1] = text
  c.queued = c.queued + #text
  if unsent(c) > self._max_buffer then self:_flush(c) end   -- a client that reads takes it now
  if not c.closed and unsent(c) > self._max_buffer then
    self.vm:report(errors.new("overflow", ("qmp.mux: %s cut: it left %d bytes unread (max_buffer %d)")
                                          :format(describe(c), c.queued, self._max_buffer)))
    self:_say("%s cut: it does not read (%d bytes queued)", describe(c), c.queued)
    return self:_drop(c)
  end
  self._dirty[c] = true
end

-- Write as much as the socket takes; register for "w" while any is left.
function Mux:_flush(c)
  while not c.closed do
    if not c.chunk then   -- join what is queued, up to CHUNK bytes
      local out = c.out
      local n = #out
      if n == 0 then break end
      local k, size = 0, 0
      local most = math.min(CHUNK, self._max_buffer)
      repeat k = k + 1; size = size + #out[k] until k == n or size >= most
      c.chunk, c.off = k == 1 and out[1] or concat(out, "", 1, k), 0
      table.move(out, k + 1, n, 1)
      for i = n - k + 1, n do out[i] = nil end
    end
    local off, err = c.conn:write(c.chunk, c.off)
    if not off then return self:_drop(c, err) end
    c.queued = c.queued - (off - c.off)
    c.off = off
    if off < #c.chunk then break end   -- the socket is full: "w" says when it takes more
    c.chunk = nil
  end
  if c.closed then return end
  local want = c.chunk and "rw" or "r"
  if want ~= c.interest then
    self._poller:set(c.fd, want)
    c.interest = want
  end
end

function Mux:_reply(c, id, member, value)
  local msg = { [member] = value, id = id }
  self:_send(c, encode(msg) .. EOL)
end

function Mux:_error(c, id, class, desc)
  self:_reply(c, id, "error", { class = class, desc = desc })
end

-- Disconnect c; its commands in flight are answered to nobody.
function Mux:_drop(c, err)
  if c.closed then return end
  c.closed = true
  self._clients[c.fd], self._again[c.fd], self._dirty[c] = nil, nil, nil
  self._count = self._count - 1
  self._poller:unset(c.fd)
  c.conn:close()
  if err and err.kind == "closed" then self:_say("%s left", describe(c))
  elseif err then self:_say("%s dropped: %s", describe(c), tostring(err)) end
end

function Mux:_accept()
  for _ = 1, ACCEPTS do
    local conn, err = self._listener:accept()
    if not conn then
      if conn == nil then   -- no fd left (EMFILE): the listener stays readable, so pause it
        self:_say("accept failed: %s; accepting again in %g s", tostring(err), PAUSE)
        self._paused_until = core.monotime() + PAUSE
      end
      return
    end
    self._serial = self._serial + 1
    local cred = conn:peercred()
    local c = {
      serial = self._serial, conn = conn, fd = conn:fileno(),
      pid = cred and cred.pid, uid = cred and cred.uid,
      negotiated = false, oob = false, inflight = 0,
      out = {}, queued = 0, chunk = nil, off = 0, interest = nil, closed = false,
    }
    self._clients[c.fd] = c
    self._count = self._count + 1
    self:_say("%s connected", describe(c))
    self:_send(c, self._greeting)
  end
end

-- }==================== clients

-- {==================== requests

-- QEMU's checks of a request's members (qmp_dispatch_check_obj): the
-- command's name and whether it goes out-of-band, or nil, the error's desc.
-- The members are looked at in a fixed order, so that a request with two
-- faults gets the same answer every time.
local KNOWN = { ["exec-oob"] = true, execute = true, arguments = true, id = true }

local function check_request(msg, oob_allowed)
  local exec
  for _, k in ipairs({ "exec-oob", "execute" }) do
    local v = msg[k]
    if v ~= nil and (k == "execute" or oob_allowed) then
      if type(v) ~= "string" then return nil, nil, ("QMP input member '%s' must be a string"):format(k) end
      if exec then return nil, nil, ("QMP input member '%s' clashes with '%s'"):format(k, exec) end
      exec = k
    end
  end
  if msg.arguments ~= nil and not is_object(msg.arguments) then
    return nil, nil, "QMP input member 'arguments' must be an object"
  end
  local unexpected
  for k in pairs(msg) do
    if not KNOWN[k] or (k == "exec-oob" and not oob_allowed) then
      local name = tostring(k)
      if not unexpected or name < unexpected then unexpected = name end
    end
  end
  if unexpected then return nil, nil, ("QMP input member '%s' is unexpected"):format(unexpected) end
  if not exec then return nil, nil, "QMP input lacks member 'execute'" end
  return msg[exec], exec == "exec-oob"
end

-- qmp_capabilities before negotiation: QEMU's checks of its arguments.
function Mux:_negotiate(c, args, id)
  local oob = false
  for k, v in pairs(args or {}) do
    if k ~= "enable" then return self:_error(c, id, "GenericError", ("Parameter '%s' is unexpected"):format(k)) end
    if not is_array(v) then
      return self:_error(c, id, "GenericError", "Invalid parameter type for 'enable', expected: array")
    end
    for i, cap in ipairs(v) do
      if type(cap) ~= "string" then
        return self:_error(c, id, "GenericError",
                           ("Invalid parameter type for 'enable[%d]', expected: string"):format(i - 1))
      end
      if cap ~= "oob" then
        return self:_error(c, id, "GenericError", ("Parameter 'null' does not accept value '%s'"):format(cap))
      end
      oob = true
    end
  end
  if oob and not self.vm.oob then return self:_error(c, id, "GenericError", "Capability oob not available") end
  self:_pump_events()   -- what came before is not for it
  c.negotiated, c.oob = true, oob
  self:_reply(c, id, "return", {})
end

function Mux:_forward(c, name, args, id, oob)
  local held, fds = nil, nil
  if name == "getfd" or name == "add-fd" then   -- the commands QEMU takes passed fds with
    held = c.conn:take_fds()
    if held[1] then
      fds = {}
      for i, fd in ipairs(held) do fds[i] = fd:fileno() end
    end
  end
  c.inflight = c.inflight + 1
  local function answered(value, err)
    if held then for _, fd in ipairs(held) do fd:close() end end
    c.inflight = c.inflight - 1
    if c.closed then return end   -- it left: nobody to answer
    self:_pump_events()           -- events QEMU sent before this reply go first
    if err == nil then return self:_reply(c, id, "return", value) end
    if err.kind == "qmp" then return self:_error(c, id, err.class, err.desc) end
    -- The upstream connection ended: every client is disconnected (step).
    -- Anything else (a malformed reply) must still be answered.
    if err.kind ~= "closed" then return self:_error(c, id, "GenericError", err.message) end
  end
  local ok, sent, err = pcall(self.vm.send, self.vm, name, args, { fds = fds, oob = oob }, answered)
  if not ok then   -- what QEMU would refuse too (a NUL in a string)
    answered(nil, { kind = "qmp", class = "GenericError", desc = tostring(sent):gsub("^qmp: send: ", "") })
  elseif not sent then
    answered(nil, { kind = "qmp", class = "GenericError", desc = err.message })
  end
end

function Mux:_request(c, msg)
  if not is_object(msg) then return self:_error(c, nil, "GenericError", "QMP input must be a JSON object") end
  local id = msg.id
  if math.type(id) == "float" and (id ~= id or id == math.huge or id == -math.huge) then   -- 1e400
    return self:_error(c, nil, "GenericError", "QMP input member 'id' is a number JSON cannot carry back")
  end
  local name, oob, bad = check_request(msg, c.oob)
  if not name then return self:_error(c, id, "GenericError", bad) end
  if not c.negotiated then
    if name ~= "qmp_capabilities" then return self:_error(c, id, "CommandNotFound", NOT_NEGOTIATED) end
    return self:_negotiate(c, msg.arguments, id)
  end
  if name == "qmp_capabilities" then return self:_error(c, id, "CommandNotFound", NEGOTIATED) end
  self:_forward(c, name, msg.arguments, id, oob)
end

-- Take what c sent: up to READS requests.
function Mux:_read(c)
  local list, _, err = c.conn:drain(READS)
  for i = 1, #list do
    if c.closed then return end
    self:_request(c, list[i])
  end
  self._again[c.fd] = (not err and #list == READS) or nil
  if err and not c.closed then
    if err.kind ~= "closed" then   -- QEMU answers and reads on; the framer here cannot
      local not_object = tostring(err.message):find("^expected a JSON object")
      self:_error(c, nil, "GenericError", not_object and "QMP input must be a JSON object"
                                          or "JSON parse error, " .. tostring(err.message))
      self:_flush(c)   -- the answer first, as far as the socket takes it
    end
    self:_drop(c, err)
  end
end

-- }==================== requests

-- Every event read since the last look, to every negotiated client.
function Mux:_pump_events()
  local events = self._events
  local ev = events:next()
  while ev do
    local name = ev.event
    if type(name) == "string" and name:sub(1, 4) ~= "qmp." then
      local text
      for _, c in pairs(self._clients) do
        if c.negotiated then
          text = text or encode(ev) .. EOL
          self:_send(c, text)
        end
      end
    end
    ev = events:next()
  end
end

-- The upstream connection: greet for the one now up, cut everybody when
-- it is lost, close when vm has closed for good.
function Mux:_follow_upstream()
  local vm = self.vm
  if vm:closed() then
    self:_say("the monitor connection closed: %s", tostring(vm:last_error()))
    return self:close()
  end
  local up = vm.state == "ready"
  local generation = up and vm.generation or nil
  if generation ~= self._generation then
    if self._count > 0 then
      self:_say("the monitor connection %s: disconnecting %d client%s", up and "changed" or "was lost",
                self._count, self._count == 1 and "" or "s")
    end
    for _, c in pairs(self._clients) do self:_drop(c) end
    self._generation = generation
    self._greeting = up and encode(vm.greeting) .. EOL or nil
  end
  local paused = self._paused_until
  if paused and core.monotime() >= paused then paused, self._paused_until = nil, nil end
  local accepting = up and not paused   -- else newcomers wait in the backlog
  if accepting ~= self._accepting then
    local fd = self._listener:fileno()
    if accepting then self._poller:set(fd, "r") else self._poller:unset(fd) end
    self._accepting = accepting
  end
end

--- Do what can be done now (the client's loop calls it): follow the
-- upstream connection, hand on events, accept, read and write.
function Mux:step()
  if self._closed then return end
  self:_follow_upstream()
  if self._closed then return end
  self:_pump_events()
  local ready = self._ready
  local n = self._poller:wait(0, ready) or 0
  local listen_fd = self._listener:fileno()
  for i = 1, n do
    local fd = ready[i]
    if fd == listen_fd then
      if self._accepting then
        self:_accept()
        if self._paused_until then self:_follow_upstream() end   -- stop watching it now
      end
    else
      local c = self._clients[fd]
      if c then
        if c.chunk then self._dirty[c] = true end   -- the socket takes more
        self:_read(c)
      end
    end
  end
  for fd in pairs(self._again) do
    local c = self._clients[fd]
    if c then self:_read(c) else self._again[fd] = nil end
  end
  for c in pairs(self._dirty) do
    self._dirty[c] = nil
    self:_flush(c)
  end
end

--- For the client's loop (vm:attach): the fd to wait on.
function Mux:pollfd()
  if self._closed then return -1 end
  return self._poller:fileno()
end

function Mux:events()
  return "r"
end

--- 0 while a client has requests left over from the last step.
function Mux:timeout()
  if next(self._again) ~= nil then return 0 end
  if self._paused_until then return math.max(0, self._paused_until - core.monotime()) end
end

--- The clients connected now: a list of { serial, pid, uid, negotiated,
-- oob, queued (bytes not yet written), inflight (commands) }.
function Mux:clients()
  local list = {}
  for _, c in pairs(self._clients) do
    list[#list + 1] = { serial = c.serial, pid = c.pid, uid = c.uid, negotiated = c.negotiated, oob = c.oob,
                        queued = c.queued, inflight = c.inflight }
  end
  table.sort(list, function(a, b) return a.serial < b.serial end)
  return list
end

--- true once closed.
function Mux:closed()
  return self._closed
end

--- Disconnect every client, remove the socket, stop being served; idempotent.
function Mux:close()
  if self._closed then return end
  self._closed = true
  for _, c in pairs(self._clients) do self:_drop(c) end
  self._listener:close()
  self._poller:close()
  self._events:close()
  self.vm:detach(self)
end
Mux.__close = Mux.close

function Mux:__tostring()
  return ("qmp.Mux (%s, %d client%s%s)"):format(self.path, self._count, self._count == 1 and "" or "s",
                                                self._closed and ", closed" or "")
end

return new
