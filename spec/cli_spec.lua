-- The qmp-lua command end to end: bin/qmp-lua run as a child process from
-- the checkout, its stdout, stderr and exit status checked.  The #qemu
-- tests drive a real QEMU with two monitors: the command under test talks to
-- the first, the spec causes events through the second.
local qmp = require "qmp"
local qemu = require "support.qemu"
local proc = require "support.proc"
local tmp = require "support.tmp"
local socket = require "socket"

local cleanup = require("support.cleanup")(after_each)

local COMMANDS = { "shell", "events", "exec", "run", "job", "record", "mux", "launch", "completion" }

-- {==================== running qmp-lua

local runner = require("support.qmp_lua").new("cli", cleanup)
local qmp_lua, background, scratch = runner.run, runner.background, runner.scratch
local command_line, lines = runner.command_line, runner.lines
local LIMIT = runner.LIMIT   -- seconds any qmp-lua child may take before `timeout` ends it

-- }==================== running qmp-lua

-- {==================== QEMU and events

-- A throwaway QEMU with a second monitor: machine, and `mon`, a client on
-- that second monitor for the spec's own commands.
local function vm_with_two_monitors(dir) return qemu.with_monitor(cleanup, dir) end

-- One event (RESUME or STOP) through mon: cont a stopped VM, stop a running one.
local function toggle(mon)
  local status = assert(mon:execute("query-status"))
  assert(mon:execute(status.running and "stop" or "cont"))
end

-- Cause events with cause() until done() holds.  A watcher started in the
-- background says nothing when it is ready, so the first events may come
-- before it listens: cause them again until it has seen enough.
local function cause_until(cause, done, seconds)
  local deadline = socket.gettime() + (seconds or 10)
  repeat
    cause()
    if proc.wait_until(done, 0.3) then return true end
  until socket.gettime() > deadline
  return false
end

local function ended(bg) return function() return bg:status() ~= nil end end

-- A predicate: bg's output has pattern (plain: a plain text).
local function shows(bg, pattern, plain)
  return function() return bg:out():find(pattern, 1, plain) ~= nil end
end

-- }==================== QEMU and events

teardown(runner.remove)

describe("qmp-lua usage", function()
  it("alone shows the overview, every command and the exit codes, status 64", function()
    local out, _, status = qmp_lua()
    assert.equal(64, status)
    assert.matches("^usage: qmp%-lua COMMAND", out)
    for _, name in ipairs(COMMANDS) do assert.matches("\n  " .. name .. " ", out) end
    assert.matches("64   bad usage", out)
    assert.matches("130 SIGINT", out)
  end)

  it("--help shows the overview, status 0", function()
    local out, _, status = qmp_lua("--help")
    assert.equal(0, status)
    assert.matches("^usage: qmp%-lua COMMAND", out)
  end)

  for _, name in ipairs(COMMANDS) do
    it(name .. " --help describes it, status 0", function()
      local out, err, status = qmp_lua(name, "--help")
      assert.equal(0, status, err)
      assert.equal("usage: qmp-lua " .. name .. " ", out:sub(1, #name + 16))
      assert.matches("\noptions:\n", out)
      assert.matches("%-%-help", out)
      assert.matches("exit status:", out)
      assert.equal("", err)
    end)
  end

  it("an unknown option is named, status 64", function()
    local out, err, status = qmp_lua("exec", "--bogus", "/nowhere", "query-status")
    assert.equal(64, status)
    assert.equal("", out)
    assert.matches("unknown option %-%-bogus", err)
  end)

  it("job lists whatever a malformed query-jobs holds, one plain line a job, status 0", function()
    local fake = require "support.fake_qmp"
    local srv = fake.serve(fake.opening({
      { expect = "query-jobs", reply = fake.reply('[5, {"id": "a\\nb", "type": {}, "status": "running",'
                                                  .. ' "current-progress": "x", "total-progress": 10}]') },
      { wait_close = true } }), cleanup)
    local out, err, status = qmp_lua("job", srv.path)
    assert.equal(0, status, err)
    assert.equal("a\\nb  ?  running  0.0%  0 B of 10 B\n", out)
  end)

  it("an unknown command is named, status 64", function()
    local out, err, status = qmp_lua("frobnicate", "x")
    assert.equal(64, status)
    assert.equal("", out)
    assert.matches('unknown command "frobnicate"', err)
  end)

  it("events with a refused address: one line and status 2, with --follow as without", function()
    -- In an empty network namespace, so nothing can leave the machine even if the refusal broke.
    for _, follow in ipairs({ "", "--follow " }) do
      local err = scratch("err")
      local _, _, status = os.execute(("unshare -n %s </dev/null >/dev/null 2>%s")
        :format(command_line({ "events" }) .. " " .. follow .. "192.0.2.1:4444", err))
      local text = tmp.read(err)
      if status ~= 2 and text:match("unshare") then
        pending("cannot create a network namespace here: " .. text)
        return
      end
      assert.equal(2, status, text)
      assert.equal("qmp-lua: 192.0.2.1:4444: not watched: denied: refusing TCP to non-loopback address 192.0.2.1 "
        .. "(the monitor is root-equivalent; pass --allow-remote)\n", text)
    end
  end)

  it("missing arguments and bad option values are usage errors, status 64", function()
    local _, err, status = qmp_lua("exec", "/nowhere")
    assert.equal(64, status)
    assert.matches("exec: expected ADDRESS COMMAND", err)
    _, err, status = qmp_lua("events", "--count", "many", "/nowhere")
    assert.equal(64, status)
    assert.matches("%-%-count", err)
  end)
end)

describe("qmp-lua shell without its readline modules", function()
  -- `qmp-lua WORDS...` run in dir, with env in front: stdout, stderr, exit status.
  local function qmp_lua_in(dir, env, ...)
    local out, err = scratch("out"), scratch("err")
    local _, _, status = os.execute(("cd %s && %s %s </dev/null >%s 2>%s")
      :format(tmp.quote(dir), env, command_line({ ... }), out, err))
    return tmp.read(out), tmp.read(err), status
  end

  it("without qmp.cli.rl (a library rock alone): one line of what to install, status 1", function()
    -- A copy of the checkout without the readline part: the C core, the Lua, the command.
    local copy = scratch("checkout")
    assert(os.execute(("mkdir -p %s/qmp && cp -R bin lua %s && cp qmp/core.so %s/qmp/")
      :format(tmp.quote(copy), tmp.quote(copy), tmp.quote(copy))))
    -- QMP_SAN_CPATH emptied: under make test-asan the sanitizer build's modules
    -- would otherwise be found first, the readline part among them.
    local out, err, status = qmp_lua_in(copy, "QMP_SAN_CPATH=", "shell", "/nonexistent.sock")
    assert.equal(1, status, err)
    assert.equal("", out)
    assert.equal("qmp-lua: the shell needs its readline part: in qmp's source tree, luarocks --lua-version=5.4"
      .. " make qmp-readline-scm-1.rockspec (Debian: apt install libreadline-dev lua-readline)\n", err)
    -- The other commands do not need it.
    out, err, status = qmp_lua_in(copy, "", "exec", "/nonexistent.sock", "query-status")
    assert.equal(2, status, err)
    assert.equal("", out)
    assert.matches("no socket at /nonexistent.sock", err)
    out, err, status = qmp_lua_in(copy, "", "shell", "--help")
    assert.equal(0, status, err)
    assert.matches("^usage: qmp%-lua shell ", out)
  end)

  it("without lua-readline: one line of what to install, status 1", function()
    -- Lua's paths without the system's directories: only the checkout's modules are found.
    local out, err, status = qmp_lua_in(".", "LUA_PATH_5_4='./?.lua' LUA_CPATH_5_4='./?.so'",
                                        "shell", "/nonexistent.sock")
    assert.equal(1, status, err)
    assert.equal("", out)
    assert.equal("qmp-lua: the shell needs lua-readline: apt install lua-readline"
      .. " (or luarocks --lua-version=5.4 install readline)\n", err)
  end)
end)

describe("qmp-lua exec #qemu", function()
  local machine

  setup(function() machine = qemu.start() end)
  teardown(function() if machine then machine:stop() end end)

  it("prints the result as JSON", function()
    local out, err, status = qmp_lua("exec", machine.sock, "query-status")
    assert.equal(0, status, err)
    assert.equal("\n", out:sub(-1))
    assert.same({ running = false, singlestep = false, status = "prelaunch" }, qmp.decode(out))
    assert.equal(1, #lines(out))
  end)

  it("--pretty indents, keys sorted", function()
    local out, err, status = qmp_lua("exec", "--pretty", machine.sock, "query-version")
    assert.equal(0, status, err)
    local list = lines(out)
    assert.equal("{", list[1])
    assert.equal("}", list[#list])
    assert.matches('^  "package": ', list[2])
    assert.equal('  "qemu": {', list[3])
    assert.matches('^    "major": %d+,$', list[4])
    assert.matches('^    "micro": %d+,$', list[5])
    assert.matches('^    "minor": %d+$', list[6])
    assert.equal(7, qmp.decode(out).qemu.major)
  end)

  it("an empty array stays an array", function()
    local out, err, status = qmp_lua("exec", machine.sock, "query-jobs")
    assert.equal(0, status, err)
    assert.equal("[]\n", out)
  end)

  it("takes key=value arguments", function()
    local out, err, status = qmp_lua("exec", machine.sock, "human-monitor-command", "command-line=info status")
    assert.equal(0, status, err)
    assert.matches("^VM status: paused %(prelaunch%)", qmp.decode(out))
  end)

  it("takes one JSON object as the arguments", function()
    local out, err, status = qmp_lua("exec", machine.sock, "human-monitor-command", '{"command-line": "info status"}')
    assert.equal(0, status, err)
    assert.matches("^VM status: paused %(prelaunch%)", qmp.decode(out))
  end)

  it("a QMP error: the class on stderr, status 1", function()
    local out, err, status = qmp_lua("exec", machine.sock, "no-such-command")
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("CommandNotFound", err)
    out, err, status = qmp_lua("exec", machine.sock, "block-job-cancel", "device=nope")
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("block%-job%-cancel: DeviceNotActive", err)
  end)

  it("no socket: a connection error, status 2", function()
    local missing = machine.dir .. "/missing.sock"
    local out, err, status = qmp_lua("exec", missing, "query-status")
    assert.equal(2, status)
    assert.equal("", out)
    assert.matches(missing, err, 1, true)
  end)
end)

describe("qmp-lua events #qemu", function()
  it("--count 2 prints two lines, then ends with status 0", function()
    local machine, mon = vm_with_two_monitors()
    local bg = background("events", "--count", "2", machine.sock)
    assert.is_true(cause_until(function() toggle(mon) end, ended(bg)))
    assert.equal(0, bg:status(), bg:err())
    local list = lines(bg:out())
    assert.equal(2, #list)
    for _, line in ipairs(list) do
      local name = line:match("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d+ (%u+)$")
      assert.is_true(name == "RESUME" or name == "STOP", line)
    end
  end)

  it("--event keeps only the events named", function()
    local machine, mon = vm_with_two_monitors()
    local bg = background("events", "--event", "STOP", "--count", "2", machine.sock)
    assert.is_true(cause_until(function() toggle(mon) end, ended(bg)))
    assert.equal(0, bg:status(), bg:err())
    local list = lines(bg:out())
    assert.equal(2, #list)
    for _, line in ipairs(list) do assert.matches(" STOP$", line) end
  end)

  it("--where keeps only the events whose data match", function()
    local machine, mon = vm_with_two_monitors()
    local bg = background("events", "--where", "reason=host-qmp-system-reset", "--where", "guest=false",
                          "--count", "1", machine.sock)
    assert.is_true(cause_until(function()
      toggle(mon)                             -- STOP or RESUME: no data, filtered out
      assert(mon:execute("system_reset"))     -- RESET guest=false reason="host-qmp-system-reset"
    end, ended(bg)))
    assert.equal(0, bg:status(), bg:err())
    local list = lines(bg:out())
    assert.equal(1, #list)
    assert.matches(" RESET ", list[1])
    assert.matches(' reason="?host%-qmp%-system%-reset"?', list[1])
    assert.matches(" guest=false", list[1])
  end)

  it("--follow --count 1 counts QEMU's event, not its own qmp.connected line", function()
    local machine, mon = vm_with_two_monitors()
    local bg = background("events", "--follow", "--count", "1", machine.sock)
    assert.is_true(cause_until(function() toggle(mon) end, ended(bg)))
    assert.equal(0, bg:status(), bg:err())
    local list = lines(bg:out())
    assert.equal(2, #list, bg:out())
    assert.matches(" qmp%.connected ", list[1])
    local name = list[2]:match(" (%u+)$")
    assert.is_true(name == "RESUME" or name == "STOP", list[2])
  end)

  it("--json prints one JSON object a line: vm, event, data, timestamp", function()
    local machine, mon = vm_with_two_monitors()
    local bg = background("events", "--json", "--count", "2", machine.sock)
    assert.is_true(cause_until(function() toggle(mon) end, ended(bg)))
    assert.equal(0, bg:status(), bg:err())
    local list = lines(bg:out())
    assert.equal(2, #list)
    for _, line in ipairs(list) do
      local ev = assert(qmp.decode(line))
      assert.equal(machine.sock, ev.vm)
      assert.is_true(ev.event == "STOP" or ev.event == "RESUME", ev.event)
      assert.is_table(ev.data)
      assert.equal("integer", math.type(ev.timestamp.seconds))
      assert.equal("integer", math.type(ev.timestamp.microseconds))
    end
  end)

  it("--timeout ends a quiet watch with status 0", function()
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local t0 = socket.gettime()
    local out, err, status = qmp_lua("events", "--timeout", "0.5", machine.sock)
    assert.equal(0, status, err)
    assert.equal("", out)
    assert.is_true(socket.gettime() - t0 < 5)
  end)

  it("ends with status 2 when the VM goes away", function()
    local machine, mon = vm_with_two_monitors()
    local bg = background("events", machine.sock)
    assert.is_true(cause_until(function() toggle(mon) end, shows(bg, "\n")))
    mon:execute("quit")
    assert.equal(2, bg:wait(10))
    assert.matches(machine.sock, bg:err(), 1, true)
  end)

  it("several VMs: each line starts with its VM's address", function()
    local a, mon_a = vm_with_two_monitors()
    local b, mon_b = vm_with_two_monitors()
    local bg = background("events", "--timeout", tostring(LIMIT - 5), a.sock, b.sock)
    -- Both connections are made before the watch starts: once a's event shows, b's will too.
    assert.is_true(cause_until(function() toggle(mon_a) end, shows(bg, a.sock .. "  ", true)))
    assert.is_true(cause_until(function() toggle(mon_b) end, shows(bg, b.sock .. "  ", true)))
    bg:kill()
    local list = lines(bg:out())
    assert.is_true(#list >= 2)
    for _, line in ipairs(list) do
      local prefix = line:sub(1, #a.sock + 2)
      assert.is_true(prefix == a.sock .. "  " or prefix == b.sock .. "  ", line)
    end
  end)

  it("--follow keeps watching when QEMU restarts on the same socket", function()
    local dir = tmp.dir("cli-follow")
    cleanup(function() tmp.remove(dir) end)
    local first = vm_with_two_monitors(dir)
    local bg = background("events", "--follow", "--timeout", tostring(LIMIT - 5), first.sock)
    assert.is_true(proc.wait_until(shows(bg, " qmp%.connected "), 10), bg:err())
    proc.kill(first.pid, "KILL")
    assert.is_true(first:wait_exit(5))
    first:stop()
    assert.is_true(proc.wait_until(shows(bg, " qmp%.disconnected "), 10), bg:out())
    local second, mon = vm_with_two_monitors(dir)
    assert.equal(first.sock, second.sock)
    assert.is_true(proc.wait_until(shows(bg, " qmp%.reconnected "), 10), bg:out())
    -- and the events of the new QEMU come through
    assert.is_true(cause_until(function() toggle(mon) end, shows(bg, "reconnected [^\n]*\n[^\n]* RESUME")))
    assert.is_nil(bg:status())   -- still watching
    local out = bg:out()
    local c, d, r = out:find(" qmp%.connected "), out:find(" qmp%.disconnected "), out:find(" qmp%.reconnected ")
    assert.is_true(c < d and d < r)
  end)
end)

describe("qmp-lua run #qemu", function()
  local function script(text)
    local path = scratch("script.lua")
    tmp.write(path, text)
    return path
  end

  it("runs a script with vm, qmp and arg; an integer it returns is the exit status", function()
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local path = script([[
      local st = assert(vm:execute("query-status"))
      print(arg[0], arg[1], #arg, st.status, qmp.encode({ 1, 2 }))
      return tonumber(arg[2])
    ]])
    local out, err, status = qmp_lua("run", machine.sock, path, "hello", "7")
    assert.equal(7, status, err)
    assert.equal(path .. "\thello\t2\tprelaunch\t[1,2]\n", out)
  end)

  it("a script that raises: its message and traceback on stderr, status 1", function()
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local path = script([[
      local function check() error("the disk is on fire") end
      check()
    ]])
    local out, err, status = qmp_lua("run", machine.sock, path)
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("the disk is on fire", err, 1, true)
    assert.matches("stack traceback", err, 1, true)
  end)

  it("a script that registered handlers runs until QEMU quits, then exits 2 (connection ended)", function()
    local machine, mon = vm_with_two_monitors()
    local path = script([[
      vm:on("STOP", function(ev) print("saw " .. ev.event); io.stdout:flush() end)
      print("watching"); io.stdout:flush()
    ]])
    local bg = background("run", machine.sock, path)
    assert.is_true(proc.wait_until(shows(bg, "^watching\n"), 10), bg:err())
    assert.is_true(cause_until(function() toggle(mon) end, shows(bg, "saw STOP\n")))
    assert.is_nil(bg:status())   -- still running its handlers
    mon:execute("quit")
    assert.is_true(machine:wait_exit(10))
    assert.equal(2, bg:wait(10), bg:err())
    assert.matches("^qmp%-lua: [^\n]*closed[^\n]*\n$", bg:err())
  end)
end)

describe("qmp-lua job #qemu", function()
  local MiB = 1 << 20

  -- A VM with node "top": a qcow2 overlay over a base holding `data` MiB.
  local function vm_with_chain(data)
    local dir = tmp.dir("cli-job")
    cleanup(function() tmp.remove(dir) end)
    require("support.disks").qcow2_chain(dir, data)
    local machine, mon = vm_with_two_monitors()
    assert(mon:execute("blockdev-add", { driver = "qcow2", ["node-name"] = "top",
                                         file = { driver = "file", filename = dir .. "/top.qcow2" } }))
    return machine, mon
  end

  local function running(mon, id)
    return function()
      for _, job in ipairs(assert(mon:execute("query-jobs"))) do
        if job.id == id and job.status == "running" then return true end
      end
      return false
    end
  end

  it("lists no jobs, then a running one", function()
    local machine, mon = vm_with_chain(4)
    local out, err, status = qmp_lua("job", machine.sock)
    assert.equal(0, status, err)
    assert.equal("no jobs\n", out)
    assert(mon:execute("block-stream", { ["job-id"] = "s1", device = "top", speed = 1 }))   -- crawls
    assert.is_true(proc.wait_until(running(mon, "s1"), 10))
    out, err, status = qmp_lua("job", machine.sock)
    assert.equal(0, status, err)
    assert.matches("^s1  stream  running  %d+%.%d%%  .* of 64%.0 MiB\n$", out)
    out, err, status = qmp_lua("job", machine.sock, "s1")
    assert.equal(0, status, err)
    assert.matches("^s1  stream  running", out)
  end)

  it("--wait follows a stream job to its end with plain progress lines, status 0", function()
    local machine, mon = vm_with_chain(8)
    assert(mon:execute("block-stream", { ["job-id"] = "s0", device = "top", speed = 4 * MiB }))
    local out, err, status = qmp_lua("job", machine.sock, "s0", "--wait")
    assert.equal(0, status, err)
    assert.is_nil(out:find("\r", 1, true), "no redrawing when not on a terminal")
    assert.is_nil(out:find("[#", 1, true), "no bar when not on a terminal")
    assert.is_nil(out:find("\27", 1, true), "no colour when not on a terminal")
    local list = lines(out)
    assert.is_true(#list >= 2, out)
    assert.matches("^s0 +%d+%.%d%%  .* / 64%.0 MiB  .*running$", list[1])
    assert.equal("s0  stream  concluded  100.0%  64.0 MiB of 64.0 MiB", list[#list])
  end)

  it("--wait on a job that was cancelled: the reason on stderr, status 1", function()
    local machine, mon = vm_with_chain(4)
    assert(mon:execute("block-stream", { ["job-id"] = "s2", device = "top", speed = 1, ["auto-dismiss"] = false }))
    assert.is_true(proc.wait_until(running(mon, "s2"), 10))
    assert(mon:execute("block-job-cancel", { device = "s2", force = true }))
    assert.is_true(proc.wait_until(function()   -- it stays, concluded, as it is not auto-dismissed
      return assert(mon:execute("query-jobs"))[1].status == "concluded"
    end, 10))
    local _, err, status = qmp_lua("job", machine.sock, "s2", "--wait")
    assert.equal(1, status)
    assert.matches("job s2 failed: .*[Cc]ancel", err)   -- QEMU says "Operation canceled"
  end)

  it("--wait writes its plain progress lines as they happen, so a log or a pipe follows the job", function()
    local machine, mon = vm_with_chain(4)
    assert(mon:execute("block-stream", { ["job-id"] = "s3", device = "top", speed = 1 }))   -- crawls
    assert.is_true(proc.wait_until(running(mon, "s3"), 10))
    cleanup(function() mon:execute("block-job-cancel", { device = "s3", force = true }) end)
    local bg = background("job", machine.sock, "s3", "--wait")
    assert.is_true(proc.wait_until(shows(bg, "^s3 .*running\n"), 5),
                   "no progress line while the job runs (stdout: " .. ("%q"):format(bg:out()) .. ")")
    assert(mon:execute("block-job-cancel", { device = "s3", force = true }))
    assert.equal(1, bg:wait(10))
    assert.matches("job s3 failed: cancelled", bg:err())
  end)

  it("a job that does not exist: status 1", function()
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local out, err, status = qmp_lua("job", machine.sock, "nope", "--wait", "--timeout", "2")
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("no job nope", err)
    out, err, status = qmp_lua("job", machine.sock, "nope")
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("no job nope", err)
  end)
end)

describe("qmp-lua record #qemu", function()
  it("records the stream both ways with times; qmp.replay plays it back", function()
    local machine, mon = vm_with_two_monitors()
    local file = scratch("rec.qmprec")
    local bg = background("record", machine.sock, file, "--count", "2")
    assert.is_true(cause_until(function() toggle(mon) end, ended(bg)))
    assert.equal(0, bg:status(), bg:err())
    assert.matches("recorded %d+ messages %(2 events%)", bg:err())

    local list = lines(tmp.read(file))
    local header = assert(qmp.decode(list[1]))
    assert.equal(1, header["qmp-recording"])
    assert.equal(machine.sock, header.name)
    local dirs, names, last_t = {}, {}, 0
    for i = 2, #list do
      local line = assert(qmp.decode(list[i]))
      assert.is_number(line.t)
      assert.is_true(line.t >= last_t, "times never go back")
      last_t = line.t
      dirs[line.dir] = (dirs[line.dir] or 0) + 1
      if line.dir == "in" and line.msg.event then names[#names + 1] = line.msg.event end
    end
    assert.is_true(dirs["in"] >= 4)   -- greeting, its reply, two events
    assert.equal("qmp_capabilities", qmp.decode(list[3]).msg.execute)
    assert.equal(1, dirs.out)
    assert.equal(1, dirs["end"])
    assert.equal("end", qmp.decode(list[#list]).dir)
    assert.is_true(#names >= 2)

    if type(qmp.replay) ~= "function" then return pending("qmp.replay is not there yet") end
    local replay = assert(qmp.replay(file))
    local played = {}
    replay:on("*", function(ev) if not ev.event:match("^qmp%.") then played[#played + 1] = ev.event end end)
    local done, why = replay:run()
    assert.is_nil(done)
    assert.equal("closed", why.kind)
    assert.same(names, played)
    replay:close()
  end)
end)
