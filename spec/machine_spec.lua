-- qmp.machine on real QEMU: a launch and its end (no process, zombie or fd
-- left), a QEMU that cannot start, the console of a guest that writes to
-- its serial port (a boot sector built here), the shutdown ladder, QEMU
-- killed under a wait, and a machine living in qmp.loop beside others.
local qmp = require "qmp"
local core = require "qmp.core"
local qemu = require "support.qemu"
local proc = require "support.proc"
local tmp = require "support.tmp"
local boot_sector = require "support.boot_sector"

local cleanup = require("support.cleanup")(after_each)

local PID = tonumber(io.open("/proc/self/stat"):read("l"):match("^(%d+)"))
local EMPTY = { "-machine", "none", "-display", "none", "-nodefaults" }   -- starts in tens of ms

-- The fd numbers this process has open, in order, asked of the kernel fd
-- by fd (no pipe to a lister that would itself take a number); objects
-- already dropped are collected first, so that only leaks remain.
local function open_fds()
  collectgarbage("collect")
  collectgarbage("collect")
  local core, list = require "qmp.core", {}
  for fd = 0, 4095 do
    if core.isfd(fd) then list[#list + 1] = fd end
  end
  return list
end

-- The pids of this process's children, from every thread's children list.
local function children()
  local p = assert(io.popen("ls /proc/" .. PID .. "/task"))
  local tasks = {}
  for tid in p:lines() do tasks[#tasks + 1] = tid end
  p:close()   -- ls is reaped here: it is no child below
  local list = {}
  for _, tid in ipairs(tasks) do
    for pid in (tmp.read(("/proc/%d/task/%s/children"):format(PID, tid)) or ""):gmatch("%d+") do
      list[#list + 1] = tonumber(pid)
    end
  end
  return list
end

-- Whether pid exists at all (a zombie does).
local function exists(pid)
  return tmp.read("/proc/" .. pid .. "/stat") ~= nil
end

-- A machine that cleanup closes.
local function launch(opts)
  local m, err = qmp.machine(opts)
  if m then cleanup(function() m:close() end) end
  return m, err
end

describe("qmp.machine #qemu", function()
  it("launches QEMU, runs a command, and close leaves no process and no fd", function()
    local before = open_fds()
    local m = assert(qmp.machine({ args = EMPTY }))
    local pid = m.pid
    assert.is_true(math.type(pid) == "integer" and proc.alive(pid))
    assert.are.equal("running", assert(m.vm:execute("query-status")).status)
    assert.are.equal(("qmp.Machine (qemu-system-x86_64, pid %d, running)"):format(pid), tostring(m))
    assert.is_true(#open_fds() > #before, "the machine holds fds while it runs")
    local ended = m:close()
    assert.are.equal("quit", ended.how)
    assert.are.equal(0, ended.status)
    assert.is_false(exists(pid), "QEMU was reaped")
    assert.is_true(m.vm:closed())
    assert.same(before, open_fds())
    assert.same({}, children())
    assert.is_nil(m:close())   -- only the first close says how it ended
    assert.are.equal(("qmp.Machine (qemu-system-x86_64, pid %d, exited with status 0)"):format(pid), tostring(m))
  end)

  it("a bad argument: a launch error quoting QEMU and its exit status", function()
    local before = open_fds()
    local m, err = qmp.machine({ args = { "-no-such-option" } })
    assert.is_nil(m)
    assert.are.equal("launch", err.kind)
    assert.matches("-no-such-option: invalid option", err.message, 1, true)
    assert.matches("exited with status 1", err.message, 1, true)
    assert.are.equal(1, err.exit.status)
    assert.matches("-no-such-option: invalid option", err.stderr, 1, true)
    assert.same(before, open_fds())
    assert.same({}, children())
  end)

  it("a bad argument without waiting: the client closes saying how QEMU ended, stderr holds why", function()
    local m = assert(launch({ args = { "-no-such-option" }, wait = false }))
    local _, err = m.vm:run({ timeout = 10 })
    assert.are.equal("closed", err.kind)
    assert.matches("exited with status 1", err.message, 1, true)
    assert.are.equal(1, assert(m:wait(10)).status)
    assert.matches("-no-such-option: invalid option", m:stderr(), 1, true)
  end)

  it("a missing binary: a launch error", function()
    local before = open_fds()
    local m, err = qmp.machine({ binary = "/nonexistent/qemu", args = EMPTY })
    assert.is_nil(m)
    assert.are.equal("launch", err.kind)
    assert.matches("/nonexistent/qemu", err.message, 1, true)
    assert.same(before, open_fds())
    assert.same({}, children())
  end)

  it("calls on_exit once with the exit; wait after it returns at once; tostring shows the state", function()
    local m = assert(launch({ args = EMPTY }))
    local calls = {}
    m.on_exit = function(exit, machine) calls[#calls + 1] = { exit = exit, machine = machine } end
    assert(m.vm:execute("quit"))
    local exit = assert(m:wait(5))
    assert.are.equal(0, exit.status)
    assert.are.equal(1, #calls)
    assert.are.equal(exit, calls[1].exit)
    assert.are.equal(m, calls[1].machine)
    assert.are.equal(exit, m.exit)
    local t0 = qmp.monotime()
    assert.are.equal(exit, m:wait())
    assert.are.equal(exit, m:wait(10))
    assert.are.equal(exit, m:wait(0))
    assert.is_true(qmp.monotime() - t0 < 0.1)
    assert.same({ how = "exited", status = 0 }, m:shutdown())
    assert.same({ how = "exited", status = 0 }, m:close())
    assert.are.equal(1, #calls)
    assert.matches("pid %d+, exited with status 0%)$", tostring(m))
  end)
end)

describe("qmp.machine's console #qemu", function()
  local dir, image
  -- Lines ending in CRLF and LF, then a prompt without its newline.
  local TEXT = "first line\r\nsecond line\nthird\nlogin: "

  setup(function()
    dir = tmp.dir("machine")
    image = boot_sector.image(dir .. "/serial.img", { serial = TEXT })
  end)
  teardown(function() tmp.remove(dir) end)

  it("console_wait finds each line in order, then the prompt; a line that never comes times out", function()
    local m = assert(launch({ args = boot_sector.args(image), console = true }))
    assert.are.equal("first line", m:console_wait("line", 10))
    assert.are.equal("second line", m:console_wait("line", 10))   -- after the last match
    assert.are.equal("third", m:console_wait("^%a+$", 10))
    assert.are.equal("login: ", m:console_wait("^login: $", 10))
    local t0 = qmp.monotime()
    local line, err = m:console_wait("never printed", 0.5)
    local took = qmp.monotime() - t0
    assert.is_nil(line)
    assert.are.equal("timeout", err.kind)
    assert.is_true(took >= 0.45 and took < 2, took)
    line, err = m:console_wait("first", 0.3)   -- already matched past it
    assert.is_nil(line)
    assert.are.equal("timeout", err.kind)
    local text, dropped = m:console()
    assert.are.equal(TEXT, text)
    assert.are.equal(0, dropped)
  end)

  it("writes console_log with mode 0600", function()
    local log = dir .. "/console.log"
    local m = assert(launch({ args = boot_sector.args(image), console = true, console_log = log }))
    assert.are.equal("login: ", m:console_wait("^login: $", 10))
    assert.are.equal(TEXT, tmp.read(log))
    assert.are.equal("600", tmp.mode(log))
    m:close()
    assert.are.equal(TEXT, tmp.read(log))
  end)

  it("keeps the latest console_max bytes and counts those dropped", function()
    local m = assert(launch({ args = boot_sector.args(image), console = true, console_max = 16 }))
    assert.are.equal("login: ", m:console_wait("^login: $", 10))
    local text, dropped = m:console()
    assert.are.equal(TEXT:sub(-16), text)
    assert.are.equal(#TEXT - 16, dropped)
  end)
end)

describe("qmp.machine's shutdown ladder #qemu", function()
  local dir, image

  setup(function()
    dir = tmp.dir("machine")
    image = boot_sector.image(dir .. "/halt.img", { serial = "halted\n" })
  end)
  teardown(function() tmp.remove(dir) end)

  -- A guest without an OS: it runs the boot sector, then halts for good.
  local function halted_guest()
    local m = assert(launch({ args = boot_sector.args(image), console = true }))
    assert.are.equal("halted", m:console_wait("halted", 10))
    return m
  end

  it("a guest that ignores system_powerdown is ended by quit within its timeouts", function()
    local m = halted_guest()
    local t0 = qmp.monotime()
    local ended = assert(m:shutdown(1))
    local took = qmp.monotime() - t0
    assert.same({ how = "quit", status = 0 }, ended)
    assert.is_true(took >= 0.9 and took < 2.5, took)   -- powerdown's second, then quit at once
    assert.are.equal(0, m.exit.status)
    assert.is_false(exists(m.pid))
  end)

  it("without a monitor, the ladder goes on to SIGTERM", function()
    local m = halted_guest()
    m.vm:close()
    local t0 = qmp.monotime()
    local ended = assert(m:shutdown(1))
    assert.are.equal("sigterm", ended.how)
    assert.are.equal(0, ended.status)   -- QEMU shuts down in order on SIGTERM
    assert.is_true(qmp.monotime() - t0 < 1.5)
    assert.matches("terminating on signal 15", m:stderr(), 1, true)
    assert.is_false(exists(m.pid))
  end)

  it("a QEMU deaf to SIGTERM too (stopped) is ended by SIGKILL", function()
    local m = halted_guest()
    m.vm:close()
    proc.kill(m.pid, "STOP")   -- SIGTERM stays pending; SIGKILL still ends it
    local t0 = qmp.monotime()
    local ended = assert(m:shutdown(0.5))
    assert.are.equal("sigkill", ended.how)
    assert.are.equal(9, ended.signal)
    assert.is_true(qmp.monotime() - t0 < 2)
    assert.is_false(exists(m.pid))
  end)
end)

describe("qmp.machine when QEMU is killed #qemu", function()
  -- The message a client's error carries once QEMU died of SIGKILL.
  local function killed(m) return ("(QEMU (pid %d) killed by signal 9)"):format(m.pid) end

  -- Run fn in a coroutine whose client waits yield (opts.client.waiter):
  -- kill QEMU once fn is parked in its wait, then drive it to its end.
  -- fn's results.
  local function killed_while_parked(m, fn)
    local co = coroutine.create(fn)
    local res = table.pack(coroutine.resume(co))
    assert(res[1], res[2])
    assert.are.equal("suspended", coroutine.status(co), "fn did not wait")
    proc.kill(m.pid, "KILL")
    local deadline = qmp.monotime() + 5
    while coroutine.status(co) ~= "dead" do
      assert(qmp.monotime() < deadline, "the wait did not end after the kill")
      local fd, mode, timeout = res[2], res[3], res[4]
      if fd then core.wait_fd(fd, mode, math.min(timeout or 1, 1)) end
      res = table.pack(coroutine.resume(co))
      assert(res[1], res[2])
    end
    return table.unpack(res, 2, res.n)
  end

  -- A machine whose client, inside a coroutine, yields its waits to the spec.
  local function parkable()
    local function waiter(fd, mode, timeout) coroutine.yield(fd, mode, timeout) end
    return assert(launch({ args = EMPTY, client = { waiter = waiter } }))
  end

  it("under vm:wait: the wait ends with a closed error saying so, and m:wait gives the signal", function()
    local m = parkable()
    local t0 = qmp.monotime()
    local ev, err = killed_while_parked(m, function() return m.vm:wait("BLOCK_JOB_COMPLETED", 10) end)
    assert.is_nil(ev)
    assert.is_true(qmp.monotime() - t0 < 3)
    assert.are.equal("closed", err.kind)
    local exit = assert(m:wait())
    assert.are.equal(9, exit.signal)
    assert.is_nil(exit.status)
    local _, later = m.vm:execute("query-status")
    assert.are.equal("closed", later.kind)
    assert.matches(killed(m), later.message, 1, true)
    local ended = m:close()
    assert.are.equal("exited", ended.how)
    assert.are.equal(9, ended.signal)
    -- Last: the wait's own error, as the commands' says it (vm:wait, vm:run
    -- and loops end with the client's end error, not the commands').
    assert.matches(killed(m), err.message, 1, true)
  end)

  it("under vm:execute: the command fails with a closed error saying so", function()
    local m = parkable()
    proc.kill(m.pid, "STOP")   -- no answer can come before the kill
    local result, err = killed_while_parked(m, function() return m.vm:execute("query-status", nil, { timeout = 10 }) end)
    assert.is_nil(result)
    assert.are.equal("closed", err.kind)
    assert.matches(killed(m), err.message, 1, true)
    assert.are.equal(9, assert(m:wait()).signal)
  end)

  it("under a command in flight: its callback gets the closed error", function()
    local m = assert(launch({ args = EMPTY }))
    proc.kill(m.pid, "STOP")   -- no answer can come before the kill
    local got
    assert(m.vm:send("query-status", function(result, err) got = { result = result, err = err } end))
    m.vm:after(0.2, function() proc.kill(m.pid, "KILL") end)
    assert(m.vm:run({ timeout = 5, done = function() return got ~= nil end }))
    assert.is_nil(got.result)
    assert.are.equal("closed", got.err.kind)
    assert.matches(killed(m), got.err.message, 1, true)
    assert.are.equal(9, assert(m:wait()).signal)
  end)

  it("under m:wait(10): it returns the signal at once", function()
    local m = assert(launch({ args = EMPTY }))
    m.vm:after(0.2, function() proc.kill(m.pid, "KILL") end)
    local t0 = qmp.monotime()
    local exit = assert(m:wait(10))
    local took = qmp.monotime() - t0
    assert.are.equal(9, exit.signal)
    assert.is_true(took >= 0.15 and took < 2, took)
    assert.is_false(exists(m.pid))
  end)
end)

describe("qmp.machine dropped without close #qemu", function()
  it("has its QEMU killed and reaped by the garbage collector", function()
    local pid
    do
      local m = assert(qmp.machine({ args = EMPTY }))
      pid = m.pid
      assert(m.vm:execute("query-status"))
    end
    collectgarbage("collect")
    collectgarbage("collect")
    assert.is_false(exists(pid))
    assert.same({}, children())
  end)
end)

describe("qmp.machine launched and closed 100 times #qemu", function()
  it("leaves no process, zombie or fd", function()
    local before = open_fds()
    local pids, kept = {}, {}   -- kept: a leak is not hidden by collection
    for i = 1, 100 do
      local m <close> = assert(qmp.machine({ args = EMPTY }))
      pids[i], kept[i] = m.pid, m
      if i % 10 == 0 then assert(m.vm:execute("query-status")) end
      if i % 2 == 0 then m:close() end   -- the others by <close>
    end
    for i, pid in ipairs(pids) do
      assert.is_false(exists(pid), ("launch %d: pid %d is still there"):format(i, pid))
    end
    assert.same({}, children())
    assert.same(before, open_fds())
  end)
end)

describe("qmp.machine in qmp.loop #qemu", function()
  it("starts and stops while other clients' events flow; on_exit fires in the loop", function()
    -- Two more QEMUs, paused; a timer on each toggles it (cont, stop...):
    -- each answered toggle is one RESUME or STOP event.
    local others, loop = {}, qmp.loop()
    cleanup(function() loop:close() end)
    for k = 1, 2 do
      local q = qemu.start()
      cleanup(function() q:stop() end)
      local vm = assert(qmp.connect(q.sock, { timeout = 10, name = "other" .. k }))
      cleanup(function() vm:close() end)
      local o = { vm = vm, answered = 0, failed = 0, events = 0, during = 0, running = false,
                  busy = false, toggling = true }
      others[k] = o
      local function toggle()
        if not o.toggling then return end
        if not o.busy then
          o.busy = true
          assert(vm:send(o.running and "stop" or "cont", function(_, err)
            if err then o.failed = o.failed + 1 end
            o.running, o.busy, o.answered = not o.running, false, o.answered + 1
          end))
        end
        vm:after(0.01, toggle)
      end
      vm:after(0, toggle)
      loop:add(vm)
    end
    local m, exit_in_loop, calls, in_run = nil, nil, 0, false
    loop:on({ "STOP", "RESUME" }, function(_, vm)
      for _, o in ipairs(others) do
        if o.vm == vm then
          o.events = o.events + 1
          if m and not m.exit then o.during = o.during + 1 end
        end
      end
    end)
    -- Launch once both others flow, without waiting for it (the loop
    -- negotiates it while the others go on); quit it a little later.
    local started_during = nil   -- the others' events while it started
    others[1].vm:after(0.2, function()
      m = assert(launch({ args = EMPTY, wait = false }))
      assert.are_not.equal("ready", m.vm.state)   -- not negotiated yet: the loop does that
      local before = others[1].events + others[2].events
      m.on_exit = function(exit)
        calls = calls + 1
        exit_in_loop = in_run and exit
      end
      m.vm:on("qmp.connected", function()
        started_during = others[1].events + others[2].events - before
        m.vm:after(0.3, function() assert(m.vm:send("quit", function() end)) end)
      end)
      loop:add(m.vm)
    end)
    in_run = true
    local ok, err = loop:run({ timeout = 10, done = function()
      return m and m.exit and others[1].events >= 60 and others[2].events >= 60
    end })
    in_run = false
    assert(ok, err)
    assert.are.equal(1, calls)
    assert.is_not_nil(started_during, "the machine was negotiated in the loop")
    assert.is_truthy(exit_in_loop, "on_exit ran inside loop:run")
    assert.are.equal(0, exit_in_loop.status)
    assert.is_false(exists(m.pid))
    -- Every answered toggle's event came, also while the machine lived.
    for _, o in ipairs(others) do o.toggling = false end
    assert(loop:run({ timeout = 5, done = function()
      for _, o in ipairs(others) do
        if o.busy or o.events ~= o.answered then return false end
      end
      return true
    end }))
    for _, o in ipairs(others) do
      assert.are.equal(0, o.failed)
      assert.is_true(o.during >= 5, ("%s: %d events while the machine lived"):format(o.vm.name, o.during))
    end
  end)
end)
