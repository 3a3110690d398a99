-- A QMP peer that blasts events: for each of `connections` clients in
-- turn, it greets (QEMU 7.2's greeting), answers qmp_capabilities, writes
-- the corpus file `repeat` times as fast as the socket takes it, and closes.
--   lua5.4 blast_peer.lua <socket> <corpus file> <connections> [repeat] [watchdog seconds]
-- Exit status: 0 when every connection was served, 1 on unexpected input,
-- 2 when the watchdog fired.
local socket = require "socket"
local unix = require "socket.unix"

local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local fake = require "support.fake_qmp"

local path, corpus_file = arg[1], arg[2]
local connections, repeats = tonumber(arg[3]), tonumber(arg[4] or "1")
local deadline = socket.gettime() + (tonumber(arg[5]) or 600)

local f = assert(io.open(corpus_file, "rb"))
local corpus = f:read("a")
f:close()

local master = assert(unix.stream())
assert(master:bind(path))
assert(master:listen(4))

local function left()
  local t = deadline - socket.gettime()
  if t <= 0 then
    io.stderr:write("blast_peer: watchdog fired\n")
    os.remove(path)
    os.exit(2)
  end
  return t
end

for _ = 1, connections do
  master:settimeout(left())
  local c = assert(master:accept())
  c:settimeout(left())
  assert(c:send(fake.greeting))
  local line = c:receive("*l")
  if not line or not line:find('"qmp_capabilities"', 1, true) then
    io.stderr:write("blast_peer: expected qmp_capabilities, got ", tostring(line), "\n")
    os.exit(1)
  end
  local id = line:match('"id"%s*:%s*("[^"]*")')
  assert(c:send('{"return": {}' .. (id and (', "id": ' .. id) or "") .. '}\r\n'))
  for _ = 1, repeats do
    c:settimeout(left())
    if not c:send(corpus) then break end   -- the client went away: next one
  end
  c:close()
end
master:close()
os.remove(path)
