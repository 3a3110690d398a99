-- Plain-socket QMP clients for the mux specs: a luasocket unix stream
-- speaking JSON lines through lua-cjson, none of the library's parts, so
-- what they see is what any QMP client (qmp-shell, libvirt) would see.
--   local c = raw.connect(path)
--   local greeting = c:read()
--   c:send('{"execute": "qmp_capabilities", "id": 1}')
--   local reply = c:reply()    -- events read meanwhile go to c.events
-- And a client on qmp.core's connection, for the one thing luasocket
-- cannot do: send fds with a command (raw.fd_client).
local cjson = require "cjson"
local socket = require "socket"
local unix = require "socket.unix"

local M = {}

--- JSON null as the decoded messages hold it.
M.null = cjson.null

--- Seconds a read waits unless told otherwise.
M.TIMEOUT = 10

local Raw = {}
Raw.__index = Raw

--- A client connected to the unix socket path; nil, err when refused.
function M.connect(path)
  local sock = assert(unix.stream())
  local ok, err = sock:connect(path)
  if not ok then
    sock:close()
    return nil, err
  end
  return setmetatable({ sock = sock, partial = "", unsent = "", events = {}, lines = {}, eof = false }, Raw)
end

--- Send text (a table: encoded) and a line end; waits until it is written.
function Raw:send(msg)
  local text = type(msg) == "table" and cjson.encode(msg) or msg
  self.sock:settimeout(M.TIMEOUT)
  assert(self.sock:send(text .. "\n"))
end

--- Queue text and write what the socket takes now, never waiting (a
-- client in the same process as the mux that serves it must not block).
function Raw:post(msg)
  self.unsent = self.unsent .. (type(msg) == "table" and cjson.encode(msg) or msg) .. "\n"
  self:push()
end

--- Write more of what post queued; true when nothing is left.
function Raw:push()
  if self.unsent == "" then return true end
  self.sock:settimeout(0)
  local sent, err, last = self.sock:send(self.unsent)
  if not sent and err ~= "timeout" then error("raw client: send: " .. tostring(err)) end
  self.unsent = self.unsent:sub((sent or last) + 1)
  return self.unsent == ""
end

--- The next message, decoded (and its text), waiting up to timeout
-- seconds (default M.TIMEOUT; 0: only what is there now); nil, "timeout"
-- or nil, "closed" (the mux hung up).
function Raw:read(timeout)
  local deadline = socket.gettime() + (timeout or M.TIMEOUT)
  while true do
    self.sock:settimeout(math.max(deadline - socket.gettime(), 0))
    local line, err, partial = self.sock:receive("*l", self.partial)
    if line then
      self.partial = ""
      if line:match("%S") then
        self.lines[#self.lines + 1] = line
        return cjson.decode(line), line
      end
    else
      self.partial = partial or ""
      if err == "closed" then self.eof = true end
      return nil, err
    end
  end
end

--- The next reply (return or error), events read on the way appended to
-- self.events; nil, "timeout" | "closed".
function Raw:reply(timeout)
  local deadline = socket.gettime() + (timeout or M.TIMEOUT)
  while true do
    local msg, err = self:read(math.max(deadline - socket.gettime(), 0))
    if not msg then return nil, err end
    if msg.event then
      self.events[#self.events + 1] = msg
    else
      return msg
    end
  end
end

--- Send one request and return its reply.
function Raw:call(msg, timeout)
  self:send(msg)
  return self:reply(timeout)
end

--- Read the greeting and negotiate (args: qmp_capabilities' arguments);
-- the greeting and qmp_capabilities' reply.
function Raw:negotiate(args)
  local greeting = assert(self:read())
  assert(greeting.QMP, "not a greeting")
  local reply = self:call({ execute = "qmp_capabilities", arguments = args })
  return greeting, reply
end

--- Events read so far that are in names (a set), as "NAME@seconds.micro".
function Raw:event_list(names)
  local list = {}
  for _, ev in ipairs(self.events) do
    if not names or names[ev.event] then list[#list + 1] = M.stamp(ev) end
  end
  return list
end

--- Wait until the mux hangs up (what it sent before is read, events
-- kept); true if it did within timeout seconds.
function Raw:closed_within(timeout)
  local deadline = socket.gettime() + (timeout or M.TIMEOUT)
  while not self.eof do
    local msg, err = self:read(math.max(deadline - socket.gettime(), 0))
    if not msg and err ~= "closed" then return false end
    if msg and msg.event then self.events[#self.events + 1] = msg end
  end
  return true
end

function Raw:close()
  self.sock:close()
end

--- One event as "NAME@seconds.micro": the same event seen by two clients
-- has the same stamp (events here come from one QEMU, each with its own time).
function M.stamp(ev)
  local t = ev.timestamp or {}
  -- lua-cjson decodes every number as a float: compare the integers.
  return ("%s@%d.%06d"):format(ev.event, math.tointeger(t.seconds) or -1, math.tointeger(t.microseconds) or -1)
end

-- {==================== fds

local Fd = {}
Fd.__index = Fd

--- A client on qmp.core's connection (core.open_unix), whose send can pass
-- fds (SCM_RIGHTS).  Its messages are decoded by the library's decoder:
-- it only carries the fds here.
function M.fd_client(path)
  local core = require "qmp.core"
  local conn, connected = core.open_unix(path)
  assert(conn, connected)
  local deadline = socket.gettime() + M.TIMEOUT
  while not connected do
    assert(socket.gettime() < deadline, "connect did not finish")
    core.wait_fd(conn:fileno(), "w", 0.1)
    local err
    connected, err = conn:finish_connect()
    assert(connected ~= nil, tostring(err))
  end
  return setmetatable({ conn = conn, core = core, events = {} }, Fd)
end

--- Send text with fds (a list of fd numbers) riding on its first byte.
function Fd:send(text, fds)
  text = text .. "\n"
  local off = 0
  local deadline = socket.gettime() + M.TIMEOUT
  while off < #text do
    off = assert(self.conn:write(text, off, off == 0 and fds or nil))
    if off < #text then
      assert(socket.gettime() < deadline, "the mux does not read")
      self.core.wait_fd(self.conn:fileno(), "w", 0.1)
    end
  end
end

--- The next message: msg | nil, err (err.kind "timeout" or the conn's).
function Fd:read(timeout)
  local deadline = socket.gettime() + (timeout or M.TIMEOUT)
  while true do
    local msg, err = self.conn:take()
    if msg then return msg end
    if msg == nil then return nil, err end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, { kind = "timeout" } end
    self.core.wait_fd(self.conn:fileno(), "r", left)
  end
end

--- The next reply, events on the way kept in self.events.
function Fd:reply(timeout)
  while true do
    local msg, err = self:read(timeout)
    if not msg then return nil, err end
    if msg.event then self.events[#self.events + 1] = msg else return msg end
  end
end

function Fd:call(text, fds)
  self:send(text, fds)
  return self:reply()
end

function Fd:close()
  self.conn:close()
end

-- }==================== fds

--- The number of the fd through which this process holds path open (as
-- /proc/self/fd tells): Lua's io.open hides it, and a command's fds are numbers.
function M.fd_of(path)
  local stat = assert(io.open("/proc/self/stat"))
  local pid = stat:read("l"):match("^(%d+)")
  stat:close()
  local p = assert(io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null"))
  local found
  for line in p:lines() do
    local n, target = line:match(" (%d+) %-> (.*)$")
    if target == path then
      assert(not found, path .. " is open more than once")
      found = math.tointeger(tonumber(n))
    end
  end
  p:close()
  return assert(found, path .. " is not open")
end

return M
