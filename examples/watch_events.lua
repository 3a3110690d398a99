#!/usr/bin/env lua5.4
--- Print every event of a running VM as one readable line.
--   lua5.4 examples/watch_events.lua SOCKET [FILTER ...]
-- SOCKET is any qmp.connect address ("/run/vm1/qmp.sock", "tcp:127.0.0.1:4444").
-- FILTERs are event names or globs ("STOP", "BLOCK_JOB_*"); default: all events.
-- Ctrl-C or SIGTERM ends it with a count on stderr and status 130 or 143.
local qmp = require "qmp"

local address = arg[1]
if not address then
  io.stderr:write("usage: watch_events.lua SOCKET [FILTER ...]\n")
  os.exit(2)
end
local names = #arg > 1 and { table.unpack(arg, 2) } or "*"

qmp.signals.catch("INT", "TERM")   -- the waits below return kind "interrupted" instead of dying
local vm <close> = assert(qmp.connect(address, { name = address }))
local v = vm.greeting.QMP.version.qemu
io.stderr:write(("watching %s (QEMU %d.%d.%d); Ctrl-C to stop\n"):format(address, v.major, v.minor, v.micro))
local events <close> = vm:listen(names)   -- every matching event, in order
local seen = 0
while true do
  local ev, err = events:wait(3600)
  if ev then
    seen = seen + 1
    print(ev)
    io.stdout:flush()
  elseif err.kind == "interrupted" then
    io.stderr:write(("stopped by %s after %d event%s\n"):format(err.signal, seen, seen == 1 and "" or "s"))
    local _, signo = qmp.signals.take()
    os.exit(128 + signo, true)   -- true: close vm and the listener first
  elseif err.kind ~= "timeout" then
    io.stderr:write(tostring(err), "\n")
    break
  end
end
