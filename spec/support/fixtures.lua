-- Recorded QEMU output kept under spec/fixtures.  Loadable in a bare Lua
-- state too (the C harnesses' states): qmp is required only for the schema.
local M = {}

-- The bytes of spec/fixtures/<name> (paths are from the top of the tree).
function M.read(name)
  local f = assert(io.open("spec/fixtures/" .. name, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

local cache

-- The live schema of a real QEMU 7.2 (query-qmp-schema, recorded as sent), parsed.
function M.schema_72()
  if not cache then
    local qmp = require "qmp"
    local schema = require "qmp.schema"
    cache = schema.parse(assert(qmp.decode(M.read("qemu-7.2-schema.json"))))
  end
  return cache
end

return M
