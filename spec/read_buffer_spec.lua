-- Read buffers of connections gone do not pile up.  Each connection's
-- decoder holds a malloc'd buffer of 64 KiB or more, freed when the garbage
-- collector finalizes it; the collector cannot see that memory, so before
-- the fix a client that reconnected a thousand times a second kept some
-- 16 MiB of dead buffers waiting for a cycle (spec/long/churn_long.lua).
-- Growing a buffer now runs a step of collection as for that many bytes.
-- Measured in a fresh lua5.4 (VmHWM), where nothing else moved the peak,
-- with a live heap of a few MiB as a busy client has.
local tmp = require "support.tmp"

local CHILD = [==[
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local core = require "qmp.core"
local socket = require "socket"
local unix = require "socket.unix"
local memory = require "support.memory"
local function hwm() return memory.peak() // 1024 end   -- KiB
local partial = '{"event": "X", "data": {"a": "' .. ("x"):rep(60000)   -- never ends: held in the buffer
local what, n, path = arg[1], tonumber(arg[2]), arg[3]
-- A live heap like a busy client's (its event history, handlers): the
-- collector's next cycle comes only once Lua has allocated as much again.
local ballast = {}
for i = 1, 50000 do ballast[i] = { i } end
collectgarbage("collect")
local before = hwm()
if what == "decoders" then
  for _ = 1, n do
    local d = core.decoder()
    d:feed(partial)
  end
else   -- connections that read 60 KB each, then are closed
  local server = assert(unix.stream())
  assert(server:bind(path))
  assert(server:listen(4))
  for _ = 1, n do
    local conn, connected = assert(core.open_unix(path))
    local peer = assert(server:accept())
    assert(peer:send(partial))
    while not connected do connected = assert(conn:finish_connect()) end
    local got = 0
    while got < #partial do   -- bounded: the bytes are in the socket already
      local list, skipped, err = conn:drain(1)
      assert(not err and #list == 0 and skipped == 0)
      if conn:pending() == got then core.poll({ conn:fileno() }, 5, { "r" }) end
      got = conn:pending()
    end
    conn:close()
    peer:close()
  end
  server:close()
end
print("grew " .. (hwm() - before), #ballast)
]==]

local function run_child(what, n)
  local dir = tmp.dir("qmpbuf")
  tmp.write(dir .. "/child.lua", CHILD)
  local p = assert(io.popen(("lua5.4 %s %s %d %s 2>&1"):format(tmp.quote(dir .. "/child.lua"), what, n,
                                                                tmp.quote(dir .. "/s.sock"))))
  local out = p:read("a")
  p:close()
  tmp.remove(dir)
  return tonumber(out:match("grew (%d+)")), out
end

describe("read buffers", function()
  it("of dropped decoders are collected as they come: 500 x 60 KB, peak under 12 MiB #memory", function()
    local kb, out = run_child("decoders", 500)    -- before the fix: 31 MiB
    assert(kb, out)
    assert.is_true(kb < 12 * 1024, ("the peak grew by %d KiB"):format(kb))
  end)

  it("of closed connections are collected as they come: 500 x 60 KB read, peak under 12 MiB #memory", function()
    local kb, out = run_child("conns", 500)       -- before the fix: 35 MiB
    assert(kb, out)
    assert.is_true(kb < 12 * 1024, ("the peak grew by %d KiB"):format(kb))
  end)
end)
