#!/usr/bin/env lua5.4
--- Watch VMs from cqueues coroutines, next to other work.
--   lua5.4 examples/cqueues_watch.lua SOCKET [SOCKET ...]
-- With opts.waiter = qmp.waiters.cqueues, connect / execute / wait / run
-- yield to the cqueues loop instead of blocking it.  Per VM, one coroutine
-- prints every event (vm:run) while another, on the same client, asks for
-- the status after each pause or resume.  Ends when every VM has gone.
local cqueues = require "cqueues"
local qmp = require "qmp"

if #arg == 0 then
  io.stderr:write("usage: cqueues_watch.lua SOCKET [SOCKET ...]\n")
  os.exit(2)
end
io.stdout:setvbuf("line")

local cq = cqueues.new()

local function watch(address)
  local vm, err = qmp.connect(address, { name = address, waiter = qmp.waiters.cqueues })
  if not vm then
    print(address, tostring(err))
    return
  end
  local v = vm.greeting.QMP.version.qemu
  print(("%s: watching (QEMU %d.%d.%d)"):format(address, v.major, v.minor, v.micro))

  -- Another coroutine on the same client: its command waits for its reply
  -- while vm:run below goes on.
  local changes = vm:listen({ "STOP", "RESUME" })
  cq:wrap(function()
    while true do
      local ev, werr = changes:wait(3600)
      if ev then
        local st, serr = vm:execute("query-status")
        print(address, "status after " .. ev.event .. ": " .. (st and st.status or tostring(serr)))
      elseif werr.kind ~= "timeout" then
        return                          -- the client closed
      end
    end
  end)

  vm:on("*", function(ev) print(address, ev) end)
  local _, why = vm:run()               -- until the VM goes
  print(address, tostring(why))         -- "closed: ..."
  vm:close()
end

for _, address in ipairs(arg) do
  cq:wrap(watch, address)
end
assert(cq:loop())
