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

-- A connection of qmp.core to a unix listener of the spec's own, and the
-- peer's end (luasocket), each closed by cleanup(fn) (support.cleanup),
-- the listener's directory removed.
function M.unix_pair(cleanup)
  local tmp, unix = require "support.tmp", require "socket.unix"
  local dir = tmp.dir("qmpconn")
  cleanup(function() tmp.remove(dir) end)
  local path = dir .. "/s.sock"
  local srv = assert(unix.stream())
  assert(srv:bind(path))
  assert(srv:listen(4))
  srv:settimeout(TEST_TIMEOUT)
  cleanup(function() srv:close() end)
  local conn, connected = assert(core.open_unix(path))
  cleanup(function() conn:close() end)
  M.finish(conn, connected)
  local peer = assert(srv:accept())
  cleanup(function() peer:close() end)
  return conn, peer
end

return M
