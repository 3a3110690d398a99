-- A QMP peer for the churn specs (spec/long/churn_long.lua): serves n
-- connections on one socket, one after the other, and ends each abruptly,
-- the way a QEMU that is killed ends it (the kernel closes its sockets).
--   lua5.4 churn_peer.lua <socket> <n> fresh|resync|hold <report file> [watchdog s]
-- fresh: connection i, by i % 5:
--   0 eof      greeting, qmp_capabilities answered, then closed
--   1 events   the same, then 3 events (STOP, RESUME, RESET), then closed
--   2 reset    the same, then the first byte of the client's next command is
--              read and the socket closed with the rest unread: the client
--              gets ECONNRESET, as from a process killed with input pending
--   3 torn     the same, then half an event, then closed
--   4 silent   closed at once, before the greeting
-- resync: for a client that reconnects (opts.reconnect): every connection
--   after the first also answers the client's query-status; then, by i % 3,
--   eof, events or torn as above.
-- hold: one connection, greeted and negotiated, then held until the peer is
--   killed (the spec sends SIGKILL).
-- The report, written once all n are served: return { served = n, ... }.
-- Exit status 0; 1 on unexpected input; 2 when the watchdog fired.
local spec_dir = arg[0]:match("^(.*)/long/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local fake = require "support.fake_qmp"
local peer_socket = require "support.peer_socket"

local path, n, mode, report = arg[1], tonumber(arg[2]), arg[3], arg[4]
local watchdog = tonumber(arg[5]) or 600
assert(path and n and (mode == "fresh" or mode == "resync" or mode == "hold") and report,
       "usage: churn_peer.lua socket n fresh|resync|hold report [watchdog]")

local EVENTS = fake.event("STOP") .. fake.event("RESUME") .. fake.event("RESET", '{"guest": false, "reason": "host-qmp-system-reset"}')
local TORN = '{"event": "STOP", "timest'

local peer = peer_socket.listen("churn_peer", path, 16, watchdog)
local served, kinds = 0, {}
for i = 1, n do
  local c = peer:accept()
  local kind
  if mode == "fresh" then
    kind = ({ [0] = "eof", "events", "reset", "torn", "silent" })[i % 5]
  elseif mode == "resync" then
    kind = ({ [0] = "eof", "events", "torn" })[i % 3]
  else
    kind = "hold"
  end
  if kind ~= "silent" then
    peer:negotiate(c)
    if mode == "resync" and i > 1 then peer:answer(c, "query-status", '{"status": "running", "running": true}') end
  end
  if kind == "events" then c:send(EVENTS)
  elseif kind == "torn" then c:send(TORN)
  elseif kind == "reset" then c:receive(1)        -- the rest of the command stays unread
  elseif kind == "hold" then c:receive("*a")      -- until killed
  end
  c:close()
  served = served + 1
  kinds[kind] = (kinds[kind] or 0) + 1
end
peer:close()
local parts = {}
for k, v in pairs(kinds) do parts[#parts + 1] = ("%s = %d"):format(k, v) end
local f = assert(io.open(report, "w"))
f:write(("return { served = %d, %s }\n"):format(served, table.concat(parts, ", ")))
f:close()
