#!/usr/bin/env lua5.4
--- Drive qmp clients from a cqueues loop next to other work.
--   lua5.4 examples/cqueues_watch.lua SOCKET [SOCKET ...]
-- Each VM gets its own cqueues coroutine; the program ends when all have closed.
local cqueues = require "cqueues"
local qmp = require "qmp"

if #arg == 0 then
  io.stderr:write("usage: cqueues_watch.lua SOCKET [SOCKET ...]\n")
  os.exit(2)
end

local cq = cqueues.new()
local open = #arg
for _, address in ipairs(arg) do
  local vm = assert(qmp.connect(address, { name = address }))
  vm:on("*", function(ev) print(address, ev) end)
  cq:wrap(function()
    while true do
      cqueues.poll(vm)              -- vm answers pollfd/events/timeout
      local ok, err = vm:step()
      if not ok then
        print(address, tostring(err))
        cqueues.cancel(vm:pollfd())   -- tell cqueues before the fd goes
        vm:close()
        open = open - 1
        return
      end
    end
  end)
end
io.stderr:write(("watching %d VM(s)\n"):format(open))
cq:wrap(function()
  while open > 0 do
    cqueues.sleep(1)
  end
end)
assert(cq:loop())
