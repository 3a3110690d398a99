-- Recorded QEMU output kept under spec/fixtures.
local qmp = require "qmp"
local schema = require "qmp.schema"

local M = {}

local cache

-- The live schema of a real QEMU 7.2 (query-qmp-schema, recorded as sent), parsed.
function M.schema_72()
  if not cache then
    local f = assert(io.open("spec/fixtures/qemu-7.2-schema.json"))
    local text = f:read("a")
    f:close()
    cache = schema.parse(assert(qmp.decode(text)))
  end
  return cache
end

return M
