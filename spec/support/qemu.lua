-- A real, throwaway QEMU for #qemu specs and the demo: a paused, empty
-- x86 machine (-S, TCG, no devices, no display) with a QMP unix socket.
--
--   local vm = qemu.start({ pretty = true })
--   ... connect to vm.sock ...
--   vm:stop()
local proc = require "support.proc"
local tmp = require "support.tmp"

local M = {}

M.binary = "qemu-system-x86_64"

-- Seconds to wait for the monitor socket.
M.start_timeout = 10

function M.available()
  return os.execute(M.binary .. " --version >/dev/null 2>&1") == true
end

local VM = {}
VM.__index = VM

-- Machines not stopped yet, for stop_all().
local running = {}

function VM:log()
  return tmp.read(self.dir .. "/qemu.log") or ""
end

function VM:alive()
  return proc.alive(self.pid)
end

-- Wait for QEMU to exit (e.g. after "quit"); true if it did.
function VM:wait_exit(timeout)
  return proc.wait_exit(self.pid, timeout or 5)
end

-- TERM, then KILL after 5 s; removes the directory if start() made it.
-- Idempotent.
function VM:stop()
  if self.stopped then return end
  self.stopped = true
  running[self] = nil
  proc.terminate(self.pid, 5)
  if self.own_dir then tmp.remove(self.dir) end
end

-- opts.args: extra QEMU arguments (list)
-- opts.pretty: monitor with pretty=on (multi-line JSON) instead of -qmp
-- opts.qtest: also open a qtest socket (vm.qtest_sock)
-- opts.dir: directory for sockets and the log (default: a fresh temp dir)
function M.start(opts)
  opts = opts or {}
  local dir = opts.dir or tmp.dir("qemu")
  local vm = setmetatable({ dir = dir, own_dir = not opts.dir, sock = dir .. "/qmp.sock" }, VM)

  local argv = { M.binary, "-M", "pc", "-S", "-accel", "tcg",
    "-display", "none", "-nodefaults", "-no-user-config", "-m", "64" }
  local function add(...)
    for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
  end
  if opts.pretty then
    add("-chardev", "socket,id=qmp0,path=" .. vm.sock .. ",server=on,wait=off",
      "-mon", "chardev=qmp0,mode=control,pretty=on")
  else
    add("-qmp", "unix:" .. vm.sock .. ",server=on,wait=off")
  end
  if opts.qtest then
    vm.qtest_sock = dir .. "/qtest.sock"
    add("-qtest", "unix:" .. vm.qtest_sock .. ",server=on,wait=off")
  end
  add(table.unpack(opts.args or {}))
  vm.argv = argv

  vm.pid = proc.spawn(argv, dir .. "/qemu.log")
  local function ready()
    return proc.listening(vm.sock) and (not vm.qtest_sock or proc.listening(vm.qtest_sock))
  end
  proc.wait_until(function() return ready() or not vm:alive() end, M.start_timeout)
  if not (ready() and vm:alive()) then
    local log = vm:log()
    vm:stop()
    error("QEMU did not start (" .. table.concat(argv, " ") .. "):\n" .. log, 2)
  end
  running[vm] = true
  return vm
end

-- A machine with a second monitor (qmp2.sock) and a client on it, through
-- which a spec causes events while the command under test holds the first.
-- cleanup(fn) registers what ends them (support.cleanup); dir as for start
-- (default: a fresh one, removed by cleanup).  Returns vm, mon.
function M.with_monitor(cleanup, dir)
  if dir == nil then
    dir = tmp.dir("qemu2")
    cleanup(function() tmp.remove(dir) end)
  end
  local second = dir .. "/qmp2.sock"
  local machine = M.start({ dir = dir, args = { "-qmp", "unix:" .. second .. ",server=on,wait=off" } })
  cleanup(function() machine:stop() end)
  assert(proc.wait_until(function() return proc.listening(second) end, 10), "no second monitor")
  local mon = assert(require("qmp").connect(second, { timeout = 10, name = "spec" }))
  cleanup(function() mon:close() end)
  return machine, mon
end

-- Stop every machine a spec forgot (the spec helper calls this after each file).
function M.stop_all()
  for vm in pairs(running) do vm:stop() end
end

return M
