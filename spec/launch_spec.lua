-- `qmp-lua launch` on real QEMU: the shell on a fresh VM in a terminal
-- (tmux), an event watch, a script, QEMU's own complaint, usage errors,
-- and the end by SIGINT or SIGTERM; QEMU is gone after each.
local proc = require "support.proc"
local tmp = require "support.tmp"
local tmux = require "support.tmux"
local boot_sector = require "support.boot_sector"

local cleanup = require("support.cleanup")(after_each)
local runner = require("support.qmp_lua").new("launch", cleanup)

local EMPTY = { "-machine", "none", "-display", "none", "-nodefaults" }

-- `launch WORDS... -- QEMU-ARGS...` as one list of words.
local function words(before, qemu_args)
  local list = { "launch" }
  for _, w in ipairs(before) do list[#list + 1] = w end
  list[#list + 1] = "--"
  for _, w in ipairs(qemu_args) do list[#list + 1] = w end
  return list
end

-- QEMU's pid from launch's "launch: ... (pid N) started" line.
local function started_pid(text)
  return tonumber(text:match("launch: [^\n]- %(pid (%d+)%) started"))
end

-- Whether pid exists at all (a zombie does).
local function exists(pid)
  return tmp.read("/proc/" .. pid .. "/stat") ~= nil
end

describe("qmp-lua launch #qemu", function()
  local dir
  setup(function() dir = tmp.dir("launch") end)
  teardown(function()
    tmp.remove(dir)
    runner.remove()
  end)

  it("opens the shell on a fresh QEMU; Ctrl-D ends the shell and QEMU, status 0", function()
    local home = dir .. "/home"
    assert(os.execute("mkdir -p " .. tmp.quote(home)))
    tmp.write(home .. "/inputrc", "")   -- readline's defaults, whatever this machine's /etc/inputrc says
    local quoted = {}
    for i, w in ipairs(words({}, EMPTY)) do quoted[i] = tmp.quote(w) end
    -- --foreground: the shell reads the terminal, so it must stay in the foreground group
    local command = ("HOME=%s INPUTRC=%s timeout --foreground 30 bin/qmp-lua %s"):format(
      tmp.quote(home), tmp.quote(home .. "/inputrc"), table.concat(quoted, " "))
    local term = tmux.start("launch", { width = 160, height = 50 },
                            command .. '; echo "[launch exited $?]"; sleep 60')
    cleanup(function() term:stop() end)
    local screen = term:wait_for("\nqmp>", 10)
    local pid = started_pid(screen)
    assert(pid, "no pid on the screen:\n" .. screen)
    assert.matches(("connected to qemu-system-x86_64 (pid %d) (QEMU "):format(pid), screen, 1, true)
    assert.is_true(proc.alive(pid))
    term:type("query-status")
    term:keys("Enter")
    term:wait_for('"status": "running"', tmux.WAIT, true)
    term:wait_for("}\nqmp>")
    term:keys("C-d")
    screen = term:wait_for("[launch exited ", 10, true)
    assert.matches("[launch exited 0]", screen, 1, true)
    assert.is_false(exists(pid))
    -- Last: the ladder's first step (quit) was taken, as launch's help says.
    assert.matches(("launch: qemu-system-x86_64 (pid %d) shut down (quit), status 0"):format(pid), screen, 1, true)
  end)

  it("--events --count 1: prints the guest's SHUTDOWN and exits 0, QEMU gone", function()
    local image = boot_sector.image(dir .. "/off.img", { power_off = true })
    local out, err, status = runner.run(table.unpack(words({ "--events", "--count", "1" }, boot_sector.args(image))))
    assert.are.equal(0, status, err)
    assert.matches("SHUTDOWN reason=guest%-shutdown guest=true\n$", out)
    local pid = started_pid(err)
    assert(pid, err)
    assert.is_false(exists(pid))
  end)

  it("--run SCRIPT.lua ARG: the script sees vm and its ARG; its integer return is the status", function()
    local script = dir .. "/script.lua"
    tmp.write(script, [[
local n = ...
print("status=" .. vm:execute("query-status").status .. " arg=" .. arg[1])
return math.tointeger(tonumber(n))
]])
    local out, err, status = runner.run(table.unpack(words({ "--run", script, "7" }, EMPTY)))
    assert.are.equal(7, status, err)
    assert.are.equal("status=running arg=7\n", out)
    local pid = started_pid(err)
    assert(pid, err)
    assert.is_false(exists(pid))
  end)

  it("a bad QEMU argument: status 1 and QEMU's complaint on stderr", function()
    local out, err, status = runner.run("launch", "--", "-no-such-option")
    assert.are.equal(1, status)
    assert.are.equal("", out)
    assert.matches("qemu-system-x86_64: -no-such-option: invalid option", err, 1, true)
    assert.matches("exited with status 1", err, 1, true)
  end)

  it("without --: status 64", function()
    local out, err, status = runner.run("launch", "-machine", "none")
    assert.are.equal(64, status)
    assert.are.equal("", out)
    assert.is_nil(started_pid(err))
    assert.is_nil(err:find("started", 1, true))
  end)

  for _, case in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
    it(("SIG%s ends a launch --events with status %d, QEMU gone"):format(case[1], case[2]), function()
      local bg = runner.background(table.unpack(words({ "--events" }, EMPTY)))
      local pid
      assert(proc.wait_until(function()
        pid = started_pid(bg:err())
        return pid ~= nil or bg:status() ~= nil
      end, 10), "launch did not start QEMU")
      assert(pid, bg:err())
      assert.is_true(proc.alive(pid))
      bg:signal(case[1])
      assert.are.equal(case[2], bg:wait(10), bg:err())
      assert.is_false(exists(pid))
      assert.matches(("qemu-system-x86_64 (pid %d) shut down"):format(pid), bg:err(), 1, true)
    end)
  end
end)
