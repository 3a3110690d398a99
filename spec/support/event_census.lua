-- Which QEMU event types the real-QEMU specs have seen and checked, shared
-- between the tests of spec/qemu_events_spec.lua (one module, so one table
-- for the whole busted run).
--   census.record(ev)      -- after the event's type and members were checked
--   census.count()         -- how many distinct names
--   census.names()         -- the names, sorted
local M = {}

local seen = {}

function M.record(ev)
  seen[ev.event] = (seen[ev.event] or 0) + 1
  return ev
end

function M.count()
  local n = 0
  for _ in pairs(seen) do n = n + 1 end
  return n
end

function M.names()
  local list = {}
  for name in pairs(seen) do list[#list + 1] = name end
  table.sort(list)
  return list
end

return M
