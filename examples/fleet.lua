#!/usr/bin/env lua5.4
--- Watch many VMs in one loop and print a fleet-wide event log.
--   lua5.4 examples/fleet.lua SOCKET [SOCKET ...]
-- Each line names the VM it came from.  VMs that go away are reported and
-- dropped; the others go on.  Ends when the last VM is gone (or on Ctrl-C).
local qmp = require "qmp"

if #arg == 0 then
  io.stderr:write("usage: fleet.lua SOCKET [SOCKET ...]\n")
  os.exit(2)
end

local vms = {}
for _, address in ipairs(arg) do
  local vm, err = qmp.connect(address, { name = address, timeout = 5 })
  if vm then
    vms[#vms + 1] = vm
    local st = vm:execute("query-status")
    print(("%-30s connected, status %s"):format(address, st and st.status or "?"))
  else
    print(("%-30s %s"):format(address, tostring(err)))
  end
end

local loop = qmp.loop(vms)
loop:on("*", function(ev, vm) print(("%-30s %s"):format(vm.name, tostring(ev))) end)
loop:on("SHUTDOWN", { guest = true }, function(_, vm)
  print(("%-30s the guest powered itself off"):format(vm.name))
end)
loop.on_close = function(vm, err)
  print(("%-30s gone: %s"):format(vm.name, tostring(err)))
  vm:close()
end
local _, err = loop:run()
print("fleet: " .. tostring(err))
