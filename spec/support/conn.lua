-- Raw qmp.core connections for specs.
local core = require "qmp.core"

local M = {}

-- Wait (bounded by TEST_TIMEOUT) until a connect started by core.open_*
-- has finished; `connected` is what open_* returned with conn.
function M.finish(conn, connected)
  local deadline = core.monotime() + TEST_TIMEOUT
  while not connected do
    assert(core.monotime() < deadline, "connect did not finish")
    core.poll({ conn:fileno() }, TEST_TIMEOUT, { "w" })
    local err
    connected, err = conn:finish_connect()
    assert(connected ~= nil, tostring(err))
  end
end

return M
