-- Background processes for specs: spawn with a known pid, watch via /proc.
-- The peers must be separate processes because the client under test
-- blocks inside C while waiting on its socket.
local socket = require "socket"
local tmp = require "support.tmp"

local M = {}

-- Start argv (a list of words) in the background, stdin from /dev/null and
-- stdout+stderr into log, and return its pid. The redirections matter:
-- popen only returns once nothing holds its pipe open.
function M.spawn(argv, log)
  local words = {}
  for i, w in ipairs(argv) do words[i] = tmp.quote(w) end
  local cmd = table.concat(words, " ") .. " </dev/null >" .. tmp.quote(log) ..
    " 2>&1 & echo $!"
  local p = assert(io.popen(cmd))
  local pid = tonumber(p:read("l"))
  p:close()
  assert(pid, "could not start: " .. cmd)
  return pid
end

-- Running and not a zombie. Spawned processes are reparented, so an
-- exited one may linger as a zombie until someone reaps it.
function M.alive(pid)
  local text = tmp.read("/proc/" .. pid .. "/stat")
  if not text then return false end
  local state = text:match("%) (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- Poll until fn() is true or timeout seconds pass; returns the last result.
function M.wait_until(fn, timeout, interval)
  local deadline = socket.gettime() + timeout
  while true do
    if fn() then return true end
    if socket.gettime() >= deadline then return false end
    socket.sleep(interval or 0.01)
  end
end

-- Wait for pid to go away by itself; true if it did.
function M.wait_exit(pid, timeout)
  return M.wait_until(function() return not M.alive(pid) end, timeout)
end

function M.kill(pid, signal)
  os.execute("kill -" .. (signal or "TERM") .. " " .. math.tointeger(pid) .. " 2>/dev/null")
end

-- TERM, then KILL if it does not go within grace seconds.
function M.terminate(pid, grace)
  if not M.alive(pid) then return end
  M.kill(pid, "TERM")
  if not M.wait_exit(pid, grace or 5) then
    M.kill(pid, "KILL")
    M.wait_exit(pid, 5)
  end
end

-- True once a unix socket is bound to path and listening. A bound but not
-- yet listening socket already exists on disk and would refuse connections,
-- so checking for the file alone races with the server's listen().
function M.listening(path)
  local f = io.open("/proc/net/unix", "r")
  if not f then return tmp.exists(path) end
  for line in f:lines() do
    -- Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening
    local flags, p = line:match("^%x+:%s+%x+%s+%x+%s+(%x+)%s+%x+%s+%x+%s+%d+%s+(.-)%s*$")
    if p == path and (tonumber(flags, 16) & 0x10000) ~= 0 then
      f:close()
      return true
    end
  end
  f:close()
  return false
end

-- Run a shell command in the foreground: its exit status and its output
-- (stderr included).
function M.run(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"exit status: $?\""))
  local out = p:read("a")
  p:close()
  return tonumber(out:match("exit status: (%d+)\n$")), out
end

-- Whether the shell finds tool.
function M.have(tool)
  return (M.run("command -v " .. tool .. " >/dev/null")) == 0
end

return M
