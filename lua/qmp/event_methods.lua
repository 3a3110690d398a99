--- Helpers for particular event types, installed on qmp.events by qmp.events.
-- Each one is nil-safe: a member missing from the event (an older QEMU,
-- a hand-made event) gives nil, never an error.
--   ev:progress()        block jobs: offset / len, a number in [0, 1]
--   ev:failed()          BLOCK_JOB_COMPLETED, DUMP_COMPLETED: did it fail?
--   ev:by_guest()        SHUTDOWN, RESET: the guest asked (true) or the host
--   ev:client_address()  VNC_*, SPICE_*: "host:port" of the client
--   ev:server_address()  VNC_*, SPICE_*: "host:port" the server listens on
--   ev:panic_info()      GUEST_PANICKED, GUEST_CRASHLOADED: the info table
--   ev:hyperv_args()     the same: { arg1, ..., arg5 } of a Hyper-V crash
--   ev:stopped_vm()      BLOCK_IO_ERROR: true when the VM was paused for it
--   ev:peer_address()    NETDEV_STREAM_CONNECTED: the peer as a string
local type, rawget, ipairs, tostring, mathtype = type, rawget, ipairs, tostring, math.type

local function data(ev)
  local d = rawget(ev, "data")
  return type(d) == "table" and d or nil
end

local function member(ev, k)
  local d = data(ev)
  return d and d[k]
end

-- "host:port", "[v6::host]:port", or the host alone when there is no port
-- (a unix socket path); nil without a host.
local function address(info, port_key)
  if type(info) ~= "table" or type(info.host) ~= "string" then return nil end
  local host, port = info.host, info[port_key]
  if port == nil or port == "" or info.family == "unix" then return host end
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  return host .. ":" .. tostring(port)
end

return function(types)
  -- Block jobs ----------------------------------------------------------
  local function progress(ev)
    local offset, len = member(ev, "offset"), member(ev, "len")
    if mathtype(offset) == nil or mathtype(len) == nil or len == 0 then return nil end
    return offset / len
  end
  for _, name in ipairs({ "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_READY",
                          "BLOCK_JOB_ERROR", "BLOCK_JOB_PENDING" }) do
    types[name].progress = progress
  end

  --- true when the job ended with an error, false when it succeeded.
  function types.BLOCK_JOB_COMPLETED:failed()
    return member(self, "error") ~= nil
  end

  --- true when the dump failed, false when it completed.
  function types.DUMP_COMPLETED:failed()
    if member(self, "error") ~= nil then return true end
    local result = member(self, "result")
    return type(result) == "table" and result.status == "failed"
  end

  -- Run state -----------------------------------------------------------
  local function by_guest(ev)
    local g = member(ev, "guest")
    if type(g) == "boolean" then return g end
    return nil   -- QEMU before 2.10 does not say
  end
  types.SHUTDOWN.by_guest = by_guest
  types.RESET.by_guest = by_guest

  local function panic_info(ev)
    local info = member(ev, "info")
    return type(info) == "table" and info or nil
  end
  local function hyperv_args(ev)
    local info = panic_info(ev)
    if not info or info.type ~= "hyper-v" then return nil end
    return { info.arg1, info.arg2, info.arg3, info.arg4, info.arg5 }
  end
  for _, name in ipairs({ "GUEST_PANICKED", "GUEST_CRASHLOADED" }) do
    types[name].panic_info = panic_info
    types[name].hyperv_args = hyperv_args
  end

  --- true when QEMU paused the VM for this error (a STOP follows).
  function types.BLOCK_IO_ERROR:stopped_vm()
    return member(self, "action") == "stop"
  end

  -- Remote displays: VNC says "service", SPICE says "port" --------------
  for _, v in ipairs({ { "VNC_CONNECTED", "service" }, { "VNC_INITIALIZED", "service" },
                       { "VNC_DISCONNECTED", "service" }, { "SPICE_CONNECTED", "port" },
                       { "SPICE_INITIALIZED", "port" }, { "SPICE_DISCONNECTED", "port" } }) do
    local T, port_key = types[v[1]], v[2]
    function T:client_address() return address(member(self, "client"), port_key) end
    function T:server_address() return address(member(self, "server"), port_key) end
  end

  -- Network -------------------------------------------------------------
  --- The peer as one string: "host:port", a socket path, "vsock:cid:port"
  -- or "fd:name"; nil when the event has no address.
  function types.NETDEV_STREAM_CONNECTED:peer_address()
    local a = member(self, "addr")
    if type(a) ~= "table" then return nil end
    -- SocketAddress is flat (members beside type); the legacy form nests them in data.
    local inner = type(a.data) == "table" and a.data or a
    if a.type == "inet" then return address(inner, "port") end
    if a.type == "unix" then return inner.path end
    if a.type == "vsock" and inner.cid then return "vsock:" .. tostring(inner.cid) .. ":" .. tostring(inner.port) end
    if a.type == "fd" and inner.str then return "fd:" .. tostring(inner.str) end
    return nil
  end
end
