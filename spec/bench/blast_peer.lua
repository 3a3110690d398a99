-- A QMP peer that blasts events: for each of `connections` clients in
-- turn, it greets (QEMU 7.2's greeting), answers qmp_capabilities, writes
-- the corpus file `repeat` times as fast as the socket takes it, and closes.
--   lua5.4 blast_peer.lua <socket> <corpus file> <connections> [repeat] [watchdog seconds]
-- Exit status: 0 when every connection was served, 1 on unexpected input,
-- 2 when the watchdog fired.
local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local peer_socket = require "support.peer_socket"

local path, corpus_file = arg[1], arg[2]
local connections, repeats = tonumber(arg[3]), tonumber(arg[4] or "1")
local watchdog = tonumber(arg[5]) or 600

local f = assert(io.open(corpus_file, "rb"))
local corpus = f:read("a")
f:close()

local peer = peer_socket.listen("blast_peer", path, 4, watchdog)
for _ = 1, connections do
  local c = peer:accept()
  assert(peer:negotiate(c))
  for _ = 1, repeats do
    c:settimeout(peer:left())
    if not c:send(corpus) then break end   -- the client went away: next one
  end
  c:close()
end
peer:close()
