--- Monitor addresses: "/path.sock", "unix:/path", "tcp:host:port",
-- "host:port", "[::1]:port", "tcp:[::1]:port" or { fd = n }.
local core = require "qmp.core"

local address = {}

local function tcp(host, port, text)
  port = math.tointeger(tonumber(port))
  if not port or port < 1 or port > 65535 or host == "" then
    error(("qmp: bad TCP address %q (want host:port)"):format(text), 3)
  end
  return { kind = "tcp", host = host, port = port }
end

--- Parse an address into { kind = "unix", path } | { kind = "tcp", host, port }
-- | { kind = "fd", fd }.  A malformed address is a programmer error: raises.
function address.parse(a)
  if type(a) == "table" then
    local fd = math.tointeger(a.fd)
    if not fd or fd < 0 then error("qmp: address table needs fd = <file descriptor>", 3) end
    return { kind = "fd", fd = fd }
  end
  if type(a) ~= "string" or a == "" then
    error("qmp: address must be a socket path, \"tcp:host:port\" or { fd = n }", 3)
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
  return (a.host:find(":", 1, true) and "[%s]:%d" or "%s:%d"):format(a.host, a.port)
end

--- Open a core connection: conn | nil, err.
function address.open(a, timeout, opts)
  local max = opts.max_message
  if a.kind == "unix" then return core.connect_unix(a.path, timeout, max) end
  if a.kind == "tcp" then
    return core.connect_tcp(a.host, a.port, timeout, max, opts.allow_remote)
  end
  return core.fdopen(a.fd, max)
end

return address
