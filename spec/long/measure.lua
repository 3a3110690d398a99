-- What the long specs measure of their own process: resident memory, open
-- file descriptors, and a record of figures for the end of the run.
local lfs = require "lfs"
local memory = require "support.memory"

local M = {}

--- VmRSS in KiB, after a full garbage collection (what is still in use).
function M.rss()
  collectgarbage("collect")
  collectgarbage("collect")
  return memory.rss() // 1024
end

--- VmRSS in KiB as it is, without collecting (cheap enough for a timer).
function M.rss_now()
  return memory.rss() // 1024
end

--- Peak resident memory so far (VmHWM), KiB.
function M.peak()
  return memory.peak() // 1024
end

--- Open file descriptors of this process, and what they point at, sorted.
function M.fds()
  local list = {}
  for name in lfs.dir("/proc/self/fd") do
    if name:match("^%d+$") then
      -- the directory being read shows up as one more fd: it is the same each time
      list[#list + 1] = name .. " -> " .. tostring(lfs.symlinkattributes("/proc/self/fd/" .. name, "target"))
    end
  end
  table.sort(list)
  return #list, list
end

--- Figures for the log: printed as one line each, prefixed, so that a
-- run's output can be grepped for them (`grep '^long:'`).
function M.say(fmt, ...)
  io.stdout:write("\nlong: ", fmt:format(...), "\n")
  io.stdout:flush()
end

--- "12.3 MiB" from KiB.
function M.mib(kb)
  return ("%.1f MiB"):format(kb / 1024)
end

return M
