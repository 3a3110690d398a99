#!/usr/bin/env lua5.4
--- A policy daemon that shares the monitor it holds: the resume-on-I/O-error
-- policy runs on the connection, and operators' tools use the same monitor
-- through the mux socket meanwhile:
--   lua5.4 examples/shared_monitor.lua /run/vm1/qmp.sock /run/vm1/mux.sock
--   qmp-lua shell /run/vm1/mux.sock          (and events, exec, qmp-shell ...)
-- Follows QEMU's restarts; ends on Ctrl-C or SIGTERM (removing the socket).
local qmp = require "qmp"

local address, listen = arg[1], arg[2]
if not address or not listen then
  io.stderr:write("usage: shared_monitor.lua SOCKET MUX-SOCKET\n")
  os.exit(2)
end

local function say(line)
  print(os.date("%H:%M:%S ") .. line)
  io.stdout:flush()
end

qmp.signals.catch("INT", "TERM")
local vm <close> = assert(qmp.connect(address, { name = address, reconnect = { min = 0.2, max = 5 } }))
qmp.policy.resume_on_io_error(vm, { log = function(line) say("policy: " .. line) end })
local mux <close> = assert(qmp.mux(vm, { listen = listen, log = function(line) say("mux: " .. line) end }))
say(("holding %s; sharing it on %s"):format(address, listen))

local _, err = vm:run()   -- the policy and the mux, until a signal or the VM is gone for good
say("ending: " .. tostring(err))
