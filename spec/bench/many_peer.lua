-- A QMP peer for many idle connections (row 7): accepts n clients in turn,
-- greeting each and answering its qmp_capabilities; then accepts one more
-- connection, the control, and waits for a "go" line on it.  Then, for
-- each of `trials`, it sends one RTC_CHANGE to a connection picked by a
-- seeded PRNG, its timestamp being the send time on CLOCK_MONOTONIC
-- (qmp.monotime, the clock the client reads), and pauses `gap` seconds.
-- Then it waits until the control closes.
--   lua5.4 many_peer.lua <socket> <n> <trials> <gap seconds> [watchdog seconds]
local socket = require "socket"
local unix = require "socket.unix"
local monotime = require("qmp.core").monotime

local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local fake = require "support.fake_qmp"
local corpus = require "bench.corpus"

local path, n, trials, gap = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
local deadline = socket.gettime() + (tonumber(arg[5]) or 300)

local function left()
  local t = deadline - socket.gettime()
  if t <= 0 then
    io.stderr:write("many_peer: watchdog fired\n")
    os.remove(path)
    os.exit(2)
  end
  return t
end

local master = assert(unix.stream())
assert(master:bind(path))
assert(master:listen(128))

local conns = {}
for k = 1, n do
  master:settimeout(left())
  local c = assert(master:accept())
  c:settimeout(left())
  assert(c:send(fake.greeting))
  local line = assert(c:receive("*l"))
  local id = line:match('"id"%s*:%s*("[^"]*")')
  assert(c:send('{"return": {}' .. (id and (', "id": ' .. id) or "") .. '}\r\n'))
  conns[k] = c
end
print(("many_peer: %d connected"):format(n))

master:settimeout(left())
local control = assert(master:accept())
control:settimeout(left())
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

control:settimeout(left())
control:receive("*l")   -- until the driver closes it
for _, c in ipairs(conns) do c:close() end
master:close()
os.remove(path)
