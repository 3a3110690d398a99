-- `qmp-lua shell` under Ctrl-C, Ctrl-D, SIGTERM and SIGHUP in a real
-- terminal (tmux), on a real QEMU: the shell goes on after Ctrl-C, every
-- way out gives the terminal back (checked with stty -a after) and writes
-- the history with mode 0600; typos are named with the closest command.
local qmp = require "qmp"
local qemu = require "support.qemu"
local proc = require "support.proc"
local tmp = require "support.tmp"
local tmux = require "support.tmux"

describe("qmp-lua shell and signals #qemu", function()
  local machine, mon, dir
  local runs = 0

  setup(function()
    dir = tmp.dir("shellsig")
    machine = qemu.start({ dir = dir, args = { "-qmp", "unix:" .. dir .. "/qmp2.sock,server=on,wait=off" } })
    assert(proc.wait_until(function() return proc.listening(dir .. "/qmp2.sock") end, 10))
    mon = assert(qmp.connect(dir .. "/qmp2.sock", { timeout = 10, name = "spec" }))
  end)

  teardown(function()
    if mon then mon:close() end
    if machine then
      os.execute("kill -CONT " .. machine.pid .. " 2>/dev/null")
      machine:stop()
      tmp.remove(dir)
    end
  end)

  -- A shell in a fresh terminal with its own HOME; when it ends, the
  -- terminal's modes and its exit status are written to files.
  -- Returns term, files { pid =, status =, stty =, home = }.
  local function start_shell()
    runs = runs + 1
    local f = { home = ("%s/home%d"):format(dir, runs) }
    f.pid, f.status, f.stty = f.home .. ".pid", f.home .. ".status", f.home .. ".stty"
    assert(os.execute("mkdir " .. tmp.quote(f.home)))
    tmp.write(f.home .. "/inputrc", "")   -- readline's defaults, whatever /etc/inputrc says
    -- No `timeout --foreground` around it: that passes each terminal SIGINT on
    -- to the shell, which already had it from the terminal (a Ctrl-C twice).
    local inner = ("echo $$ > %s; HOME=%s INPUTRC=%s exec bin/qmp-lua shell %s")
      :format(tmp.quote(f.pid), tmp.quote(f.home), tmp.quote(f.home .. "/inputrc"), tmp.quote(machine.sock))
    -- Each file appears whole (written aside, then renamed): the spec reads
    -- them as soon as they exist; the status last, as the sign of the end.
    local outer = ("sh -c %s; st=$?; stty -a > %s.part; mv %s.part %s; echo $st > %s.part; mv %s.part %s; sleep 60")
      :format(tmp.quote(inner), tmp.quote(f.stty), tmp.quote(f.stty), tmp.quote(f.stty),
              tmp.quote(f.status), tmp.quote(f.status), tmp.quote(f.status))
    local term = tmux.start("sig" .. runs, nil, outer)
    -- Ended with the test, whatever happened: the next shell needs the monitor.
    finally(function()
      term:stop()
      local pid = tonumber(tmp.read(f.pid) or "")
      if pid then proc.wait_until(function() return not proc.alive(pid) end, 10) end
    end)
    term:wait_for("\nqmp>", 10, true)
    return term, f
  end

  -- The shell's exit status once it ended, and the terminal's modes then.
  local function ended(f)
    assert(proc.wait_until(function() return tmp.read(f.status) ~= nil end, 10),
           "the shell did not end")
    return tonumber(tmp.read(f.status)), tmp.read(f.stty)
  end

  local function assert_terminal_restored(stty)
    assert.matches("%f[%w-]icanon", stty)
    assert.matches("%f[%w-]echo%f[^%w]", stty)
    assert.not_matches("%-icanon", stty)
    assert.not_matches("%-echo%f[^%w]", stty)
  end

  -- Type text and Enter, then wait for the line and what follows it (shown).
  local function enter(term, text, shown)
    term:type(text)
    term:keys("Enter")
    term:wait_for("qmp> " .. text .. "\n" .. (shown or ""), nil, true)
  end

  it("Ctrl-C cancels an empty or half-typed line, a command to a stopped QEMU and a Lua loop; Ctrl-D leaves", function()
    local term, f = start_shell()
    term:keys("C-c")
    term:wait_for("qmp> ^C\nqmp>", nil, true)
    term:type("query-sta")
    term:wait_for("qmp> query-sta\n", nil, true)   -- as typed, before the Ctrl-C
    term:keys("C-c")
    term:wait_for("qmp> query-sta^C\nqmp>", nil, true)
    -- A command whose reply cannot come: QEMU is stopped.
    assert(os.execute("kill -STOP " .. machine.pid))
    enter(term, "query-status")
    term:keys("C-c")
    term:wait_for("interrupted: query-status's reply, if QEMU sends one, will be dropped\nqmp>", nil, true)
    assert(os.execute("kill -CONT " .. machine.pid))
    -- The late reply is dropped: the next command gets its own.
    enter(term, "query-name", "{}\nqmp>")
    enter(term, "while true do end")
    term:keys("C-c")
    term:wait_for("\ninterrupted\nqmp>", nil, true)
    enter(term, "1 + 1", "2\nqmp>")
    term:keys("C-d")
    local status, stty = ended(f)
    assert.are.equal(0, status)
    assert_terminal_restored(stty)
    local history = f.home .. "/.qmp-lua_history"
    assert.are.equal("600", tmp.mode(history))
    assert.matches("query%-status\nquery%-name\nwhile true do end\n1 %+ 1\n", tmp.read(history))
  end)

  it("names a typo as an unknown command with the closest name, and leaves Lua alone", function()
    local term, f = start_shell()
    enter(term, "stpo", "unknown command stpo; did you mean stop?\nqmp>")
    enter(term, "system_rest now", "unknown command system_rest; did you mean system_reset?\nqmp>")
    enter(term, "query-stauts", "unknown command query-stauts; did you mean query-stats?\nqmp>")
    enter(term, "x = 41", "qmp>")
    enter(term, "x + 1", "42\nqmp>")
    enter(term, ":quit")
    assert.are.equal(0, (ended(f)))
  end)

  for _, case in ipairs({ { "TERM", 143 }, { "HUP", 129 } }) do
    it(("SIG%s at a half-typed line leaves with status %d, the terminal restored and the history written")
       :format(case[1], case[2]), function()
      local term, f = start_shell()
      enter(term, "query-name", "{}\nqmp>")
      term:type("query-sta")
      term:wait_for("qmp> query-sta", nil, true)
      local pid = assert(tonumber(tmp.read(f.pid)))
      assert(os.execute(("kill -%s %d"):format(case[1], pid)))
      local status, stty = ended(f)
      assert.are.equal(case[2], status)
      assert_terminal_restored(stty)
      local history = f.home .. "/.qmp-lua_history"
      assert.are.equal("600", tmp.mode(history))
      assert.are.equal("query-name\n", tmp.read(history))
      assert.not_matches("traceback", term:screen())
    end)
  end
end)
