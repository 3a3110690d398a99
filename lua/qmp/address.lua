--- Monitor addresses: "/path.sock", "unix:/path", "tcp:host:port",
-- "host:port", "[::1]:port", "tcp:[::1]:port" or { fd = n }.
local core = require "qmp.core"
local raise = require("qmp.errors").raise
local errors = require "qmp.errors"

local address = {}

local function tcp(host, port, text)
  port = math.tointeger(tonumber(port))
  if not port or port < 1 or port > 65535 or host == "" then
    raise(("qmp: bad TCP address %q (want host:port)"):format(text))
  end
  return { kind = "tcp", host = host, port = port }
end

--- Parse an address into { kind = "unix", path } | { kind = "tcp", host, port }
-- | { kind = "fd", fd } | { kind = "conn", conn }.  A malformed address is a
-- programmer error: raises.
function address.parse(a)
  if type(a) == "table" and a.conn ~= nil then
    local c = a.conn
    for _, m in ipairs({ "drain", "write", "buffered", "fileno", "finish_connect", "peercred", "close" }) do
      if type(c[m]) ~= "function" then
        raise("qmp: address { conn = } needs a connection object with :" .. m .. "()")
      end
    end
    return { kind = "conn", conn = c, label = a.name }
  end
  if type(a) == "table" then
    local fd = math.tointeger(a.fd)
    if not fd or fd < 0 then raise("qmp: address table needs fd = <file descriptor>") end
    return { kind = "fd", fd = fd }
  end
  if type(a) ~= "string" or a == "" then
    raise("qmp: address must be a socket path, \"tcp:host:port\" or { fd = n }")
  end
  local rest = a:match("^unix:(.*)$")
  if rest then return { kind = "unix", path = rest } end
  local explicit = a:match("^tcp:(.*)$")
  local t = explicit or a
  local host, port = t:match("^%[([^%]]+)%]:(%d+)$")  -- [v6]:port
  if host then return tcp(host, port, a) end
  host, port = t:match("^([^/:]*):([^:/]*)$")           -- host:port
  if host and (explicit or port:match("^%d+$")) then return tcp(host, port, a) end
  if explicit then return tcp("", nil, a) end
  return { kind = "unix", path = a }
end

--- A readable label for an address.
function address.label(a)
  if a.kind == "unix" then return a.path end
  if a.kind == "fd" then return "fd " .. a.fd end
  if a.kind == "conn" then return a.label or tostring(a.conn) end
  return (a.host:find(":", 1, true) and "[%s]:%d" or "%s:%d"):format(a.host, a.port)
end

--- What a session connects to: the address with TCP names resolved.
-- Resolution happens once, here (getaddrinfo cannot be bounded by a
-- deadline), so reconnect attempts never block on it.  An inherited fd, or
-- a connection object (the conn interface without a socket: drain, write,
-- buffered, fileno, finish_connect, peercred, close, and optionally
-- due_in(); qmp.replay has one), can be opened once only.  target | nil, err
function address.target(a, opts)
  if a.kind == "unix" then
    if #a.path == 0 or #a.path > 107 then
      raise(("qmp: unix socket path %s (%d bytes; the limit is 107)")
            :format(#a.path == 0 and "empty" or "too long", #a.path))
    end
    return { kind = "unix", path = a.path }
  end
  if a.kind == "tcp" then
    local hosts, err = core.resolve(a.host, a.port, opts.allow_remote)
    if not hosts then return nil, err end
    return { kind = "tcp", hosts = hosts, port = a.port }
  end
  local conn = a.conn
  if a.kind == "fd" then
    local ok
    ok, conn = pcall(core.fdopen, a.fd, opts.max_message)
    if not ok then raise("qmp: " .. tostring(conn)) end  -- not an fd: a bug in the script
  end
  return { kind = "fd", take = function()
    if not conn then return nil, errors.new("closed", "an inherited fd or connection cannot be opened again") end
    local c = conn
    conn = nil
    return c, true
  end }
end

return address
