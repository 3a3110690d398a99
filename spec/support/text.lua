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

return M
