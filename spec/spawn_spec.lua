-- core.spawn and qmp.Process: a child started with chosen fds and nothing
-- else, in its own process group, killed with its parent, reaped once;
-- core.socketpair, core.pipe and the qmp.Fd methods read, write, release.
local core = require "qmp.core"
local proc = require "support.proc"
local tmp = require "support.tmp"

local cleanup = require("support.cleanup")(after_each)

local PID = tonumber(io.open("/proc/self/stat"):read("l"):match("^(%d+)"))
local O_NONBLOCK, O_CLOEXEC = 0x800, 0x80000  -- as /proc/PID/fdinfo shows them (octal there)
local SIGPIPE_BIT = 1 << (13 - 1)              -- in /proc/PID/status signal masks

-- /proc flags of one of our fds, or nil when it is not open.
local function fd_flags(fd)
  local text = tmp.read("/proc/self/fdinfo/" .. fd)
  return text and tonumber(text:match("flags:%s*(%d+)"), 8)
end

-- The fd numbers this process has open (a listing by another process: the
-- pipe io.popen reads it through is among them).
local function open_fds()
  local p = assert(io.popen("ls /proc/" .. PID .. "/fd"))
  local list = {}
  for n in p:lines() do list[#list + 1] = tonumber(n) end
  p:close()
  return list
end

-- A field of /proc/PID/stat (1-based, counting the pid), or nil once it is gone.
local function stat_field(pid, n)
  local text = tmp.read("/proc/" .. pid .. "/stat")
  if not text then return nil end
  local fields = { pid, "comm" }
  for word in text:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = word end
  return fields[n]
end

-- A signal mask line of /proc/PID/status ("SigBlk", "SigPnd"...), as a number.
local function sigmask(status, name)
  return tonumber(status:match(name .. ":%s*(%x+)"), 16)
end

-- A process that cleanup makes sure is gone.
local function spawn(path, argv, fds, opts)
  local p, err = core.spawn(path, argv, fds or {}, opts)
  if p then cleanup(function() p:close() end) end
  return p, err
end

-- Everything fd gives until its end (bounded wait).
local function read_all(fd)
  local parts, deadline = {}, core.monotime() + TEST_TIMEOUT
  while true do
    local text, err = fd:read()
    if text then
      parts[#parts + 1] = text
    elseif text == false then
      assert(core.monotime() < deadline, "no end of file in time")
      core.wait_fd(fd:fileno(), "r", deadline - core.monotime())
    else
      assert.are.equal("closed", err.kind)
      assert.are.equal("end of file", err.message)
      return table.concat(parts)
    end
  end
end

-- Read from fd until what came holds a whole line (bounded wait).
local function read_line(fd)
  local got, deadline = "", core.monotime() + TEST_TIMEOUT
  while not got:find("\n") do
    local text, err = fd:read()
    assert(text ~= nil, err)
    if text then got = got .. text
    else
      assert(core.monotime() < deadline, "no line in time")
      core.wait_fd(fd:fileno(), "r", deadline - core.monotime())
    end
  end
  return got
end

-- A pipe whose read end the spec keeps; the write end is for a child.
local function pipe()
  local r, w = assert(core.pipe())
  cleanup(function() r:close(); w:close() end)
  return r, w
end

local function socketpair()
  local a, b = assert(core.socketpair())
  cleanup(function() a:close(); b:close() end)
  return a, b
end

describe("core.socketpair and core.pipe", function()
  it("give qmp.Fd ends, non-blocking and close-on-exec", function()
    local a, b = socketpair()
    local r, w = pipe()
    for _, fd in ipairs({ a, b, r, w }) do
      local flags = fd_flags(fd:fileno())
      assert.are.equal(O_NONBLOCK, flags & O_NONBLOCK)
      assert.are.equal(O_CLOEXEC, flags & O_CLOEXEC)
      assert.are.equal("qmp.Fd (fd=" .. fd:fileno() .. ")", tostring(fd))
    end
    assert.is_truthy(tmp.read("/proc/self/fdinfo/" .. a:fileno()))
  end)

  it("makes a pipe that holds 1 MiB where the kernel allows it (a child's stderr waits later)", function()
    local limit = tonumber(tmp.read("/proc/sys/fs/pipe-max-size") or "")
    local r, w = pipe()
    local chunk, held = ("x"):rep(4096), 0
    repeat
      local off = assert(w:write(chunk))
      held = held + off
    until off < #chunk
    if limit and limit >= 1 << 20 then
      assert.are.equal(1 << 20, held)
    else
      assert.is_true(held >= 4096, held)   -- the kernel's own size
    end
    r:close()
    w:close()
  end)
end)

describe("qmp.Fd", function()
  it("reads what is there, false when nothing is, and the end once the peer closes", function()
    local a, b = socketpair()
    assert.are.equal(false, b:read())
    assert.are.equal(5, a:write("hello"))
    assert.are.equal("he", b:read(2))
    assert.are.equal("llo", b:read())
    assert.are.equal(false, b:read())
    a:close()
    local text, err = b:read()
    assert.is_nil(text)
    assert.are.equal("closed", err.kind)
    assert.are.equal("end of file", err.message)
  end)

  it("raises for a max outside 1 byte to 1 MiB", function()
    local a = socketpair()
    assert.has_error(function() a:read(0) end)
    assert.has_error(function() a:read(1024 * 1024 + 1) end)
    assert.are.equal(false, a:read(1024 * 1024))
  end)

  it("writes from an offset, and only what the fd takes now", function()
    local a, b = socketpair()
    assert.are.equal(6, a:write("abcdef", 3))
    assert.are.equal("def", b:read())
    assert.has_error(function() a:write("abc", 4) end)
    assert.has_error(function() a:write("abc", -1) end)
    local big = string.rep("x", 8 * 1024 * 1024)
    local off = assert(a:write(big))
    assert.is_true(off > 0 and off < #big)
    assert.are.equal(off, a:write(big, off))   -- full: no progress, no wait
    local got = 0
    while true do
      local text = b:read(1024 * 1024)
      if not text then break end
      got = got + #text
    end
    assert.are.equal(off, got)
    assert.is_true(a:write(big, off) > off)
  end)

  it("reports a reader that is gone as closed, without SIGPIPE", function()
    local a, b = socketpair()
    b:close()
    local n, err = a:write("x")
    assert.is_nil(n)
    assert.are.equal("closed", err.kind)
    local r, w = pipe()
    r:close()
    n, err = w:write("x")   -- write(), not send(): SIGPIPE is blocked for it, then taken
    assert.is_nil(n)
    assert.are.equal("closed", err.kind)
    local status = tmp.read("/proc/self/status")
    assert.are.equal(0, sigmask(status, "SigPnd") & SIGPIPE_BIT)
    assert.are.equal(0, sigmask(status, "ShdPnd") & SIGPIPE_BIT)
    assert.are.equal(0, sigmask(status, "SigBlk") & SIGPIPE_BIT)
  end)

  it("says closed once closed, and raises when released twice", function()
    local a = socketpair()
    a:close()
    a:close()
    local text, err = a:read()
    assert.is_nil(text)
    assert.are.equal("closed", err.kind)
    assert.are.equal("closed", select(2, a:write("x")).kind)
    assert.has_error(function() a:release() end, "attempt to release a closed qmp.Fd")
  end)

  it("gives its fd up with release", function()
    local a = socketpair()
    local n = a:fileno()
    assert.are.equal(n, a:release())
    assert.are.equal(-1, a:fileno())
    assert.are.equal("qmp.Fd (closed)", tostring(a))
    a:close()
    collectgarbage()
    assert.is_true(core.isfd(n))    -- the object no longer owns it
    core.fdopen(n):close()
    assert.is_false(core.isfd(n))
  end)
end)

describe("core.spawn", function()
  it("runs a program with its output on a pipe, and tells its exit status", function()
    local r, w = pipe()
    local p = assert(spawn("sh", { "sh", "-c", "echo out; echo err >&2; exit 3" }, { [1] = w, [2] = w }))
    w:close()
    assert.are.equal("out\nerr\n", read_all(r))
    assert.are.same({ status = 3 }, p:wait(TEST_TIMEOUT))
    assert.are.same({ status = 3 }, p:poll())    -- kept: never reaped twice
    assert.are.equal(("qmp.Process (pid %d, exited status 3)"):format(p:pid()), tostring(p))
    assert.is_false(p:kill("TERM"))              -- reaped: its pid may be someone else's
  end)

  it("gives a socketpair end to the child at the fd number asked, in blocking mode", function()
    local near, far = socketpair()
    local p = assert(spawn("sh", { "sh", "-c", 'echo hello >&3; read x <&3; echo "got $x" >&3' },
                           { [3] = far }))
    far:close()
    assert.are.equal("hello\n", read_line(near))
    assert.are.equal(2, near:write("x\n"))
    assert.are.equal("got x\n", read_line(near))
    assert.are.same({ status = 0 }, p:wait(TEST_TIMEOUT))
  end)

  it("gives the child its fds in blocking mode, as programs expect", function()
    local r, w = pipe()
    local near, far = socketpair()
    local p = assert(spawn("sh", { "sh", "-c", "cat /proc/self/fdinfo/1 /proc/self/fdinfo/3" },
                           { [1] = w, [3] = far }))
    w:close()
    far:close()
    local flags = {}
    for octal in read_all(r):gmatch("flags:%s*(%d+)") do flags[#flags + 1] = tonumber(octal, 8) end
    assert.are.equal(2, #flags)
    assert.are.same({ 0, 0 }, { flags[1] & O_NONBLOCK, flags[2] & O_NONBLOCK })
    assert.are.same({ status = 0 }, p:wait(TEST_TIMEOUT))
    assert.are.equal(O_NONBLOCK, fd_flags(near:fileno()) & O_NONBLOCK)   -- the parent's end is another file
  end)

  it("gives the child nothing else this process has open", function()
    local file = assert(io.open(os.tmpname(), "w"))   -- io.open: not close-on-exec
    cleanup(function() file:close() end)
    local inherited = 0
    for _, n in ipairs(open_fds()) do
      local flags = fd_flags(n)
      if n > 2 and flags and flags & O_CLOEXEC == 0 then inherited = inherited + 1 end
    end
    assert.is_true(inherited > 0, "no fd without close-on-exec to prove anything with")
    local unmapped = socketpair()
    assert.is_true(unmapped:fileno() > 0)
    local r, w = pipe()
    local near, far = socketpair()
    local p = assert(spawn("ls", { "ls", "/proc/self/fd" }, { [1] = w, [5] = far }))
    w:close()
    local listed = {}
    for n in read_all(r):gmatch("%d+") do listed[#listed + 1] = tonumber(n) end
    table.sort(listed)
    -- 3 is ls's own, the directory it lists.
    assert.are.same({ 0, 1, 2, 3, 5 }, listed)
    assert.are.same({ status = 0 }, p:wait(TEST_TIMEOUT))
    near:close()
  end)

  it("gives fds whose numbers swap places without one overwriting the other", function()
    local a_near, a_far = socketpair()
    local b_near, b_far = socketpair()
    local na, nb = a_far:fileno(), b_far:fileno()
    assert.is_true(na < 32 and nb < 32)
    -- Child fd na is b_far, child fd nb is a_far.
    local p = assert(spawn("sh", { "sh", "-c", ("echo to-b >&%d; echo to-a >&%d"):format(na, nb) },
                           { [na] = b_far, [nb] = a_far }))
    a_far:close()
    b_far:close()
    assert.are.equal("to-a\n", read_all(a_near))
    assert.are.equal("to-b\n", read_all(b_near))
    assert.are.same({ status = 0 }, p:wait(TEST_TIMEOUT))
  end)

  it("puts stdin, stdout and stderr not given on /dev/null", function()
    local r, w = pipe()
    local p = assert(spawn("sh", { "sh", "-c", "readlink /proc/self/fd/0 /proc/self/fd/2 >&3" },
                           { [3] = w }))
    w:close()
    assert.are.equal("/dev/null\n/dev/null\n", read_all(r))
    assert.are.same({ status = 0 }, p:wait(TEST_TIMEOUT))
  end)

  it("puts the child in a process group of its own", function()
    local p = assert(spawn("sleep", { "sleep", "30" }))
    assert.are.equal(tostring(p:pid()), stat_field(p:pid(), 5))
    assert.are_not.equal(stat_field(PID, 5), stat_field(p:pid(), 5))
  end)

  it("ends a child killed with TERM: its pidfd is readable, then poll tells the signal", function()
    local p = assert(spawn("sleep", { "sleep", "30" }))
    assert.is_true(p:pidfd() >= 0)
    assert.are.equal(O_CLOEXEC, fd_flags(p:pidfd()) & O_CLOEXEC)
    assert.is_nil(p:poll())
    assert.are.same({}, core.poll({ p:pidfd() }, 0))
    assert.are.equal(("qmp.Process (pid %d, running)"):format(p:pid()), tostring(p))
    assert.is_true(p:kill("TERM"))
    assert.are.same({ 1 }, core.poll({ p:pidfd() }, TEST_TIMEOUT))
    assert.are.same({ signal = 15, core = false }, p:poll())
    assert.are.equal(("qmp.Process (pid %d, killed by signal 15)"):format(p:pid()), tostring(p))
    assert.is_nil(tmp.read("/proc/" .. p:pid() .. "/stat"))   -- reaped: no zombie
  end)

  it("takes signals by name or number, and raises for others", function()
    local p = assert(spawn("sleep", { "sleep", "30" }))
    assert.has_error(function() p:kill("USR9") end)
    assert.has_error(function() p:kill(-1) end)
    assert.has_error(function() p:kill(1.5) end)
    assert.is_true(p:kill(9))
    assert.are.same({ signal = 9, core = false }, p:wait(TEST_TIMEOUT))
    assert.is_false(p:kill("SIGKILL"))
  end)

  it("returns nil from wait once the timeout passes on a running child", function()
    local p = assert(spawn("sleep", { "sleep", "30" }))
    local t0 = core.monotime()
    assert.is_nil(p:wait(0.2))
    local took = core.monotime() - t0
    assert.is_true(took >= 0.19 and took < 2, ("took %.3f s"):format(took))
    assert.is_nil(p:wait(0))
  end)

  it("ends a wait with kind interrupted when a caught signal comes", function()
    local p = assert(spawn("sleep", { "sleep", "30" }))
    assert(core.catch_signals({ "HUP" }))
    cleanup(function()
      core.take_signal()
      core.release_signals()
    end)
    os.execute(("(sleep 0.2; kill -HUP %d) >/dev/null 2>&1 &"):format(PID))
    local t0 = core.monotime()
    local exit, err = p:wait(TEST_TIMEOUT)
    assert.is_nil(exit)
    assert.are.equal("interrupted", err.kind)
    assert.are.equal("SIGHUP", err.signal)
    assert.is_true(core.monotime() - t0 < 5)
    assert.is_nil(p:poll())   -- the child was not the one signalled
  end)

  it("kills and reaps a running child on close, and closes the pidfd", function()
    local p = assert(spawn("sleep", { "sleep", "30" }))
    local pid, pidfd = p:pid(), p:pidfd()
    p:close()
    assert.is_nil(tmp.read("/proc/" .. pid .. "/stat"))
    assert.is_nil(fd_flags(pidfd))
    assert.are.equal(-1, p:pidfd())
    assert.are.same({ signal = 9, core = false }, p:poll())
    assert.are.same({ signal = 9, core = false }, p:wait(0))
    p:close()
  end)

  it("fails with kind launch, without forking, for a program not in PATH", function()
    local p, err = core.spawn("qmp-no-such-program", { "qmp-no-such-program" }, {})
    assert.is_nil(p)
    assert.are.equal("launch", err.kind)
    assert.are.equal("cannot run qmp-no-such-program: No such file or directory", err.message)
  end)

  it("fails with kind launch when the exec fails, and leaves no child", function()
    local p, err = core.spawn("/nonexistent/qmp-prog", { "qmp-prog" }, {})
    assert.is_nil(p)
    assert.are.equal("launch", err.kind)
    assert.are.equal("cannot run /nonexistent/qmp-prog: No such file or directory", err.message)
    local path = os.tmpname()   -- mode 0600: no execute bit, not even for root
    cleanup(function() os.remove(path) end)
    tmp.write(path, "#!/bin/sh\nexit 0\n")
    p, err = core.spawn(path, { "x" }, {})
    assert.is_nil(p)
    assert.are.equal("launch", err.kind)
    assert.are.equal("cannot run " .. path .. ": Permission denied", err.message)
    collectgarbage()
    assert.are.equal("", (tmp.read(("/proc/%d/task/%d/children"):format(PID, PID)) or ""))
  end)

  it("raises for arguments that are not what it takes", function()
    local _, w = pipe()
    local closed = pipe()
    closed:close()
    for _, case in ipairs({
      { "", { "x" }, {} },
      { "a\0b", { "x" }, {} },
      { "sh", {}, {} },
      { "sh", { "sh", 5 }, {} },
      { "sh", { "sh", "a\0b" }, {} },
      { "sh", { "sh" }, { [32] = w } },
      { "sh", { "sh" }, { [-1] = w } },
      { "sh", { "sh" }, { x = w } },
      { "sh", { "sh" }, { [1] = 1 } },
      { "sh", { "sh" }, { [1] = closed } },
      { "sh", { "sh" }, {}, { timeout = 1 } },
    }) do
      assert.has_error(function() core.spawn(table.unpack(case, 1, 4)) end)
    end
  end)

  it("resets the signal mask and dispositions the caller had", function()
    -- A caller that ignores HUP (the shell's trap) spawns cat, which shows its own.
    local script = os.tmpname()
    cleanup(function() os.remove(script) end)
    tmp.write(script, [[
      package.cpath = "./?.so;" .. package.cpath
      local core = require "qmp.core"
      local r, w = assert(core.pipe())
      local p = assert(core.spawn("cat", { "cat", "/proc/self/status" }, { [1] = w }))
      w:close()
      assert(p:wait(10))
      core.wait_fd(r:fileno(), "r", 10)
      local parts = {}
      repeat local t = r:read() if t then parts[#parts + 1] = t end until not t
      io.write(table.concat(parts))
    ]])
    local ok, out = proc.run("sh -c 'trap \"\" HUP; exec lua5.4 " .. script .. "'")
    assert.are.equal(0, ok, out)
    assert.are.equal(0, sigmask(out, "SigBlk"))
    assert.are.equal(0, sigmask(out, "SigIgn"))
  end)

  it("dies with the process that spawned it (PR_SET_PDEATHSIG)", function()
    local script = os.tmpname()
    cleanup(function() os.remove(script) end)
    tmp.write(script, [[
      package.cpath = "./?.so;" .. package.cpath
      local core = require "qmp.core"
      local p = assert(core.spawn("sleep", { "sleep", "30" }, {}))
      io.write(p:pid(), "\n")
      io.flush()
      os.exit(0)   -- no close, no collection: as if it crashed
    ]])
    local f = assert(io.popen("lua5.4 " .. script))
    local pid = tonumber(f:read("l"))
    f:close()
    assert.is_number(pid)
    cleanup(function() proc.kill(pid, "KILL") end)
    assert.is_true(proc.wait_exit(pid, TEST_TIMEOUT), "the child outlived its parent")
  end)

  it("leaves no fd and no child after 100 spawns and closes", function()
    collectgarbage()
    local before = #open_fds()
    local pids = {}
    for i = 1, 100 do
      local r, w = assert(core.pipe())
      local p = assert(core.spawn("sleep", { "sleep", "30" }, { [1] = w, [2] = w }))
      w:close()
      pids[i] = p:pid()
      if i % 2 == 0 then assert.is_true(p:kill("TERM")) end
      p:close()
      r:close()
    end
    collectgarbage()
    assert.are.equal(before, #open_fds())
    for _, pid in ipairs(pids) do assert.is_nil(tmp.read("/proc/" .. pid .. "/stat")) end
    assert.are.equal("", (tmp.read(("/proc/%d/task/%d/children"):format(PID, PID)) or ""))
  end)
end)
