-- Errors the library raises at the caller's line: a misuse must point at
-- the script's line, not at the library's.
--   local line, msg = here(), raised(function() vm:execute(...) end)
--   at_line(msg, line)
local assert = require "luassert"

local M = {}

-- The message of the error fn raises; it must raise.
function M.raised(fn)
  local ok, msg = pcall(fn)
  assert.is_false(ok, "expected an error")
  return tostring(msg)
end

-- The line of the caller of here().
function M.here()
  return debug.getinfo(2, "l").currentline
end

-- The error names the calling spec file and that line as its position.
function M.at_line(msg, line)
  local file = debug.getinfo(2, "S").short_src:match("[^/]*$")
  assert.equal(tostring(line), msg:match(file:gsub("%p", "%%%0") .. ":(%d+):"), msg)
end

return M
