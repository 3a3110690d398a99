#!/usr/bin/env lua5.4
--- Drive qmp clients from a cqueues loop next to other work.
--   lua5.4 examples/cqueues_watch.lua SOCKET [SOCKET ...]
-- Each VM gets its own cqueues coroutine; a ticker shows the loop stays free.
local cqueues = require "cqueues"
local qmp = require "qmp"

if #arg == 0 then
  io.stderr:write("usage: cqueues_watch.lua SOCKET [SOCKET ...]\n")
  os.exit(2)
end

local cq = cqueues.new()
for _, address in ipairs(arg) do
  local vm = assert(qmp.connect(address, { name = address }))
  vm:on("*", function(ev) print(address, ev) end)
  cq:wrap(function()
    while true do
      cqueues.poll(vm)              -- vm answers pollfd/events/timeout
      local ok, err = vm:step()
      if not ok then print(address, tostring(err)); return end
    end
  end)
end
cq:wrap(function()
  while true do
    cqueues.sleep(10)
    io.stderr:write("(still watching)\n")
  end
end)
assert(cq:loop())
