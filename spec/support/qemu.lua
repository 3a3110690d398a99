-- A real, throwaway QEMU for #qemu specs: a paused, empty x86 machine (-S,
-- TCG, no devices, no display) with a QMP unix socket for the spec to use.
--
--   local vm = qemu.start({ pretty = true })
--   ... connect to vm.sock ...
--   vm:stop()
--
-- QEMU is started through qmp.machine (vm.machine), which adds a monitor of
-- its own on a socketpair, keeps QEMU's stderr, learns its exit through a
-- pidfd and makes sure no QEMU outlives the spec process.  Nothing reads
-- that monitor between start and stop: QEMU queues what it would say there
-- (the events) in memory without waiting.  Its stderr is different: a pipe
-- that only log(), wait_exit() and stop() read, and QEMU blocks once 64 KiB
-- wait in it.  The specs' QEMUs write about 1 KiB at most; send the output
-- of -d or -trace to a file (-D path).
local qmp = require "qmp"
local proc = require "support.proc"
local tmp = require "support.tmp"

local M = {}

M.binary = "qemu-system-x86_64"

-- Seconds to wait for QEMU's monitors.
M.start_timeout = 10

function M.available()
  return os.execute(M.binary .. " --version >/dev/null 2>&1") == true
end

local VM = {}
VM.__index = VM

-- Machines not stopped yet, for stop_all().
local running = {}

-- QEMU's stderr and stdout so far; after stop(), all of it.
function VM:log()
  self.machine:step()   -- take in what the pipe holds now
  return self.machine:stderr()
end

function VM:alive()
  return proc.alive(self.pid)
end

-- Wait for QEMU to exit (e.g. after "quit"); true if it did.
function VM:wait_exit(timeout)
  return self.machine:wait(timeout or 5) ~= nil
end

-- Ends QEMU (machine:close(): quit, then SIGTERM, then SIGKILL) and removes
-- the directory if start() made it; in a caller's directory, QEMU's stderr
-- is left in qemu.log.  vm.ended says how QEMU went.  Idempotent.
function VM:stop()
  if self.stopped then return end
  self.stopped = true
  running[self] = nil
  self.ended = self.machine:close()
  if self.own_dir then
    tmp.remove(self.dir)
  else
    local f = io.open(self.dir .. "/qemu.log", "wb")   -- the spec may have removed the directory
    if f then
      f:write(self.machine:stderr())
      f:close()
    end
  end
end

-- opts.args: extra QEMU arguments (list)
-- opts.pretty: monitor with pretty=on (multi-line JSON) instead of -qmp
-- opts.qtest: also open a qtest socket (vm.qtest_sock)
-- opts.dir: directory for the sockets (default: a fresh temp dir)
-- vm.argv is the command line without qmp.machine's monitor: what a spec
-- runs to start the same QEMU again by hand.
function M.start(opts)
  opts = opts or {}
  local dir = opts.dir or tmp.dir("qemu")
  local vm = setmetatable({ dir = dir, own_dir = not opts.dir, sock = dir .. "/qmp.sock" }, VM)

  local args = { "-M", "pc", "-S", "-accel", "tcg",
    "-display", "none", "-nodefaults", "-no-user-config", "-m", "64" }
  local function add(...)
    for _, a in ipairs({ ... }) do args[#args + 1] = a end
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
  vm.argv = { M.binary, table.unpack(args) }

  local machine, err = qmp.machine({ binary = M.binary, args = args, timeout = M.start_timeout })
  if not machine then
    if vm.own_dir then tmp.remove(dir) end
    error("QEMU did not start (" .. table.concat(vm.argv, " ") .. "):\n" .. tostring(err), 2)
  end
  vm.machine, vm.pid = machine, machine.pid
  running[vm] = true
  -- QEMU listens on its sockets before it serves any monitor, so this is
  -- already true once qmp.machine has returned: a check, not a wait.
  local function ready()
    return proc.listening(vm.sock) and (not vm.qtest_sock or proc.listening(vm.qtest_sock))
  end
  proc.wait_until(function() return ready() or not vm:alive() end, M.start_timeout)
  if not (ready() and vm:alive()) then
    local log = vm:log()
    vm:stop()
    error("QEMU did not listen on " .. vm.sock .. " (" .. table.concat(vm.argv, " ") .. "):\n" .. log, 2)
  end
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
