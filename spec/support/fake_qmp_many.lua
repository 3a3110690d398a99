-- A fake QMP server for many connections at once (fake_qmp.start_many):
-- accepts n connections on one socket, one after the other, greeting each
-- and answering its qmp_capabilities; once all n are in, sends connection k
-- (1-based) one RTC_CHANGE event with offset k, then keeps every connection
-- open until its client closes it.
--   lua5.4 fake_qmp_many.lua <socket path> <n> <status file> [watchdog seconds]
-- Exit status: 0 when every client closed, 1 on unexpected input, 2 when the
-- watchdog fired.
local socket = require "socket"
local unix = require "socket.unix"

local spec_dir = arg[0]:match("^(.*)/support/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local fake = require "support.fake_qmp"

local path, n, status_file = arg[1], tonumber(arg[2]), arg[3]
local WATCHDOG = tonumber(arg[4]) or 60
local started = socket.gettime()
local deadline = started + WATCHDOG

local master
local conns = {}   -- connection number -> socket, until the client closes

local function log(fmt, ...)
  io.stdout:write(string.format("[fake_qmp_many +%.3fs] " .. fmt .. "\n", socket.gettime() - started, ...))
  io.stdout:flush()
end

local function finish(status)
  for _, c in pairs(conns) do c:close() end
  if master then master:close() end
  os.remove(path)
  local f = io.open(status_file, "w")
  if f then f:write(status, "\n") f:close() end
  log("exit %d", status)
  os.exit(status)
end

local function remaining()
  local left = deadline - socket.gettime()
  if left <= 0 then log("watchdog: gave up after %g s", WATCHDOG) finish(2) end
  return left
end

local function send(c, data)
  c:settimeout(remaining())
  local ok, err = c:send(data)
  if not ok then log("send failed: %s", err) end
end

master = assert(unix.stream())
assert(master:bind(path))
assert(master:listen(math.min(n, 128)))
log("listening on %s for %d connections", path, n)

for k = 1, n do
  master:settimeout(remaining())
  local c, err = master:accept()
  if not c then log("accept %d failed: %s", k, err) finish(2) end
  conns[k] = c
  send(c, fake.greeting)
  c:settimeout(remaining())
  local line, rerr = c:receive("*l")
  if not line or not line:match('"qmp_capabilities"') then
    log("connection %d: expected qmp_capabilities, got %s", k, tostring(line or rerr))
    finish(1)
  end
  local id = line:match('"id"%s*:%s*("[^"]*")')
  send(c, '{"return": {}' .. (id and (', "id": ' .. id) or "") .. '}\r\n')
end
log("all %d connected", n)

for k = 1, n do
  send(conns[k], fake.event("RTC_CHANGE", '{"offset": ' .. k .. ', "qom-path": "/machine/unattached/device[' .. k .. ']"}'))
end
log("sent %d events", n)

-- Hold every connection until its client closes it.
local open = n
while open > 0 do
  local list, index = {}, {}
  for k, c in pairs(conns) do list[#list + 1] = c; index[c] = k end
  local readable = socket.select(list, nil, math.min(remaining(), 1))
  for _, c in ipairs(readable) do
    c:settimeout(0)
    local data, err, partial = c:receive(4096)
    if err == "closed" then
      conns[index[c]] = nil
      c:close()
      open = open - 1
    elseif (data or partial or "") ~= "" then
      log("connection %d: discarded input", index[c])
    end
  end
end
log("every client closed")
finish(0)
