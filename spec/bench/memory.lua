--- This process's memory, from /proc/self/status: resident now (VmRSS) and
-- its peak so far (VmHWM), in bytes.
local M = {}

local function field(name)
  local f = assert(io.open("/proc/self/status", "r"))
  local text = f:read("a")
  f:close()
  local kb = assert(text:match(name .. ":%s*(%d+) kB"), "no " .. name .. " in /proc/self/status")
  return tonumber(kb) * 1024
end

function M.rss() return field("VmRSS") end
function M.peak() return field("VmHWM") end

return M
