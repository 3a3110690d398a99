-- Memory of this process, for the specs, long runs and benchmarks that
-- measure it: the resident set now and at its peak (Linux /proc), and Lua's
-- heap after a full collection.  All in bytes.
local M = {}

-- A "<name>: <n> kB" line of /proc/self/status, in bytes.
local function status_bytes(name)
  local f = assert(io.open("/proc/self/status", "r"))
  local text = f:read("a")
  f:close()
  local kb = assert(text:match(name .. ":%s*(%d+) kB"), "no " .. name .. " in /proc/self/status")
  return tonumber(kb) * 1024
end

-- Resident bytes now (VmRSS), without collecting first.
function M.rss()
  return status_bytes("VmRSS")
end

-- The peak resident set so far (VmHWM).
function M.peak()
  return status_bytes("VmHWM")
end

-- Start the peak afresh from the resident set now ("5" to clear_refs).
function M.reset_peak()
  collectgarbage()
  collectgarbage()
  local f = assert(io.open("/proc/self/clear_refs", "w"))
  f:write("5")
  f:close()
  assert(M.peak() <= M.rss() + (1 << 20), "could not reset the peak resident set")
end

-- Lua's heap in bytes after a full collection.
function M.heap()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count") * 1024
end

return M
