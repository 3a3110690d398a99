#!/usr/bin/env lua5.4
--- Watch VMs from coroutines that a libuv loop (luv) resumes.
--   lua5.4 examples/luv_watch.lua SOCKET [SOCKET ...]
-- With opts.waiter = qmp.waiters.luv, connect / execute / wait / run inside
-- a coroutine yield to uv.run instead of blocking it.  Per VM, one coroutine
-- prints every event (vm:run) while another, on the same client, asks for
-- the status after each pause or resume.  Ends when every VM has gone, or on
-- Ctrl-C (which closes the clients).
local uv = require "luv"
local qmp = require "qmp"

if #arg == 0 then
  io.stderr:write("usage: luv_watch.lua SOCKET [SOCKET ...]\n")
  os.exit(2)
end
io.stdout:setvbuf("line")

local clients, open = {}, #arg
local sigint = uv.new_signal()
sigint:start("sigint", function()
  for _, vm in pairs(clients) do vm:close() end
end)

local function watch(address)
  local vm, err = qmp.connect(address, { name = address, waiter = qmp.waiters.luv })
  if vm then
    clients[address] = vm
    local v = vm.greeting.QMP.version.qemu
    print(("%s: watching (QEMU %d.%d.%d)"):format(address, v.major, v.minor, v.micro))

    -- Another coroutine on the same client: its command waits for its reply
    -- while vm:run below goes on.
    local changes = vm:listen({ "STOP", "RESUME" })
    coroutine.wrap(function()
      while true do
        local ev, werr = changes:wait(3600)
        if ev then
          local st, serr = vm:execute("query-status")
          print(address, "status after " .. ev.event .. ": " .. (st and st.status or tostring(serr)))
        elseif werr.kind ~= "timeout" then
          return                        -- the client closed
        end
      end
    end)()

    vm:on("*", function(ev) print(address, ev) end)
    local _, why = vm:run()             -- until the VM goes
    print(address, tostring(why))         -- "closed: ..."
    vm:close()
    clients[address] = nil
  else
    print(address, tostring(err))
  end
  open = open - 1
  if open == 0 then sigint:close() end  -- nothing left to keep the loop alive
end

for _, address in ipairs(arg) do
  coroutine.wrap(watch)(address)        -- runs until its first wait; uv.run resumes it
end
uv.run()
