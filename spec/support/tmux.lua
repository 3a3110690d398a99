-- A real terminal for specs: a private tmux server (tmux -L NAME) running
-- one session; the spec types with send-keys and reads the screen with
-- capture-pane, waiting (bounded) for what it expects.
--   local term = tmux.start("shell", { cwd = ".", width = 160, height = 50 }, command)
--   term:wait_for("\nqmp>"); term:type("query-status"); term:keys("Enter")
--   term:stop()
local proc = require "support.proc"
local tmp = require "support.tmp"

local M = {}

M.WAIT = 5   -- seconds the screen may take to show what is expected

local Term = {}
Term.__index = Term

-- Run `tmux -L server ARGS...`: its output; a failure raises with it.
function Term:tmux(...)
  local words = { "tmux", "-L", tmp.quote(self.server) }
  for _, w in ipairs({ ... }) do words[#words + 1] = tmp.quote(w) end
  local p = assert(io.popen(table.concat(words, " ") .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  assert(ok, "tmux " .. table.concat({ ... }, " ") .. ": " .. out)
  return out
end

-- The screen's text; with opts.blanks (start) each line keeps its trailing blanks.
function Term:screen()
  if self.blanks then return self:tmux("capture-pane", "-p", "-N", "-t", self.session) end
  return self:tmux("capture-pane", "-p", "-t", self.session)
end

-- Poll the screen until it matches pattern (a Lua pattern; plain: a plain
-- text), at most seconds: the screen.  Fails showing the screen.
function Term:wait_for(pattern, seconds, plain)
  local text
  local found = proc.wait_until(function()
    text = self:screen()
    return text:find(pattern, 1, plain) ~= nil
  end, seconds or M.WAIT, 0.05)
  assert(found, ("the screen never showed %q; it shows:\n%s"):format(pattern, text))
  return text
end

function Term:keys(...) self:tmux("send-keys", "-t", self.session, ...) end
function Term:type(text) self:tmux("send-keys", "-t", self.session, "-l", "--", text) end

-- Kill the server and remove its socket file (kill-server leaves it).
function Term:stop()
  local p = io.popen("tmux -L " .. tmp.quote(self.server) .. " display-message -p '#{socket_path}' 2>/dev/null")
  local socket_path = p and p:read("l")
  if p then p:close() end
  os.execute("tmux -L " .. tmp.quote(self.server) .. " kill-server >/dev/null 2>&1")
  if socket_path and socket_path:find("/" .. self.server, 1, true) then os.remove(socket_path) end
end

local function pwd()
  local p = assert(io.popen("pwd"))
  local dir = p:read("l")
  p:close()
  return dir
end

--- A new private server whose session runs command (a shell command line).
-- opts: cwd (default the current directory), width, height, blanks (see screen).
function M.start(name, opts, command)
  opts = opts or {}
  local term = setmetatable({ server = ("qmp-spec-%s-%d-%d"):format(name, os.time(), math.random(1 << 30)),
                              session = name, blanks = opts.blanks }, Term)
  term:tmux("new-session", "-d", "-s", name, "-x", tostring(opts.width or 160), "-y", tostring(opts.height or 50),
            "-c", opts.cwd or pwd(), command)
  return term
end

return M
