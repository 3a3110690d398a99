-- The client against a real QEMU (TCG, -M pc -S, no disk, no guest OS).
local qmp = require "qmp"
local qemu = require "support.qemu"

local CD = { "-device", "ide-cd,id=cd0,bus=ide.1" }

describe("a real QEMU #qemu", function()
  local machine, vm

  setup(function()
    machine = qemu.start({ args = CD })
    vm = assert(qmp.connect(machine.sock, { timeout = 10, name = "spec" }))
  end)

  teardown(function()
    if vm then vm:close() end
    if machine then machine:stop() end
  end)

  it("greets with its version and offers oob", function()
    local v = vm.greeting.QMP.version.qemu
    assert.equal("integer", math.type(v.major))
    assert.is_true(v.major >= 7)
    assert.is_true(vm.oob)
  end)

  it("answers query-status", function()
    local st = assert(vm:execute("query-status"))
    assert.equal("prelaunch", st.status)
    assert.is_false(st.running)
  end)

  it("starts and stops, with typed RESUME and STOP seen by wait()", function()
    assert.same({}, assert(vm:execute("cont")))
    local resume = assert(vm:wait("RESUME", nil, 5))
    assert.equal(qmp.events.RESUME, getmetatable(resume))
    assert.equal("integer", math.type(resume.timestamp.seconds))
    assert.equal("running", assert(vm:execute("query-status")).status)
    -- QEMU sends STOP before the reply to stop: wait() must still find it.
    for _ = 1, 5 do
      assert(vm:execute("stop"))
      local stop = assert(vm:wait("STOP", nil, 5))
      assert.equal(qmp.events.STOP, getmetatable(stop))
      assert.same({}, stop.data)
      assert(vm:execute("cont"))
      assert(vm:wait("RESUME", nil, 5))
    end
    assert(vm:execute("stop"))
    assert(vm:wait("STOP", nil, 5))
    assert.equal("paused", assert(vm:execute("query-status")).status)
  end)

  it("types RESET with its reason", function()
    assert(vm:execute("system_reset"))
    local ev = assert(vm:wait("RESET", { guest = false }, 5))
    assert.equal("host-qmp-system-reset", ev.reason)
    assert.is_true(ev:time() > 1e9)
    assert.matches("RESET", tostring(ev))
  end)

  it("reports the CD tray opening", function()
    assert(vm:execute("eject", { id = "cd0", force = true }))
    local ev = assert(vm:wait("DEVICE_TRAY_MOVED", { id = "cd0" }, 5))
    assert.is_true(ev["tray-open"])
    assert.matches("tray%-open=true", tostring(ev))
  end)

  it("returns CommandNotFound and GenericError as kind qmp", function()
    local _, err = vm:execute("no-such-command")
    assert.equal("qmp", err.kind)
    assert.equal("CommandNotFound", err.class)
    local _, err2 = vm:execute("blockdev-del", { ["node-name"] = "nope" })
    assert.equal("qmp", err2.kind)
    assert.equal("GenericError", err2.class)
    assert.matches("nope", err2.desc)
  end)

  it("runs HMP commands, giving their lines with \\n ends and no last line end", function()
    local text = assert(vm:hmp("info status"))
    assert.matches("^VM status: paused[^\r\n]*$", text)
    local help = assert(vm:hmp("help info"))     -- many lines
    assert.is_true(select(2, help:gsub("\n", "")) > 10)
    assert.is_nil(help:find("\r", 1, true))
    assert.not_equal("\n", help:sub(-1))
  end)

  it("reads a large reply: query-qmp-schema", function()
    local schema = assert(vm:execute("query-qmp-schema", nil, { timeout = 20 }))
    assert.is_true(#schema > 1000)
    local events = 0
    for _, entity in ipairs(schema) do
      if entity["meta-type"] == "event" then events = events + 1 end
    end
    assert.is_true(events > 40)
  end)

  it("passes a file descriptor with getfd", function()
    local socket = require "socket"
    local u = assert(socket.udp())
    finally(function() u:close() end)
    assert(u:setsockname("127.0.0.1", 0))  -- luasocket creates the fd lazily
    assert.same({}, assert(vm:execute("getfd", { fdname = "spec-fd" }, { fds = { u:getfd() } })))
    assert.same({}, assert(vm:execute("closefd", { fdname = "spec-fd" })))
    local _, err = vm:execute("closefd", { fdname = "spec-fd" })
    assert.equal("qmp", err.kind)
  end)

  it("runs an out-of-band command", function()
    local _, err = vm:execute_oob("migrate-pause")
    -- No migration runs, so QEMU refuses; what matters is that the reply came back matched.
    assert.equal("qmp", err.kind)
  end)
end)

describe("a real QEMU with pretty=on #qemu", function()
  it("is understood", function()
    local machine = qemu.start({ pretty = true })
    finally(function() machine:stop() end)
    local vm <close> = assert(qmp.connect(machine.sock, { timeout = 10 }))
    assert.equal("prelaunch", assert(vm:execute("query-status")).status)
    assert(vm:execute("cont"))
    assert(vm:wait("RESUME", nil, 5))
  end)
end)

describe("quitting a real QEMU #qemu", function()
  it("gives SHUTDOWN, then kind closed", function()
    local machine = qemu.start({})
    finally(function() machine:stop() end)
    local vm <close> = assert(qmp.connect(machine.sock, { timeout = 10 }))
    assert(vm:execute("quit"))
    local ev = assert(vm:wait("SHUTDOWN", nil, 5))
    assert.is_false(ev.guest)
    assert.equal("host-qmp-quit", ev.reason)
    local _, err = vm:execute("query-status")
    assert.equal("closed", err.kind)
    assert.is_true(machine:wait_exit(10))
  end)
end)

describe("a real QEMU stopped with SIGSTOP #qemu", function()
  it("is named in the greeting timeout by its pid, saying to send SIGCONT", function()
    local proc = require "support.proc"
    local peer = require "qmp.peer"
    local machine = qemu.start({})
    finally(function()
      proc.kill(machine.pid, "CONT")
      machine:stop()
    end)
    proc.kill(machine.pid, "STOP")
    assert(proc.wait_until(function() return peer.state(machine.pid) == "T" end, TEST_TIMEOUT))
    -- The kernel takes the connection into the listen backlog; QEMU never accepts it.
    local vm, err = qmp.connect(machine.sock, { timeout = 0.5 })
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.equal(("timeout: no QMP greeting from %s within 0.5 s: QEMU (pid %d) is stopped (SIGSTOP?): " ..
                  "send it SIGCONT"):format(machine.sock, machine.pid), tostring(err))
  end)
end)
