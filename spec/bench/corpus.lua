--- Deterministic benchmark inputs: a busy host's QMP event stream and a
-- schema-like 10 MiB reply, written byte for byte as QEMU writes them
-- (", " and ": " separators, timestamp first, non-ASCII as \uXXXX, "\r\n").
-- A PRNG of our own (splitmix64) makes the same bytes on every run, whatever
-- math.random's state is.
--   local corpus = require "bench.corpus"
--   local lines = corpus.events(100000)      -- { '{"timestamp": ...}\r\n', ... }
--   local text = corpus.schema_reply(10 << 20)
local concat, format = table.concat, string.format

local M = {}

M.SEED = 0x5EED9

-- {==================== PRNG

local Rng = {}
Rng.__index = Rng

function M.rng(seed)
  return setmetatable({ state = seed or M.SEED }, Rng)
end

-- splitmix64: integer arithmetic wraps modulo 2^64 in Lua 5.4.
function Rng:next()
  local s = self.state + 0x9E3779B97F4A7C15
  self.state = s
  s = (s ~ (s >> 30)) * 0xBF58476D1CE4E5B9
  s = (s ~ (s >> 27)) * 0x94D049BB133111EB
  return s ~ (s >> 31)
end

--- An integer in 1..n.
function Rng:int(n)
  return (self:next() >> 11) % n + 1
end

--- An integer in lo..hi.
function Rng:range(lo, hi)
  return lo + self:int(hi - lo + 1) - 1
end

function Rng:pick(list)
  return list[self:int(#list)]
end

function Rng:chance(percent)
  return self:int(100) <= percent
end

-- }==================== PRNG

-- {==================== JSON as QEMU writes it

-- An object with its members in order: obj("a", 1, "b", "x").
local Object = {}
local function obj(...)
  return setmetatable({ n = select("#", ...), ... }, Object)
end

-- A number written as given: uint64 values beyond Lua's integers.
local Raw = {}
local function raw(text) return setmetatable({ text = text }, Raw) end

local ESCAPE = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

-- QEMU's JSON writer escapes every non-ASCII character as \uXXXX.
local function quote(s)
  s = s:gsub('[%c"\\]', function(c) return ESCAPE[c] or format("\\u%04x", c:byte()) end)
  s = s:gsub("[\xC2-\xDF][\x80-\xBF]", function(u)
    local a, b = u:byte(1, 2)
    return format("\\u%04x", ((a & 0x1F) << 6) | (b & 0x3F))
  end)
  return '"' .. s .. '"'
end

local function write(v, out)
  local t = type(v)
  if t == "string" then out[#out + 1] = quote(v)
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif math.type(v) == "integer" then out[#out + 1] = format("%d", v)
  elseif t == "number" then out[#out + 1] = format("%.17g", v)
  elseif getmetatable(v) == Raw then out[#out + 1] = v.text
  elseif getmetatable(v) == Object then
    out[#out + 1] = "{"
    for i = 1, v.n, 2 do
      if i > 1 then out[#out + 1] = ", " end
      out[#out + 1] = quote(v[i])
      out[#out + 1] = ": "
      write(v[i + 1], out)
    end
    out[#out + 1] = "}"
  else  -- a list
    out[#out + 1] = "["
    for i, x in ipairs(v) do
      if i > 1 then out[#out + 1] = ", " end
      write(x, out)
    end
    out[#out + 1] = "]"
  end
end

local function json(v)
  local out = {}
  write(v, out)
  return concat(out)
end
M.json = json

--- The decimal digits of a Lua integer read as unsigned 64 bits.
local function unsigned(v)
  if v >= 0 then return format("%d", v) end
  local q = (v >> 1) // 5          -- v / 10, unsigned
  return format("%d%d", q, v - q * 10)
end
M.unsigned = unsigned

-- }==================== JSON

-- {==================== events

local DISKS = { "virtio-disk0", "virtio-disk1", "virtio-disk2", "scsi0-0-0-1", "ide0-hd0", "sata0-0-0" }
local NETS = { "net0", "net1", "hostnet2", "vnet7" }
local JOB_TYPES = { "mirror", "stream", "commit", "backup" }
local JOB_STATES = { "created", "running", "paused", "ready", "standby", "waiting", "pending",
                     "aborting", "concluded", "null" }
local ERRNO = { "Input/output error", "No space left on device", "Operation not permitted",
                "Connection timed out" }
-- Operator-made names and certificate fields carry quotes, backslashes, accents.
local DNAMES = { "C=FR,O=Soci\xC3\xA9t\xC3\xA9 G\xC3\xA9n\xC3\xA9rale,CN=vnc-ops",
                 'C=DE,O=Example \\"Ops\\",CN=admin\\\\backup', "CN=ren\xC3\xA9.dupont" }
local IMAGES = { "/var/lib/libvirt/images/caf\xC3\xA9 \"old\".qcow2", "C:\\images\\win2019.qcow2",
                 "/srv/vm/web-01/disk0.qcow2" }

local function node_name(r)
  if r:chance(50) then return format("#block%03d", r:range(100, 999)) end
  return "drive-" .. r:pick(DISKS) .. "-format"
end

local function job_id(r)
  return format("%s-vm%02d-%s", r:pick(JOB_TYPES), r:range(1, 40), r:pick(DISKS))
end

local function host4(r)
  return format("%d.%d.%d.%d", r:pick({ 10, 172, 192 }), r:range(0, 255), r:range(0, 255), r:range(1, 254))
end

local function vnc_server(r)
  return obj("host", "0.0.0.0", "service", tostring(5900 + r:range(0, 40)), "family", "ipv4",
             "websocket", false, "auth", r:pick({ "none", "vnc", "vencrypt" }), "vencrypt", "x509-vnc")
end

local function vnc_client(r, full)
  local host, service, websocket = host4(r), tostring(r:range(32768, 60999)), r:chance(20)
  if not full then return obj("host", host, "service", service, "family", "ipv4", "websocket", websocket) end
  return obj("host", host, "service", service, "family", "ipv4", "websocket", websocket,
             "x509_dname", r:pick(DNAMES), "sasl_username", r:pick({ "ops", "ren\xC3\xA9", "backup\\svc" }))
end

local function spice_server(r, auth)
  local port = tostring(5900 + r:range(0, 40))
  if auth then return obj("auth", "spice", "port", port, "family", "ipv4", "host", "0.0.0.0") end
  return obj("host", "0.0.0.0", "port", port, "family", "ipv4")
end

local function spice_client(r, channel)
  local host, port = host4(r), tostring(r:range(32768, 60999))
  if not channel then return obj("host", host, "port", port, "family", "ipv4") end
  return obj("host", host, "port", port, "family", "ipv4", "connection-id", r:range(1, 2147483647),
             "channel-type", r:range(1, 11), "channel-id", r:range(0, 3), "tls", r:chance(70))
end

-- uint64 crash parameters: a bugcheck code, then kernel addresses above 2^63.
local function kernel_address(r)
  return raw(unsigned((0xFFFFF800 << 32) | (r:next() & 0xFFFFFFFF0)))
end

local function hyperv_args(r)
  return obj("type", "hyper-v", "arg1", r:pick({ 0x7E, 0xD1, 0x50, 0x1E, 0x133 }), "arg2", kernel_address(r),
             "arg3", kernel_address(r), "arg4", kernel_address(r), "arg5", kernel_address(r))
end

-- Each kind: how many per thousand events, and its data (nil: no data member).
local KINDS = {
  { "JOB_STATUS_CHANGE", 190, function(r) return obj("id", job_id(r), "status", r:pick(JOB_STATES)) end },
  { "RTC_CHANGE", 140, function(r)
      return obj("offset", r:range(-7200, 7200), "qom-path", format("/machine/unattached/device[%d]", r:range(1, 30)))
    end },
  { "NIC_RX_FILTER_CHANGED", 60, function(r)
      local n = r:pick(NETS)
      return obj("name", n, "path", "/machine/peripheral/" .. n .. "/virtio-backend")
    end },
  { "BLOCK_IO_ERROR", 70, function(r)
      local disk = r:pick(DISKS)
      local reason = r:pick(ERRNO)
      return obj("qom-path", "/machine/peripheral/" .. disk .. "/virtio-backend", "device", "",
                 "node-name", node_name(r), "operation", r:pick({ "read", "write" }),
                 "action", r:pick({ "report", "ignore", "stop" }),
                 "nospace", reason == "No space left on device", "reason", reason)
    end },
  { "SHUTDOWN", 26, function(r)
      if r:chance(70) then return obj("guest", true, "reason", "guest-shutdown") end
      return obj("guest", false, "reason", r:pick({ "host-qmp-quit", "host-signal", "host-qmp-system-reset" }))
    end },
  { "STOP", 45 },
  { "RESUME", 45 },
  { "VNC_CONNECTED", 35, function(r) return obj("server", vnc_server(r), "client", vnc_client(r, false)) end },
  { "VNC_INITIALIZED", 35, function(r) return obj("server", vnc_server(r), "client", vnc_client(r, true)) end },
  { "VNC_DISCONNECTED", 35, function(r) return obj("server", vnc_server(r), "client", vnc_client(r, true)) end },
  { "SPICE_CONNECTED", 25, function(r) return obj("server", spice_server(r), "client", spice_client(r)) end },
  { "SPICE_INITIALIZED", 30, function(r)
      return obj("server", spice_server(r, true), "client", spice_client(r, true))
    end },
  { "SPICE_DISCONNECTED", 25, function(r) return obj("server", spice_server(r), "client", spice_client(r)) end },
  { "DEVICE_DELETED", 40, function(r)
      local disk = r:pick(DISKS)
      if r:chance(50) then return obj("path", "/machine/peripheral/" .. disk .. "/virtio-backend") end
      return obj("device", disk, "path", "/machine/peripheral/" .. disk)
    end },
  { "BLOCK_JOB_COMPLETED", 30, function(r)
      local len, kind, id = r:range(1, 512) << 30, r:pick(JOB_TYPES), job_id(r)
      if r:chance(75) then return obj("type", kind, "device", id, "len", len, "offset", len, "speed", 0) end
      return obj("type", kind, "device", id, "len", len, "offset", r:range(0, len), "speed", 0,
                 "error", "Could not open '" .. r:pick(IMAGES) .. "': " .. r:pick(ERRNO))
    end },
  { "BLOCK_JOB_READY", 20, function(r)
      local len = r:range(1, 512) << 30
      return obj("type", "mirror", "device", job_id(r), "len", len, "offset", len, "speed", r:range(0, 100) << 20)
    end },
  { "BLOCK_JOB_PENDING", 15, function(r) return obj("type", r:pick(JOB_TYPES), "id", job_id(r)) end },
  { "BLOCK_JOB_CANCELLED", 10, function(r)
      local len = r:range(1, 512) << 30
      return obj("type", r:pick(JOB_TYPES), "device", job_id(r), "len", len, "offset", r:range(0, len), "speed", 0)
    end },
  { "BLOCK_JOB_ERROR", 15, function(r)
      return obj("device", job_id(r), "operation", r:pick({ "read", "write" }), "action", r:pick({ "report", "stop" }))
    end },
  { "GUEST_PANICKED", 8, function(r) return obj("action", "pause", "info", hyperv_args(r)) end },
  { "BLOCK_WRITE_THRESHOLD", 20, function(r)
      return obj("node-name", node_name(r), "amount-exceeded", r:range(1, 1 << 20),
                 "write-threshold", r:range(1, 64) << 30)
    end },
  { "BALLOON_CHANGE", 25, function(r) return obj("actual", r:range(512, 16384) << 20) end },
  { "VSERPORT_CHANGE", 20, function(r)
      return obj("id", r:pick({ "channel0", "org.qemu.guest_agent.0", "com.redhat.spice.0" }), "open", r:chance(50))
    end },
  { "MIGRATION", 10, function(r)
      return obj("status", r:pick({ "setup", "active", "device", "completed", "failed" }))
    end },
  { "DEVICE_TRAY_MOVED", 10, function(r)
      return obj("device", "", "tray-open", r:chance(50), "id", r:pick({ "cd0", "ide0-cd0", "sata0-0-0" }))
    end },
  { "RESET", 6, function(r) return obj("guest", r:chance(80), "reason", r:pick({ "guest-reset", "host-qmp-system-reset" })) end },
  { "POWERDOWN", 4 },
  { "WATCHDOG", 3, function(r) return obj("action", r:pick({ "reset", "pause", "inject-nmi" })) end },
  { "QUORUM_REPORT_BAD", 3, function(r)
      return obj("type", "read", "node-name", node_name(r), "sector-num", r:range(0, 1 << 30),
                 "sectors-count", r:range(1, 256), "error", r:pick(ERRNO))
    end },
}

-- name of the kind for each of the thousand slots
local SLOTS = {}
for _, k in ipairs(KINDS) do
  for _ = 1, k[2] do SLOTS[#SLOTS + 1] = k end
end
assert(#SLOTS == 1000, "event mix weights must add up to 1000")

--- The mix as { name = per-thousand }.
function M.mix()
  local m = {}
  for _, k in ipairs(KINDS) do m[k[1]] = k[2] end
  return m
end

--- n event lines (each ending in "\r\n"); seed: the PRNG seed (default M.SEED).
function M.events(n, seed)
  local r = M.rng(seed)
  local us, lines = 1732700000 * 1000000, {}   -- QEMU's clock: only goes forward
  for i = 1, n do
    us = us + r:range(1, 400000)
    local kind = SLOTS[r:int(1000)]
    local ts = obj("seconds", us // 1000000, "microseconds", us % 1000000)
    local ev = kind[3] and obj("timestamp", ts, "event", kind[1], "data", kind[3](r))
               or obj("timestamp", ts, "event", kind[1])
    lines[i] = json(ev) .. "\r\n"
  end
  return lines
end

--- How many of the lines name one of the events in the set { NAME = true }.
function M.count(lines, names)
  local n = 0
  for _, line in ipairs(lines) do
    if names[line:match('"event": "([^"]+)"')] then n = n + 1 end
  end
  return n
end

-- }==================== events

-- {==================== a query-qmp-schema-like reply

local WORDS = { "node-name", "driver", "size", "filename", "read-only", "cache", "discard", "detect-zeroes",
                "id", "device", "speed", "granularity", "buf-size", "on-error", "backing", "format", "auto-read-only",
                "force-share", "locking", "aio", "x-check-cache-dropped", "throttle-group", "bps", "iops" }
local BUILTINS = { "str", "int", "bool", "number", "null", "any", "size", "uint64", "int64", "QType" }

local function type_ref(r, n)
  if r:chance(40) then return r:pick(BUILTINS) end
  return tostring(r:range(0, n))
end

-- One SchemaInfo entity, shaped like QEMU's (type names masked as numbers).
local function entity(r, i)
  local roll = r:int(100)
  local name = tostring(i)
  if roll <= 40 then
    local members = {}
    for m = 1, r:range(1, 8) do
      members[m] = r:chance(30) and obj("name", r:pick(WORDS), "default", raw("null"), "type", type_ref(r, i))
                   or obj("name", r:pick(WORDS), "type", type_ref(r, i))
    end
    if r:chance(15) then
      local variants = {}
      for v = 1, r:range(2, 6) do variants[v] = obj("case", r:pick(WORDS), "type", type_ref(r, i)) end
      return obj("name", name, "members", members, "tag", "driver", "variants", variants, "meta-type", "object")
    end
    return obj("name", name, "members", members, "meta-type", "object")
  elseif roll <= 60 then
    local values, members = {}, {}
    for v = 1, r:range(2, 12) do
      values[v] = r:pick(WORDS)
      members[v] = obj("name", values[v])
    end
    return obj("name", name, "meta-type", "enum", "members", members, "values", values)
  elseif roll <= 75 then
    local cmd = r:pick(WORDS) .. "-" .. r:pick(WORDS)
    if r:chance(10) then
      return obj("name", cmd, "ret-type", type_ref(r, i), "meta-type", "command", "arg-type", type_ref(r, i),
                 "features", { "deprecated" })
    end
    return obj("name", cmd, "ret-type", type_ref(r, i), "meta-type", "command", "arg-type", type_ref(r, i),
               "allow-oob", r:chance(5))
  elseif roll <= 85 then
    return obj("name", "[" .. type_ref(r, i) .. "]", "element-type", type_ref(r, i), "meta-type", "array")
  elseif roll <= 90 then
    return obj("name", r:pick(KINDS)[1], "meta-type", "event", "arg-type", type_ref(r, i))
  elseif roll <= 95 then
    return obj("name", name, "members", { obj("type", "str"), obj("type", "null") }, "meta-type", "alternate")
  end
  local b = r:pick(BUILTINS)
  return obj("name", b, "json-type", b == "QType" and "string" or "int", "meta-type", "builtin")
end

--- A reply to query-qmp-schema of at most size bytes (a little under),
-- many small objects on one line, as QEMU sends it.
function M.schema_reply(size, seed)
  local r = M.rng(seed or M.SEED + 1)
  local head, tail = '{"return": [', '], "id": "qmp#2"}\r\n'
  local parts, total, i = {}, #head + #tail, 0
  while true do
    local text = json(entity(r, i))
    if total + #text + 2 > size then break end
    i = i + 1
    parts[i] = text
    total = total + #text + 2
  end
  return head .. concat(parts, ", ") .. tail, i
end

-- }==================== schema

return M
