-- Memory of this process, for specs that bound it: the resident set now and
-- at its peak (Linux /proc), and Lua's heap after a full collection.
local M = {}

local PAGE = (function()
  local p = io.popen("getconf PAGESIZE 2>/dev/null")
  local n = p and tonumber(p:read("l"))
  if p then p:close() end
  return n or 4096
end)()

-- Resident bytes now.
function M.rss()
  local f = assert(io.open("/proc/self/statm"))
  local _, resident = f:read("n", "n")
  f:close()
  return resident * PAGE
end

-- The peak resident set (VmHWM) in bytes.
function M.peak()
  for line in io.lines("/proc/self/status") do
    local v = line:match("^VmHWM:%s+(%d+) kB")
    if v then return tonumber(v) * 1024 end
  end
  error("no VmHWM in /proc/self/status")
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
