-- lua5.4 spec/support/measure_child.lua SOCKET OPTS BODY (run from the top of the tree)
-- A client in a process of its own, so that its resident set shows what the
-- client needed: in a spec's own process, memory earlier specs freed is
-- reused and hides growth.  OPTS is a Lua table constructor for qmp.connect,
-- BODY the source of a function(vm, qmp) returning a table of results
-- (strings, numbers, booleans).  Prints them, one "key<TAB>value" a line,
-- with took (seconds in BODY, unless it says), peak (how far the resident set rose above its
-- level once connected, in bytes) and heap (Lua's heap after BODY, less
-- before, in bytes).
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local qmp = require "qmp"
local memory = require "support.memory"

local path, opts_src, body_src = arg[1], arg[2], arg[3]
local opts = assert(load("return " .. opts_src, "=opts", "t", {}))()
local body = assert(load("return " .. body_src, "=body"))()
local vm = assert(qmp.connect(path, opts))
local heap0 = memory.heap()
memory.reset_peak()
local before = memory.rss()
local t0 = qmp.monotime()
local out = body(vm, qmp) or {}
out.took = out.took or qmp.monotime() - t0
out.peak = memory.peak() - before
out.heap = memory.heap() - heap0
for k, v in pairs(out) do
  io.write(k, "\t", (tostring(v):gsub("[\t\n]", " ")), "\n")
end
vm:close()
