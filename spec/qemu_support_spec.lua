-- The QEMU launcher used by the #qemu specs (support.qemu), which starts
-- QEMU through qmp.machine.
local qmp = require "qmp"
local qemu = require "support.qemu"
local proc = require "support.proc"
local tmp = require "support.tmp"
local unix = require "socket.unix"

local cleanup = require("support.cleanup")(after_each)

-- Lines from the monitor until one mentions "QMP" (the greeting).
local function greeting(path)
  local conn = assert(unix.stream())
  conn:settimeout(TEST_TIMEOUT)
  assert(conn:connect(path))
  local seen = {}
  for _ = 1, 20 do
    local line, err = conn:receive("*l")
    if not line then seen[#seen + 1] = "<" .. err .. ">" break end
    seen[#seen + 1] = line
    if line:find('"QMP"', 1, true) then break end
  end
  conn:close()
  return table.concat(seen, "\n")
end

-- Whether pid exists at all: a zombie, not yet reaped, does.
local function exists(pid)
  return tmp.read("/proc/" .. pid .. "/stat") ~= nil
end

describe("support.qemu #qemu", function()
  if not qemu.available() then
    pending("qemu-system-x86_64 is not installed")
    return
  end

  local vm
  after_each(function()
    if vm then vm:stop() end
    vm = nil
  end)

  it("starts QEMU with a QMP socket, and stop() quits it: reaped, its directory gone", function()
    vm = qemu.start()
    assert.is_true(vm:alive())
    assert.is_true(tmp.exists(vm.sock))
    assert.matches('"QMP"', greeting(vm.sock), 1, true)
    -- qmp.machine's own monitor is up beside the socket.
    assert.equal(vm.pid, vm.machine.pid)
    assert.equal("prelaunch", assert(vm.machine.vm:execute("query-status")).status)
    local pid, dir = vm.pid, vm.dir
    vm:stop()
    vm:stop()
    -- quit did it (a signal step would have waited 2 s first), and nothing is left.
    assert.same({ how = "quit", status = 0 }, vm.ended)
    assert.is_false(exists(pid))
    assert.is_false(tmp.exists(dir))
  end)

  it("offers a pretty-printing monitor", function()
    vm = qemu.start({ pretty = true })
    local text = greeting(vm.sock)
    assert.matches('^{\n%s+"QMP"', text)
  end)

  it("opens a qtest socket on request", function()
    vm = qemu.start({ qtest = true })
    assert.is_true(proc.listening(vm.qtest_sock))
    assert.matches('"QMP"', greeting(vm.sock), 1, true)
  end)

  it("notices QEMU exiting by itself", function()
    vm = qemu.start()
    local conn = assert(unix.stream())
    conn:settimeout(TEST_TIMEOUT)
    assert(conn:connect(vm.sock))
    conn:receive("*l")
    conn:send('{"execute": "qmp_capabilities"}\n')
    conn:receive("*l")
    conn:send('{"execute": "quit"}\n')
    assert.is_true(vm:wait_exit(TEST_TIMEOUT), vm:log())
    conn:close()
    assert.same({ status = 0 }, vm.machine.exit)
    vm:stop()
    assert.same({ how = "exited", status = 0 }, vm.ended)
  end)

  it("stops a QEMU a spec killed by its pid, and reaps it", function()
    vm = qemu.start()
    local pid = vm.pid
    proc.kill(pid, "KILL")
    assert.is_true(proc.wait_exit(pid, TEST_TIMEOUT))   -- a zombie counts as gone
    assert.is_false(vm:alive())
    vm:stop()
    assert.equal(9, vm.ended.signal)
    assert.is_false(exists(pid))
  end)

  it("reports QEMU's own error when it cannot start", function()
    local ok, err = pcall(qemu.start, { args = { "-no-such-option" } })
    assert.is_false(ok)
    assert.matches("no%-such%-option", err)
    assert.matches("exited with status 1", err)
  end)

  it("keeps QEMU's stderr while it runs and after stop; in a caller's directory, as qemu.log", function()
    local dir = tmp.dir("qemulog")
    cleanup(function() tmp.remove(dir) end)
    -- A warning at start, then a trace line for each command QEMU receives.
    vm = qemu.start({ dir = dir, args = { "-global", "no-such-device.x=1", "-trace", "handle_qmp_command" } })
    assert.matches("no%-such%-device%.x", vm:log())
    local client = assert(qmp.connect(vm.sock, { timeout = TEST_TIMEOUT }))
    cleanup(function() client:close() end)
    assert(client:execute("query-name"))
    assert.is_true(proc.wait_until(function() return vm:log():find("query-name", 1, true) ~= nil end, TEST_TIMEOUT),
                   vm:log())
    vm:stop()
    local kept = vm:log()
    assert.matches("no%-such%-device%.x", kept)
    assert.matches("query-name", kept, 1, true)
    assert.equal(kept, tmp.read(dir .. "/qemu.log"))
  end)

  it("is not held up by its own monitor, which nobody reads until stop", function()
    vm = qemu.start()
    -- 2,000 events (STOP, RESUME), more than a socket buffer holds unread:
    -- QEMU keeps them for the machine's monitor and goes on answering here.
    local client = assert(qmp.connect(vm.sock, { timeout = TEST_TIMEOUT }))
    cleanup(function() client:close() end)
    for _ = 1, 1000 do
      assert(client:execute("cont"))
      assert(client:execute("stop"))
    end
    assert.equal(2000, client.stats.events)
    vm:stop()
    assert.same({ how = "quit", status = 0 }, vm.ended)
  end)
end)
