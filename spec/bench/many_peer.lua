-- A QMP peer for many idle connections (row 7): accepts n clients in turn,
-- greeting each and answering its qmp_capabilities; then accepts one more
-- connection, the control, and waits for a "go" line on it.  Then, for
-- each of `trials`, it sends one RTC_CHANGE to a connection picked by a
-- seeded PRNG, its timestamp being the send time on CLOCK_MONOTONIC
-- (qmp.monotime, the clock the client reads), and pauses `gap` seconds.
-- Then it waits until the control closes.
--   lua5.4 many_peer.lua <socket> <n> <trials> <gap seconds> [watchdog seconds]
local socket = require "socket"
local monotime = require("qmp.core").monotime

local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local peer_socket = require "support.peer_socket"
local corpus = require "bench.corpus"

local path, n, trials, gap = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
local watchdog = tonumber(arg[5]) or 300

local peer = peer_socket.listen("many_peer", path, 128, watchdog)
local conns = {}
for k = 1, n do
  local c = peer:accept()
  assert(peer:negotiate(c))
  conns[k] = c
end
print(("many_peer: %d connected"):format(n))

local control = peer:accept()
assert(control:receive("*l") == "go", "many_peer: expected go")

local rng = corpus.rng(corpus.SEED + 7)
for _ = 1, trials do
  local k = rng:int(n)
  local now = monotime()
  local s = math.floor(now)
  assert(conns[k]:send(('{"timestamp": {"seconds": %d, "microseconds": %d}, "event": "RTC_CHANGE", '
    .. '"data": {"offset": %d, "qom-path": "/machine/unattached/device[%d]"}}\r\n')
    :format(s, math.floor((now - s) * 1e6), k, k)))
  socket.sleep(gap)
end
print(("many_peer: sent %d events"):format(trials))

control:settimeout(peer:left())
control:receive("*l")   -- until the driver closes it
for _, c in ipairs(conns) do c:close() end
peer:close()
