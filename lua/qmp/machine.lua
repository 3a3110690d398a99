--- qmp.machine: launch a QEMU and own it for its whole life.
--   local m <close> = assert(qmp.machine{ args = { "-M", "pc", "-display", "none" } })
--   print(m.pid, assert(m.vm:execute("query-status")).status)
--   m:shutdown()
-- QEMU is started without a shell, its monitor on one end of a socketpair
-- (nothing on the file system: no path to pick, no race, no stale socket)
-- and, if asked, its first serial port on a second one.  Its stderr and the
-- console are read as they come (bounded), and its exit is learnt through a
-- pidfd; all three are served by the client's own loop (vm:attach), so a
-- machine lives in vm:run, qmp.loop or a scheduler like any client.  No
-- SIGCHLD handler is installed: the child is reaped through its pidfd.  QEMU
-- runs in a process group of its own (a Ctrl-C at the terminal reaches the
-- caller, who shuts it down in order) and dies with the caller
-- (PR_SET_PDEATHSIG), so no QEMU is ever left behind.
local core = require "qmp.core"
local errors = require "qmp.errors"
local Client = require "qmp.client"

local type, ipairs, pairs, pcall, setmetatable = type, ipairs, pairs, pcall, setmetatable
local concat, monotime = table.concat, core.monotime

local Machine = { __name = "qmp.Machine" }
Machine.__index = Machine

local OPTIONS = { binary = true, args = true, client = true, console = true, console_log = true,
                  console_max = true, timeout = true, wait = true }
local DEFAULT_BINARY = "qemu-system-x86_64"
local MONITOR_FD, CONSOLE_FD = 3, 4   -- where QEMU finds them (-chardev socket,fd=N)
local STDERR_MAX = 64 * 1024          -- bytes of stderr kept (the latest)
local CONSOLE_MAX = 1024 * 1024       -- bytes of console output kept, by default
local POLL_EVERY = 0.1                -- without a pidfd, how often the exit is looked for
local EXIT_GRACE = 5                  -- seconds a QEMU that failed to start has to exit
local LADDER = 10                     -- seconds each step of shutdown() waits, by default
local CLOSE_STEP = 2                  -- seconds each step of close() waits
local QUIET = 0.2                     -- seconds of console silence after which an unfinished line counts

-- {==================== bounded text

-- The latest max bytes of a stream, with a count of those dropped and of
-- all received (absolute offsets for console_wait).
local Tail = {}
Tail.__index = Tail

local function new_tail(max)
  return setmetatable({ max = max, chunks = {}, size = 0, dropped = 0, total = 0 }, Tail)
end

function Tail:add(text)
  local chunks = self.chunks
  chunks[#chunks + 1] = text
  self.size, self.total = self.size + #text, self.total + #text
  if self.size > self.max then   -- join and cut once: appends stay cheap
    local all = concat(chunks)
    local cut = #all - self.max
    self.chunks, self.size = { all:sub(cut + 1) }, self.max
    self.dropped = self.dropped + cut
  end
end

function Tail:text()
  local chunks = self.chunks
  if #chunks > 1 then self.chunks = { concat(chunks) } end
  return self.chunks[1] or ""
end

-- }==================== bounded text

local function describe_exit(exit)
  if exit.signal then return ("killed by signal %d"):format(exit.signal) end
  return ("exited with status %d"):format(exit.status)
end

local function check_options(opts)
  opts = errors.check_options("qmp.machine", opts, OPTIONS)
  if opts.binary ~= nil and (type(opts.binary) ~= "string" or opts.binary == "") then
    errors.raise("qmp.machine: binary must be a program name or path")
  end
  local args = opts.args or {}
  if type(args) ~= "table" then errors.raise("qmp.machine: args must be a list of strings") end
  for i = 1, #args do
    if type(args[i]) ~= "string" then
      errors.raise(("qmp.machine: args[%d] must be a string, not a %s"):format(i, type(args[i])))
    end
  end
  if opts.client ~= nil and type(opts.client) ~= "table" then
    errors.raise("qmp.machine: client must be a table of qmp.connect options")
  end
  if opts.client and opts.client.reconnect then
    errors.raise("qmp.machine: the monitor is a socketpair: client.reconnect cannot apply")
  end
  if opts.console_log ~= nil and type(opts.console_log) ~= "string" then
    errors.raise("qmp.machine: console_log must be a path")
  end
  local max = opts.console_max
  if max ~= nil and (math.type(max) ~= "integer" or max < 1) then
    errors.raise("qmp.machine: console_max must be a positive integer (bytes)")
  end
  errors.check_duration("qmp.machine", "timeout", opts.timeout, { optional = true })
  if opts.wait ~= nil and type(opts.wait) ~= "boolean" then errors.raise("qmp.machine: wait must be a boolean") end
  return opts, args
end

-- The fds of the child: stdout and stderr into one pipe, the monitor, the console.
local function open_fds(console)
  local fds = {}
  fds.monitor, fds.monitor_child = core.socketpair()
  fds.stderr, fds.stderr_child = core.pipe()
  if console then fds.console, fds.console_child = core.socketpair() end
  return fds
end

local function argv_of(binary, args, console)
  local argv = { binary, "-chardev", ("socket,id=qmp-monitor,fd=%d"):format(MONITOR_FD),
                 "-mon", "chardev=qmp-monitor,mode=control" }
  if console then
    for _, a in ipairs({ "-chardev", ("socket,id=qmp-console,fd=%d"):format(CONSOLE_FD),
                         "-serial", "chardev:qmp-console" }) do argv[#argv + 1] = a end
  end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return argv
end

--- qmp.machine(opts) -> m | nil, err.  See README ("Owning a QEMU").
local function new(opts)
  local args
  opts, args = check_options(opts)
  local binary = opts.binary or DEFAULT_BINARY
  local log
  if opts.console_log then
    local why
    log, why = core.private_file(opts.console_log)   -- 0600: a console may show secrets
    if not log then return nil, errors.new("io", "console_log: " .. tostring(why)) end
  end
  local fds = open_fds(opts.console)
  local proc, err = core.spawn(binary, argv_of(binary, args, opts.console),
                               { [1] = fds.stderr_child, [2] = fds.stderr_child,
                                 [MONITOR_FD] = fds.monitor_child, [CONSOLE_FD] = fds.console_child })
  for _, k in ipairs({ "stderr_child", "monitor_child", "console_child" }) do
    if fds[k] then fds[k]:close() end
  end
  if not proc then
    for _, k in ipairs({ "monitor", "stderr", "console" }) do
      if fds[k] then fds[k]:close() end
    end
    if log then log:close() end
    return nil, err
  end
  local m = setmetatable({
    pid = proc:pid(),
    binary = binary,
    exit = nil,                   -- once QEMU has exited: { status = n } or { signal = n }
    on_exit = nil,                -- function(exit, m), called when QEMU's exit is learnt
    vm = nil,
    _proc = proc,
    _fds = fds,
    _stderr = new_tail(STDERR_MAX),
    _console = opts.console and new_tail(opts.console_max or CONSOLE_MAX) or nil,
    _console_log = log,
    _scan = 0,                    -- console_wait looks from this offset on
    _console_at = monotime(),     -- when the console last said something
    _console_waits = 0,           -- console_waits in progress
    _poller = core.poller("epoll"),
    _ready = {},
    _closed = false,
  }, Machine)
  m:_watch()
  local client_opts = {}
  for k, v in pairs(opts.client or {}) do client_opts[k] = v end
  client_opts.name = client_opts.name or ("%s (pid %d)"):format(binary, m.pid)
  client_opts.explain_end = function() return m:_explain_end() end
  local ok, vm
  ok, vm, err = pcall(Client.new, { fd = fds.monitor:release() }, client_opts)
  if not ok then   -- a mistake in opts.client: QEMU must not outlive it
    m:close()
    error(vm, 0)   -- the message already points at the caller's line
  end
  if not vm then
    m:close()
    return nil, err
  end
  m.vm = vm
  local attached, why = vm:attach(m)
  if not attached then
    m:close()
    return nil, why
  end
  if opts.wait == false then return m end   -- m.vm connects in the background, as qmp.client's do
  return m:_started(opts.timeout or vm.default_timeout)
end

-- Wait until the monitor is negotiated; else QEMU's complaint.
function Machine:_started(timeout)
  local vm = self.vm
  local _, err = vm:run({ timeout = timeout, done = function() return vm.state == "ready" or vm:closed() end })
  if vm.state == "ready" then return self end
  if err and err.kind == "interrupted" then
    self:close()
    return nil, err
  end
  local exit = self.exit or self._proc:wait(EXIT_GRACE)
  if exit then self:_exited(exit) end
  local said = self:stderr():gsub("%s+$", "")
  local text
  if exit then
    text = ("%s %s while starting"):format(self.binary, describe_exit(exit))
  else
    text = ("%s (pid %d) did not answer on its monitor within %g s"):format(self.binary, self.pid, timeout)
  end
  if said ~= "" then text = text .. ": " .. errors.quote(said, 1000) end
  self:close()
  return nil, errors.new("launch", text, { exit = exit, stderr = said })
end

-- {==================== the part vm serves (vm:attach)

-- Register what is still open: the pidfd until the exit is learnt, the pipes until their end.
function Machine:_watch()
  local poller = self._poller
  local pidfd = self._proc:pidfd()
  self._pidfd = pidfd >= 0 and pidfd or nil
  if self._pidfd then poller:set(pidfd, "r") end
  poller:set(self._fds.stderr:fileno(), "r")
  if self._fds.console then poller:set(self._fds.console:fileno(), "r") end
end

-- Read what a pipe holds now into tail (and the log); true at its end.
local function drain(fd, tail, log)
  while true do
    local text, err = fd:read()
    if text == false then return false end
    if not text then return true, err end
    tail:add(text)
    if log then log:write(text) log:flush() end
  end
end

function Machine:_read(key, tail, log)
  local fd = self._fds[key]
  if not fd or fd:fileno() < 0 then return end
  if drain(fd, tail, log) then   -- its end: stop watching it
    self._poller:unset(fd:fileno())
    fd:close()
  end
end

function Machine:_exited(exit)
  if self.exit then return end
  self.exit = exit
  if self._pidfd then self._poller:unset(self._pidfd) end
  self:_read("stderr", self._stderr)
  if self._console then self:_read("console", self._console, self._console_log) end
  if self.on_exit then
    local ok, why = pcall(self.on_exit, exit, self)
    if not ok and self.vm then
      self.vm:report(errors.new("handler", "machine on_exit failed: " .. tostring(why)))
    end
  end
end

--- For the client's loop: read stderr and the console, learn the exit.
function Machine:step()
  if self._closed then return end
  local n = self._poller:wait(0, self._ready) or 0
  for i = 1, n do
    local fd = self._ready[i]
    if fd == self._fds.stderr:fileno() then self:_read("stderr", self._stderr)
    elseif self._fds.console and fd == self._fds.console:fileno() then
      self:_read("console", self._console, self._console_log)
      self._console_at = monotime()
    end
  end
  if not self.exit then
    local exit = self._proc:poll()
    if exit then self:_exited(exit) end
  end
end

function Machine:pollfd()
  if self._closed then return -1 end
  return self._poller:fileno()
end

function Machine:events()
  return "r"
end

--- Without a pidfd, the exit is looked for every POLL_EVERY seconds; a
-- console_wait is woken when the console falls quiet.
function Machine:timeout()
  if self._closed then return nil end
  local t
  if not self._pidfd and not self.exit then t = POLL_EVERY end
  if self._console_waits > 0 then
    local quiet_in = QUIET - (monotime() - self._console_at)
    if quiet_in > 0 then t = math.min(t or quiet_in, quiet_in) end
  end
  return t
end

-- For the client's errors when the monitor closes: how QEMU ended, if it
-- has (it closes its sockets as it exits: give it a moment).
function Machine:_explain_end()
  local exit = self.exit or self._proc:wait(0.2)
  if not exit then return nil end
  self:_exited(exit)
  return ("QEMU (pid %d) %s"):format(self.pid, describe_exit(exit))
end

-- }==================== the part vm serves

--- QEMU's stderr and stdout so far (the latest 64 KiB).
function Machine:stderr()
  return self._stderr:text()
end

--- What the guest printed on the first serial port so far (the latest
-- console_max bytes), and how many bytes were dropped before them.
function Machine:console()
  if not self._console then errors.raise("qmp.machine: console() needs opts.console = true") end
  return self._console:text(), self._console.dropped
end

-- The first line from offset from on that matches: the line, and the
-- offset after it.  The unfinished last line is looked at only when
-- unfinished is true (the console has been quiet: a prompt has no newline).
local function find_line(tail, from, pattern, unfinished)
  local text = tail:text()
  local base = tail.total - #text   -- the offset of text's first byte
  local pos = math.max(from - base, 0) + 1
  while pos <= #text do
    local eol = text:find("\n", pos, true)
    if not eol and not unfinished then return end
    local line = text:sub(pos, (eol or #text + 1) - 1):gsub("\r$", "")
    if line:find(pattern) then return line, base + (eol or #text) end
    if not eol then return end
    pos = eol + 1
  end
end

-- Whether the console has said nothing for QUIET seconds.
function Machine:_quiet()
  return monotime() - self._console_at >= QUIET
end

--- The first console line since the last match that matches the Lua
-- pattern, waiting up to timeout seconds (default: the client's): the
-- line (without its end) | nil, err.  The unfinished last line counts once
-- the console has been quiet for QUIET seconds: a prompt has no newline.
function Machine:console_wait(pattern, timeout)
  if not self._console then errors.raise("qmp.machine: console_wait() needs opts.console = true") end
  if type(pattern) ~= "string" then errors.raise("qmp.machine: console_wait: pattern must be a string") end
  errors.check_duration("qmp.machine: console_wait", "timeout", timeout, { optional = true })
  timeout = timeout or self.vm.default_timeout
  local tail, line, after = self._console, nil, nil
  local function found()
    line, after = find_line(tail, self._scan, pattern, self:_quiet() or self.exit ~= nil)
    return line ~= nil or self.exit ~= nil
  end
  self._console_waits = self._console_waits + 1   -- timeout() wakes the loop once it is quiet
  local ok, err = self:_serve(found, timeout)
  self._console_waits = self._console_waits - 1
  if line then
    self._scan = after
    return line
  end
  if not ok and err then return nil, err end
  if self.exit then
    return nil, errors.new("closed", ("no console line matching %q: QEMU %s"):format(pattern, describe_exit(self.exit)))
  end
  return nil, errors.new("timeout", ("no console line matching %q within %g s"):format(pattern, timeout))
end

-- Serve the client's loop until done() or the timeout; true when done,
-- else false and the error that ended it early (interrupted), if any.
function Machine:_serve(done, timeout)
  if done() then return true end
  local vm = self.vm
  if not vm:closed() then
    local ok, err = vm:run({ timeout = timeout, done = function() return done() or vm:closed() end })
    if done() then return true end
    if not ok and err.kind ~= "closed" and err.kind ~= "timeout" then return false, err end
    if not vm:closed() then return false end
  end
  self:step()   -- the monitor is gone: look at the process itself
  return done(), nil
end

--- Wait until QEMU has exited: { status = n } or { signal = n } | nil, err
-- (kind "timeout", or "interrupted").  Served by the client's loop while
-- the monitor is up; after that, a bounded wait on the process itself.
function Machine:wait(timeout)
  errors.check_duration("qmp.machine: wait", "timeout", timeout, { optional = true, infinite = true })
  if self.exit then return self.exit end
  local t0 = monotime()
  local ok, err = self:_serve(function() return self.exit ~= nil end, timeout)
  if self.exit then return self.exit end
  if not ok and err then return nil, err end
  local left = timeout and math.max(0, timeout - (monotime() - t0)) or nil
  local exit, why = self._proc:wait(left)
  if exit then
    self:_exited(exit)
    return exit
  end
  if why then return nil, why end
  return nil, errors.new("timeout", ("QEMU (pid %d) still runs after %g s"):format(self.pid, timeout))
end

-- The ladder's steps: how each asks QEMU to go.
local STEPS = {
  { how = "powerdown", monitor = true, go = function(m, t) return m.vm:execute("system_powerdown", nil, { timeout = t }) end },
  { how = "quit", monitor = true, go = function(m, t) return m.vm:execute("quit", nil, { timeout = t }) end },
  { how = "sigterm", go = function(m) return m._proc:kill("TERM") end },
  { how = "sigkill", go = function(m) return m._proc:kill("KILL") end },
}

-- Walk the ladder from step first on, each step waiting timeout seconds.
function Machine:_ladder(first, timeout)
  for i = first, #STEPS do
    if self.exit then break end
    local step = STEPS[i]
    if not step.monitor or self.vm.state == "ready" then
      step.go(self, timeout)
      local exit, err = self:wait(i == #STEPS and math.max(timeout, EXIT_GRACE) or timeout)
      if exit then return { how = step.how, status = exit.status, signal = exit.signal } end
      if err and err.kind == "interrupted" and i < #STEPS then
        return nil, err
      end
    end
  end
  if self.exit then return { how = "exited", status = self.exit.status, signal = self.exit.signal } end
  return nil, errors.new("timeout", ("QEMU (pid %d) outlived SIGKILL"):format(self.pid))
end

--- Shut QEMU down: system_powerdown, then quit, then SIGTERM, then SIGKILL,
-- each step given timeout seconds (default 10) to end it.  How it ended:
-- { how = "powerdown" | "quit" | "sigterm" | "sigkill" | "exited", status =
-- or signal = } | nil, err (interrupted: the ladder stops there).
function Machine:shutdown(timeout)
  errors.check_duration("qmp.machine: shutdown", "timeout", timeout, { optional = true })
  self:step()   -- an exit that already happened is "exited", not a step's doing
  if self.exit then return { how = "exited", status = self.exit.status, signal = self.exit.signal } end
  return self:_ladder(1, timeout or LADDER)
end

--- Make sure QEMU is gone (quit, then SIGTERM, then SIGKILL, a short wait
-- each; at once SIGKILL when a signal is pending) and every fd closed.
-- How it ended, as shutdown() says it, the first time; nil after.
-- Idempotent; also <close>.  Collection of the machine kills QEMU too.
function Machine:close()
  if self._closed then return nil end
  self:step()   -- an exit that already happened is "exited", not a step's doing
  local before, ended = self.exit, nil   -- before: it had exited by itself
  if not before and self.vm then ended = self:_ladder(2, CLOSE_STEP) end
  self._closed = true
  self._proc:close()   -- SIGKILL and reap, if it still runs
  if not ended then
    local exit = before or self._proc:poll()
    if exit then
      self:_exited(exit)   -- the last of stderr and the console, and on_exit
      ended = { how = before and "exited" or "sigkill", status = exit.status, signal = exit.signal }
    end
  end
  if self.vm then
    self.vm:detach(self)
    self.vm:close()
  end
  for _, k in ipairs({ "monitor", "stderr", "console" }) do
    if self._fds[k] then self._fds[k]:close() end
  end
  self._poller:close()
  if self._console_log then self._console_log:close() end
  return ended
end
Machine.__close = Machine.close

function Machine:__tostring()
  local state = self.exit and describe_exit(self.exit) or (self._closed and "closed" or "running")
  return ("qmp.Machine (%s, pid %d, %s)"):format(self.binary, self.pid, state)
end

return new
