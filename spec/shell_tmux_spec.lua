-- `qmp-lua shell` in a real terminal: tmux runs it on a private server,
-- the spec types with send-keys and reads the screen with capture-pane.
-- The QEMU has two monitors: the shell's, and a second one through which
-- the spec causes events while the operator "types".  The tests share one
-- shell and run in order (the VM is in prelaunch until the event test).
local qmp = require "qmp"
local qemu = require "support.qemu"
local proc = require "support.proc"
local tmp = require "support.tmp"
local tmux = require "support.tmux"
local count = require("support.text").count

local WAIT = tmux.WAIT

describe("qmp-lua shell in a terminal #qemu", function()
  local machine, mon, home, run, cwd   -- run: the shell's command line

  local term   -- the terminal (support.tmux), made in setup
  local function wait_for_screen(pattern, seconds, plain) return term:wait_for(pattern, seconds, plain) end
  local function keys(...) term:keys(...) end
  local function type_text(text) term:type(text) end

  -- An empty line on a clear screen.
  local function fresh()
    keys("C-e", "C-u", "C-l")
    wait_for_screen("^qmp>\n\n")
  end

  setup(function()
    local dir = tmp.dir("shell")
    machine = qemu.start({ dir = dir, args = { "-qmp", "unix:" .. dir .. "/qmp2.sock,server=on,wait=off" } })
    assert(proc.wait_until(function() return proc.listening(dir .. "/qmp2.sock") end, 10))
    mon = assert(qmp.connect(dir .. "/qmp2.sock", { timeout = 10, name = "spec" }))
    home = dir .. "/home"
    assert(os.execute("mkdir " .. tmp.quote(home)))
    tmp.write(home .. "/inputrc", "")   -- readline's defaults, whatever this machine's /etc/inputrc says
    -- The shell twice in a row (the second run proves the history); `timeout` bounds each.
    run = ("HOME=%s INPUTRC=%s timeout --foreground 60 bin/qmp-lua shell %s"):format(
      tmp.quote(home), tmp.quote(home .. "/inputrc"), tmp.quote(machine.sock))
    local pwd = assert(io.popen("pwd"))
    cwd = pwd:read("l")
    pwd:close()
    term = tmux.start("shell", { cwd = cwd, width = 160, height = 50 },
                      run .. '; echo "[shell exited $?]"; ' .. run .. '; echo "[shell exited $?]"; sleep 60')
    wait_for_screen("connected to " .. machine.sock .. " (QEMU 7.", 10, true)
    wait_for_screen("\nqmp>")
  end)

  teardown(function()
    if term then term:stop() end
    if mon then mon:close() end
    if machine then
      machine:stop()
      tmp.remove(machine.dir)
    end
  end)

  it("Tab completes a command name; twice more lists the candidates", function()
    fresh()
    type_text("query-bl")
    keys("Tab")
    wait_for_screen("^qmp> query%-block\n")   -- the common prefix
    -- readline: the Tab after one that changed the line only rings; the next lists
    keys("Tab", "Tab")
    local text = wait_for_screen("query%-blockstats")
    assert.matches("\nquery%-block +query%-block%-exports +query%-block%-jobs +query%-blockstats\n", text)
    fresh()
    type_text("query-sta")
    keys("Tab")
    wait_for_screen("^qmp> query%-stat\n")
    keys("Tab", "Tab")
    wait_for_screen("\nquery%-stats +query%-stats%-schemas +query%-status\n")
  end)

  it("Tab completes an argument name and an enum value", function()
    fresh()
    type_text("block-job-cancel dev")
    keys("Tab")
    wait_for_screen("^qmp> block%-job%-cancel device=\n")
    fresh()
    type_text("blockdev-add driver=qco")
    keys("Tab")
    wait_for_screen("^qmp> blockdev%-add driver=qcow\n")
    keys("Tab", "Tab")
    wait_for_screen("\nqcow +qcow2\n")
    keys("2")
    wait_for_screen("\nqmp> blockdev%-add driver=qcow2\n")
  end)

  it("runs a command and prints its result", function()
    fresh()
    type_text("query-status")
    keys("Enter")
    local text = wait_for_screen('"status": "prelaunch"', WAIT, true)
    assert.matches('"running": false', text, 1, true)
    wait_for_screen("}\nqmp>\n")
  end)

  it("runs Lua: expressions, locals kept for later lines, vm bound", function()
    fresh()
    type_text("1+1")
    keys("Enter")
    wait_for_screen("^qmp> 1%+1\n2\nqmp>")
    type_text("local x = 41")
    keys("Enter")
    type_text("x+1")
    keys("Enter")
    wait_for_screen("\nqmp> x%+1\n42\nqmp>")
    type_text('vm:execute("query-status").status')
    keys("Enter")
    wait_for_screen('\n"prelaunch"\nqmp>')
  end)

  it("shows an event between prompts while a line is half typed, and keeps the line", function()
    fresh()
    type_text("query-sta")
    wait_for_screen("^qmp> query%-sta\n")
    assert(mon:execute("cont"))
    assert(mon:execute("stop"))
    local text = wait_for_screen(" STOP\nqmp> query%-sta\n")
    assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d+ RESUME\n", text)
    type_text("tus")
    keys("Enter")
    text = wait_for_screen('"status": "paused"', WAIT, true)
    assert.matches("\nqmp> query%-status\n{", text)
  end)

  it(":help NAME shows a command's arguments", function()
    fresh()
    type_text(":help block-job-cancel")
    keys("Enter")
    local text = wait_for_screen("force: bool, optional", WAIT, true)
    assert.matches("device: str", text, 1, true)
  end)

  it(":hmp passes a human monitor command through", function()
    fresh()
    type_text(":hmp info status")
    keys("Enter")
    wait_for_screen("\nVM status: paused\nqmp>")
  end)

  it("shows an error's class and text, and goes on", function()
    fresh()
    type_text("block-job-cancel device=nope")
    keys("Enter")
    wait_for_screen("error: DeviceNotActive: ", WAIT, true)
    type_text("2+3")
    keys("Enter")
    wait_for_screen("\nqmp> 2%+3\n5\nqmp>")
  end)

  it(":events off hides the events, :events on shows them again", function()
    fresh()
    type_text(":events off")
    keys("Enter")
    wait_for_screen("\nevents: off\nqmp>")
    assert(mon:execute("cont"))   -- RESUME, hidden
    -- QEMU wrote RESUME to the shell's monitor before it answers the shell's
    -- next command: once that answer shows, the shell has had the event.
    type_text("query-status")
    keys("Enter")
    wait_for_screen('"status": "running"', WAIT, true)
    type_text(":events on")
    keys("Enter")
    wait_for_screen("\nevents: all\nqmp>")
    assert(mon:execute("stop"))
    local text = wait_for_screen(" STOP\nqmp>")
    assert.is_nil(text:find("RESUME", 1, true), "the hidden event showed:\n" .. text)
  end)

  it("keeps the history across runs", function()
    fresh()
    type_text("vm.name")
    keys("Enter")
    wait_for_screen('\n"' .. machine.sock .. '"\nqmp>', WAIT, true)
    keys("C-d")
    wait_for_screen("[shell exited 0]", WAIT, true)
    local history = tmp.read(home .. "/.qmp-lua_history") or ""
    assert.matches("\nvm%.name\n?$", history)
    assert.matches("query-status\n", history, 1, true)
    -- the second run
    local text = wait_for_screen("%[shell exited 0%]\nconnected to [^\n]*\nqmp>")
    assert.equal(1, count(text, "connected to "))   -- only the second run's (the first was cleared)
    keys("Up")
    wait_for_screen("\nqmp> vm%.name\n")
    keys("Enter")
    wait_for_screen('\nqmp> vm.name\n"' .. machine.sock .. '"\nqmp>', WAIT, true)
    keys("C-d")
    wait_for_screen("%[shell exited 0%]\n.*%[shell exited 0%]")
  end)

  it("says when the connection is lost, and Lua goes on", function()
    term:stop()   -- a terminal of its own: the first one's shells have ended
    term = tmux.start("lost", { cwd = cwd, width = 160, height = 50 }, run .. "; echo '[third run over]'; sleep 60")
    wait_for_screen("\nqmp>")
    assert(mon:execute("quit"))   -- QEMU goes away under the shell
    wait_for_screen("connection lost: ", WAIT, true)
    type_text("1+2")
    keys("Enter")
    wait_for_screen("\nqmp> 1%+2\n3\nqmp>")
    keys("C-d")
    wait_for_screen("[third run over]", WAIT, true)
  end)
end)
