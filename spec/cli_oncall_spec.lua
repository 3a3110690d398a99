-- qmp-lua on an on-call host: signals end every waiting subcommand at once
-- and cleanly (130 SIGINT, 143 SIGTERM, 129 SIGHUP), a multi-VM watch goes
-- on past the VMs it cannot watch, typos are named, and every exit status
-- of the table is what it says.  bin/qmp-lua runs as a child (support.qmp_lua);
-- the #qemu tests drive real QEMUs, the others fake peers (support.fake_qmp).
local qmp = require "qmp"
local qemu = require "support.qemu"
local fake = require "support.fake_qmp"
local proc = require "support.proc"
local tmp = require "support.tmp"

local cleanup = require("support.cleanup")(after_each)
local runner = require("support.qmp_lua").new("oncall", cleanup)
local qmp_lua, background, scratch, lines = runner.run, runner.background, runner.scratch, runner.lines

teardown(runner.remove)

local STATUS = { INT = 130, TERM = 143, HUP = 129 }
local REACTION = 1   -- seconds; the command promises 100 ms, a loaded machine gets slack

-- {==================== helpers

-- A throwaway QEMU (in dir, if given) with a second monitor: machine, and
-- `mon`, a client on that second monitor for the spec's own commands.
local function vm_with_two_monitors(dir) return qemu.with_monitor(cleanup, dir) end

local function idle_qemu(dir)
  local machine = qemu.start({ dir = dir })
  cleanup(function() machine:stop() end)
  return machine
end

-- One event (RESUME or STOP) through mon: cont a stopped VM, stop a running one.
local function toggle(mon)
  local status = assert(mon:execute("query-status"))
  assert(mon:execute(status.running and "stop" or "cont"))
end

-- Cause events with cause() every `every` seconds until done() holds: a
-- watcher started in the background says nothing when it listens, so the
-- first events may come before it does.
local function cause_until(cause, done, seconds, every)
  local deadline = qmp.monotime() + (seconds or 10)
  repeat
    cause()
    if proc.wait_until(done, every or 0.3) then return true end
  until qmp.monotime() > deadline
  return false
end

-- Predicates on a background command's stdout / stderr.
local function out_has(bg, pattern, plain)
  return function() return bg:out():find(pattern, 1, plain) ~= nil end
end
local function err_has(bg, pattern, plain)
  return function() return bg:err():find(pattern, 1, plain) ~= nil end
end

local count = require("support.text").count

-- A Lua pattern that matches text literally.
local function literal(text)
  return (text:gsub("%W", "%%%0"))
end

local function script(text)
  local path = scratch("script.lua")
  tmp.write(path, text)
  return path
end

-- Send SIG<name> to bg and wait (bounded) for it to exit: status, seconds taken.
local function interrupt(bg, name)
  local t0 = qmp.monotime()
  bg:signal(name)
  local status = bg:wait(5)
  return status, qmp.monotime() - t0
end

-- bg ended by SIG<name> as the table says: in time, with 128 + signo, and
-- no traceback nor a file of the library named on stderr.  (A qmp-lua
-- killed by the signal would show the same status through `timeout`: the
-- closing line each test checks is what proves the command ended itself.)
local function assert_ended_by(bg, name, status, took)
  assert.is_true(took < REACTION, ("exited %.3f s after SIG%s (status %s); stderr:\n%s")
                                  :format(took, name, tostring(status), bg:err()))
  assert.equal(STATUS[name], status, bg:err())
  local err = bg:err()
  assert.is_nil(err:lower():find("traceback", 1, true), err)
  assert.is_nil(err:find(".lua:", 1, true), err)
end

-- }==================== helpers

describe("qmp-lua under SIGINT and SIGTERM while idle #qemu", function()
  for _, sig in ipairs({ "INT", "TERM" }) do
    it("events ends within 1 s of SIG" .. sig .. ": its closing line with the counts, status "
       .. STATUS[sig], function()
      local machine, mon = vm_with_two_monitors()
      local bg = background("events", machine.sock)
      assert.is_true(cause_until(function() toggle(mon) end, out_has(bg, "\n")), bg:err())
      local status, took = interrupt(bg, sig)   -- idle: nothing more happens on the VM
      assert_ended_by(bg, sig, status, took)
      local n = #lines(bg:out())
      assert.equal(("qmp-lua: events: %d event%s from 1 VM watched; stopped by SIG%s\n")
                   :format(n, n == 1 and "" or "s", sig), bg:err())
    end)

    it("record ends within 1 s of SIG" .. sig .. ": the file's end line says interrupted, status "
       .. STATUS[sig], function()
      local machine = idle_qemu()
      local file = scratch("rec.qmprec")
      local bg = background("record", machine.sock, file)
      -- Recording once negotiated: the header, the greeting, qmp_capabilities and its reply.
      assert.is_true(proc.wait_until(function() return #lines(tmp.read(file)) >= 4 end, 10), bg:err())
      local status, took = interrupt(bg, sig)
      assert_ended_by(bg, sig, status, took)
      assert.matches("^recorded 3 messages %(0 events%) in %d+%.%d s to " .. literal(file) .. ": interrupted\n$",
                     bg:err())
      local list = lines(tmp.read(file))
      assert.equal(5, #list, tmp.read(file))
      assert.matches('^{"t":%d+%.%d+,"dir":"end","msg":{"reason":"interrupted"}}$', list[#list])
    end)

    it("job --wait ends within 1 s of SIG" .. sig .. " and says the job goes on, status " .. STATUS[sig],
       function()
      local dir = tmp.dir("oncall-job")
      cleanup(function() tmp.remove(dir) end)
      require("support.disks").qcow2_chain(dir, 4)
      local machine, mon = vm_with_two_monitors()
      assert(mon:execute("blockdev-add", { driver = "qcow2", ["node-name"] = "top",
                                           file = { driver = "file", filename = dir .. "/top.qcow2" } }))
      assert(mon:execute("block-stream", { ["job-id"] = "s1", device = "top", speed = 1 }))   -- crawls
      local bg = background("job", machine.sock, "s1", "--wait")
      assert.is_true(proc.wait_until(out_has(bg, "^s1 .*running\n"), 5), bg:err())
      local status, took = interrupt(bg, sig)
      assert_ended_by(bg, sig, status, took)
      assert.equal(("qmp-lua: job: stopped watching s1 by SIG%s; the job goes on in QEMU\n"):format(sig), bg:err())
      local jobs = assert(mon:execute("query-jobs"))
      assert.equal("s1", jobs[1].id)
      assert.equal("running", jobs[1].status)
    end)

    it("run serving a script's handlers ends within 1 s of SIG" .. sig .. ", status " .. STATUS[sig], function()
      local machine = idle_qemu()
      local path = script([[
        vm:on("STOP", function(ev) print("saw " .. ev.event) end)
        print("watching"); io.stdout:flush()
      ]])
      local bg = background("run", machine.sock, path)
      assert.is_true(proc.wait_until(out_has(bg, "^watching\n"), 10), bg:err())
      local status, took = interrupt(bg, sig)
      assert_ended_by(bg, sig, status, took)
      assert.equal(("qmp-lua: run: stopped by SIG%s\n"):format(sig), bg:err())
      assert.equal("watching\n", bg:out())
    end)
  end
end)

describe("qmp-lua events with many VMs #qemu", function()
  it("watches the free VM at once while a held monitor and a silent socket time out; --timeout holds", function()
    local vm2, mon2 = vm_with_two_monitors()
    local vm1 = idle_qemu()
    local holder = assert(qmp.connect(vm1.sock, { timeout = 5, name = "holder" }))   -- QEMU serves one client
    cleanup(function() holder:close() end)
    local vm3 = fake.serve({ { hold = 30 } }, cleanup)   -- accepts, never greets

    local t0 = qmp.monotime()
    local bg = background("events", vm2.sock, vm1.sock, vm3.path, "--connect-timeout", "1", "--timeout", "4")
    local seen_after, err_then
    assert.is_true(cause_until(function() toggle(mon2) end, function()
      if not bg:out():find(vm2.sock .. "  ", 1, true) then return false end
      seen_after, err_then = qmp.monotime() - t0, bg:err()
      return true
    end, 3, 0.1), bg:err())
    assert.is_true(seen_after < 1, ("the first event of vm2 came %.3f s after the start"):format(seen_after))
    assert.is_nil(err_then:find("not watched", 1, true), err_then)

    local status = bg:wait(6)
    local total = qmp.monotime() - t0
    assert.equal(0, status, bg:err())
    assert.is_true(total < 4 + 1, ("--timeout 4 ended it after %.3f s"):format(total))
    for _, line in ipairs(lines(bg:out())) do
      assert.equal(vm2.sock .. "  ", line:sub(1, #vm2.sock + 2))
    end
    local err = bg:err()
    assert.equal(2, #lines(err), err)
    assert.equal(1, count(err, vm1.sock .. ": not watched: timeout: no QMP greeting"), err)
    assert.equal(1, count(err, vm3.path .. ": not watched: timeout: no QMP greeting"), err)
  end)

  it("no VM can be watched: one line for each, status 2", function()
    local a, b = scratch("a.sock"), scratch("b.sock")
    local out, err, status = qmp_lua("events", a, b, "--timeout", "4")
    assert.equal(2, status, err)
    assert.equal("", out)
    local list = lines(err)
    assert.equal(2, #list, err)
    assert.matches("^qmp%-lua: " .. literal(a) .. ": not watched: refused: ", list[1])
    assert.matches("^qmp%-lua: " .. literal(b) .. ": not watched: refused: ", list[2])
  end)

  it("--follow says a refused VM once while it retries, and watches it once QEMU is up", function()
    local dir = tmp.dir("oncall-follow")
    cleanup(function() tmp.remove(dir) end)
    local path = dir .. "/qmp.sock"
    local bg = background("events", "--follow", "--timeout", tostring(runner.LIMIT - 5), path)
    local said = path .. ": not watched: refused: "
    assert.is_true(proc.wait_until(err_has(bg, said, true), 5), bg:err())
    assert.matches("; retrying\n$", bg:err())
    -- Retried for 2 s (back-off from 0.2 s): the outage is not said again.
    assert.is_false(proc.wait_until(function() return count(bg:err(), said) > 1 end, 2), bg:err())
    assert.is_nil(bg:status(), bg:err())
    idle_qemu(dir)
    assert.is_true(proc.wait_until(out_has(bg, " qmp%.connected "), 10), bg:err())
    assert.equal(1, count(bg:err(), "not watched"), bg:err())
  end)
end)

describe("qmp-lua events --event typos #qemu", function()
  it("an unknown name is warned about with the closest; a glob or a known name is not", function()
    local machine = idle_qemu()
    local out, err, status = qmp_lua("events", "--event", "SHUTDWN", machine.sock, "--timeout", "1")
    assert.equal(0, status, err)
    assert.equal("", out)
    assert.equal("qmp-lua: warning: --event SHUTDWN: no event is named SHUTDWN in the catalogue or in this "
                 .. "QEMU's schema; did you mean SHUTDOWN?\n", err)
    for _, name in ipairs({ "SHUTD*", "SHUTDOWN" }) do
      out, err, status = qmp_lua("events", "--event", name, machine.sock, "--timeout", "0.5")
      assert.equal(0, status, err)
      assert.equal("", out)
      assert.equal("", err)
    end
  end)
end)

describe("qmp-lua exit status", function()
  local function opening(steps) return fake.serve(fake.opening(steps), cleanup) end

  it("0: exec with a reply", function()
    local srv = opening({ { expect = "query-status", reply = fake.reply('{"status": "running", "running": true}') },
                          { wait_close = true } })
    local out, err, status = qmp_lua("exec", srv.path, "query-status")
    assert.equal(0, status, err)
    assert.equal('{"running":true,"status":"running"}\n', out)
    assert.equal("", err)
  end)

  it("1: exec with a QMP error reply, the class and text on stderr once", function()
    local srv = opening({ { expect = "query-status",
                            reply = '{"error": {"class": "GenericError", "desc": "not now"}, "id": %ID}' },
                          { wait_close = true } })
    local out, err, status = qmp_lua("exec", srv.path, "query-status")
    assert.equal(1, status)
    assert.equal("", out)
    assert.equal("qmp-lua: query-status: GenericError: not now\n", err)
  end)

  -- 2 when QEMU quits under `run`: spec/cli_spec.lua ("a script that registered handlers runs until QEMU quits").
  it("2: exec to a socket nobody listens on", function()
    local missing = scratch("missing.sock")
    local out, err, status = qmp_lua("exec", missing, "query-status")
    assert.equal(2, status)
    assert.equal("", out)
    assert.matches("^qmp%-lua: refused: no socket at " .. literal(missing), err)
  end)

  it("64: an unknown option, with the closest one", function()
    local out, err, status = qmp_lua("events", "--evnt", "STOP", scratch("x.sock"))
    assert.equal(64, status)
    assert.equal("", out)
    assert.equal("qmp-lua: events: unknown option --evnt; did you mean --event? (see qmp-lua events --help)\n", err)
  end)

  it("129: events ends on SIGHUP with its closing line", function()
    local srv = opening({ { send = fake.event("STOP") }, { hold = 30 } })
    local bg = background("events", srv.path)
    assert.is_true(proc.wait_until(out_has(bg, " STOP\n"), 5), bg:err())
    local status, took = interrupt(bg, "HUP")
    assert_ended_by(bg, "HUP", status, took)
    assert.equal("qmp-lua: events: 1 event from 1 VM watched; stopped by SIGHUP\n", bg:err())
  end)

  it("the same table in qmp-lua --help and in every COMMAND --help", function()
    local function table_of(text)
      return assert(text:match("\n(exit status:\n.*)$"), "no exit status table in:\n" .. text)
    end
    local out, err, status = qmp_lua("--help")
    assert.equal(0, status, err)
    local exit_codes = table_of(out)
    local listed = {}
    for code in exit_codes:gmatch("%f[%d]%d+%f[%D]") do listed[#listed + 1] = tonumber(code) end
    assert.same({ 0, 1, 2, 64, 129, 130, 143 }, listed)
    assert.matches("129%s+SIGHUP", exit_codes)
    assert.matches("130%s+SIGINT", exit_codes)
    assert.matches("143%s+SIGTERM", exit_codes)
    for _, name in ipairs(require("qmp.cli.main").COMMANDS) do
      out, err, status = qmp_lua(name, "--help")
      assert.equal(0, status, err)
      assert.equal(exit_codes, table_of(out), name)
    end
  end)
end)

describe("qmp-lua smaller promises", function()
  it("exec prints object keys sorted, nested ones too", function()
    local srv = fake.serve(fake.opening({
      { expect = "query-x", reply = fake.reply('{"b": 1, "a": 2, "c": {"z": 1, "y": 2}}') },
      { wait_close = true } }), cleanup)
    local out, err, status = qmp_lua("exec", srv.path, "query-x")
    assert.equal(0, status, err)
    assert.equal('{"a":2,"b":1,"c":{"y":2,"z":1}}\n', out)
  end)

  it("exec --timeout 0.5 to a peer that never replies: status 2 after about 0.5 s, naming the timeout", function()
    local srv = fake.serve(fake.opening({ { hold = 30 } }), cleanup)
    local t0 = qmp.monotime()
    local out, err, status = qmp_lua("exec", "--timeout", "0.5", srv.path, "query-status")
    local took = qmp.monotime() - t0
    assert.equal(2, status, err)
    assert.equal("", out)
    assert.is_true(took >= 0.5 and took < 0.5 + REACTION, ("took %.3f s"):format(took))
    assert.matches("no reply to query%-status from " .. literal(srv.path) .. " within 0%.5 s", err)
  end)

  it("--connect-timeout holds on a socket that never greets", function()
    local srv = fake.serve({ { hold = 30 } }, cleanup)
    local t0 = qmp.monotime()
    local out, err, status = qmp_lua("exec", "--connect-timeout", "0.5", srv.path, "query-status")
    local took = qmp.monotime() - t0
    assert.equal(2, status, err)
    assert.equal("", out)
    assert.is_true(took < 2, ("took %.3f s"):format(took))
    assert.matches("no QMP greeting from " .. literal(srv.path) .. " within 0%.5 s", err)
  end)

  it("colour needs a terminal, no --no-colour and no NO_COLOR (an empty one does not count)", function()
    -- cli.colour in a child, its terminal test stubbed, with NO_COLOR as given ("-": unset).
    local function colour(no_color, opts)
      local code = ([[
        package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
        package.cpath = "./?.so;" .. package.cpath
        local cli = require "qmp.cli.common"
        cli.is_tty = function() return true end
        io.write(tostring(cli.colour(%s)))
      ]]):format(opts or "{}")
      local env = no_color == "-" and "env -u NO_COLOR" or ("env NO_COLOR=" .. tmp.quote(no_color))
      local child = assert(io.popen(env .. " lua5.4 -e " .. tmp.quote(code) .. " 2>&1"))
      local out = child:read("a")
      assert.is_true(child:close(), out)
      return out
    end
    assert.equal("true", colour("-"))
    assert.equal("false", colour("-", "{ no_colour = true }"))
    assert.equal("false", colour("1"))
    assert.equal("true", colour(""))
  end)

  it("--allow-remote lets a connection to a remote address be tried; without it, it is denied", function()
    -- In an empty network namespace, so nothing leaves the machine.
    local function exec_remote(...)
      local err = scratch("err")
      local _, _, status = os.execute(("unshare -n %s </dev/null >/dev/null 2>%s")
        :format(runner.command_line({ "exec", ... }), err))
      return status, tmp.read(err)
    end
    local status, err = exec_remote("--allow-remote", "--connect-timeout", "1", "192.0.2.1:4444", "query-status")
    if status ~= 2 and err:match("unshare") then
      return pending("cannot create a network namespace here: " .. err)
    end
    assert.equal(2, status, err)
    assert.is_truthy(err:find("refused: ", 1, true) or err:find("timeout: ", 1, true), err)
    assert.is_nil(err:find("denied", 1, true), err)

    status, err = exec_remote("--connect-timeout", "1", "192.0.2.1:4444", "query-status")
    assert.equal(2, status, err)
    assert.matches("denied: .*pass %-%-allow%-remote%)\n$", err)
  end)

  it("run --reconnect before QEMU is up says it waits, runs the script once QEMU comes, ends on SIGINT #qemu",
     function()
    local dir = tmp.dir("oncall-wait")
    cleanup(function() tmp.remove(dir) end)
    local path = dir .. "/qmp.sock"
    local code = script([[
      vm:on("STOP", function() end)
      print("watching " .. vm.state); io.stdout:flush()
    ]])
    local bg = background("run", "--reconnect", path, code)
    assert.is_true(proc.wait_until(err_has(bg, "waiting for " .. path .. ": ", true), 5), bg:err())
    assert.matches("^qmp%-lua: waiting for " .. literal(path) .. ": [^\n]+ %(Ctrl%-C to give up%)\n$", bg:err())
    assert.equal("", bg:out())
    idle_qemu(dir)
    assert.is_true(proc.wait_until(out_has(bg, "^watching ready\n"), 10), bg:err())
    local status, took = interrupt(bg, "INT")
    assert_ended_by(bg, "INT", status, took)
    assert.matches("\nqmp%-lua: run: stopped by SIGINT\n$", bg:err())
  end)

  it("run ends a script busy in Lua (while true do end) on SIGINT, status 130", function()
    local srv = fake.serve(fake.opening({ { hold = 30 } }), cleanup)
    local code = script([[
      print("looping"); io.stdout:flush()
      while true do end
    ]])
    local bg = background("run", srv.path, code)
    assert.is_true(proc.wait_until(out_has(bg, "^looping\n"), 5), bg:err())
    local status, took = interrupt(bg, "INT")
    assert_ended_by(bg, "INT", status, took)
    assert.equal("qmp-lua: run: stopped by SIGINT\n", bg:err())
  end)
end)
