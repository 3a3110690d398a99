-- Text helpers for specs.
local M = {}

-- How often plain (a plain string, not a pattern) occurs in text.
function M.count(text, plain)
  local n, at = 0, 1
  while true do
    local s, e = text:find(plain, at, true)
    if not s then return n end
    n, at = n + 1, e + 1
  end
end

-- A table's keys, sorted.
function M.sorted_keys(t)
  local list = {}
  for k in pairs(t) do list[#list + 1] = k end
  table.sort(list)
  return list
end

return M
