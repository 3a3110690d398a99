-- A QMP peer that sends numbered events at a fixed rate, for the long
-- flood and storm specs (spec/long/).  It accepts one client, greets it
-- (QEMU 7.2's greeting), answers qmp_capabilities, then writes events so
-- that after t seconds rate * t of them have been sent: a rate-limited
-- writer, in batches every millisecond or so, never faster than the
-- schedule and never skipping a number.  Each event carries its number in
-- data.seq (1, 2, ...), laid out as QEMU lays out a BLOCK_IO_ERROR.
--   lua5.4 paced_peer.lua <socket> <rate/s> <seconds> <report file> [stop file] [watchdog s] [name]
-- It stops after `seconds`, or as soon as the stop file exists, closes the
-- connection and writes the report, a Lua chunk:
--   return { sent = N, elapsed = s, lag = s, blocked = s }
-- lag: the most the writer ever was behind its schedule (a client that
-- stops reading makes it grow); blocked: seconds spent inside send().
-- Exit status 0; 1 on unexpected input; 2 when the watchdog fired.
local socket = require "socket"

local spec_dir = arg[0]:match("^(.*)/long/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local peer_socket = require "support.peer_socket"

local path, rate, seconds, report = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4]
local stop_file = arg[5] ~= "" and arg[5] or nil
local watchdog = tonumber(arg[6]) or 600
local name = arg[7] or "BLOCK_IO_ERROR"
assert(path and rate and rate > 0 and seconds and report, "usage: paced_peer.lua socket rate seconds report [stop] [watchdog] [name]")

local peer = peer_socket.listen("paced_peer", path, 4, watchdog)
local c = peer:accept()
peer:close()   -- one client only
assert(peer:negotiate(c))

local head = '{"timestamp": {"seconds": %d, "microseconds": %d}, "event": "' .. name .. '", "data": '
  .. '{"device": "", "node-name": "disk0", "reason": "Input/output error", "operation": "write", '
  .. '"action": "report", "nospace": false, "qom-path": "/machine/peripheral/virtio0/virtio-backend", '
  .. '"seq": %d}}\r\n'
local MAX_BATCH = 5000   -- events per send(): a client that lags behind is caught up in slices
local format, floor, concat = string.format, math.floor, table.concat

local function stop_requested()
  if not stop_file then return false end
  local f = io.open(stop_file, "r")
  if f then f:close() return true end
  return false
end

local t0 = socket.gettime()
local sent, lag, blocked, ticks = 0, 0, 0, 0
local ok_all = true
while true do
  local now = socket.gettime()
  local elapsed = now - t0
  if elapsed >= seconds then break end
  ticks = ticks + 1
  if ticks % 16 == 0 and stop_requested() then break end
  local due = floor(elapsed * rate)
  if due > sent then
    local behind = (due - sent) / rate
    if behind > lag then lag = behind end
    local n = math.min(due - sent, MAX_BATCH)
    local parts = {}
    local sec = floor(now)
    local usec = floor((now - sec) * 1e6)
    for i = 1, n do parts[i] = format(head, sec, usec, sent + i) end
    c:settimeout(peer:left())
    local ok, err = c:send(concat(parts))
    blocked = blocked + (socket.gettime() - now)
    if not ok then
      io.stderr:write("paced_peer: send stopped after ", sent, ": ", tostring(err), "\n")
      ok_all = false
      break
    end
    sent = sent + n
  else
    socket.sleep(math.max(0.0005, (sent + 1) / rate - elapsed))   -- pacing, until the next one is due
  end
end
-- The rest of the schedule, when the time is up (rate * seconds in all).
local total = floor(seconds * rate)
if ok_all and not stop_requested() and sent < total then
  local parts = {}
  local now = socket.gettime()
  local sec = floor(now)
  for i = sent + 1, total do parts[#parts + 1] = format(head, sec, floor((now - sec) * 1e6), i) end
  c:settimeout(peer:left())
  if c:send(concat(parts)) then sent = total end
end
local elapsed = socket.gettime() - t0
c:close()
local f = assert(io.open(report, "w"))
f:write(format("return { sent = %d, elapsed = %.6f, lag = %.6f, blocked = %.6f }\n", sent, elapsed, lag, blocked))
f:close()
