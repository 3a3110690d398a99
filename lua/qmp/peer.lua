--- What the process at the other end of a unix monitor socket is doing,
-- read from /proc (Linux): a silent monitor is often a QEMU that was
-- stopped (SIGSTOP, Ctrl-Z) or is stuck in the kernel, and a timeout
-- message that says so saves the operator a guess.  Where there is no
-- /proc, nothing is known and nothing is said.
local type, tonumber, open = type, tonumber, io.open

local peer = {}

-- The state letter of a /proc/PID/stat text: the field after the command
-- name, which is in parentheses and may itself hold spaces and ")", so the
-- name ends at the last ")".
function peer.parse_state(stat)
  return stat:match("^.*%) (%a)")
end

local function read_stat(pid)
  local f = open("/proc/" .. pid .. "/stat", "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

-- This process's own pid, once: a socketpair's peer credentials name the
-- process that made the pair (here, often this one), which is no news.
local own
local function own_pid()
  if own == nil then
    local text = read_stat("self")
    own = text and tonumber(text:match("^(%d+)")) or false
  end
  return own
end

--- The pid of a socket's peer worth naming in a message (from its
-- SO_PEERCRED credentials), or nil: unknown, 0 (another pid namespace) or
-- this process itself.
function peer.pid(cred)
  local pid = type(cred) == "table" and math.tointeger(cred.pid)
  if not pid or pid <= 0 or pid == own_pid() then return nil end
  return pid
end

--- The state letter of process pid ("R", "S", "D", "T", "t", ...), or nil
-- when it cannot be read (no such process, no /proc).
function peer.state(pid)
  local text = read_stat(pid)
  return text and peer.parse_state(text)
end

--- Why QEMU (process pid) is not answering, when its state tells: a
-- sentence, or nil when it runs or sleeps as usual.  state: the letter,
-- read from /proc when not given.
function peer.silence(pid, state)
  state = state or peer.state(pid)
  if state == "T" then
    return ("QEMU (pid %d) is stopped (SIGSTOP?): send it SIGCONT"):format(pid)
  elseif state == "t" then
    return ("QEMU (pid %d) is stopped by a debugger (traced)"):format(pid)
  elseif state == "D" then
    return ("QEMU (pid %d) is in uninterruptible sleep (hung on I/O?)"):format(pid)
  end
  return nil
end

return peer
