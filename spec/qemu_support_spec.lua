-- The QEMU launcher used by the #qemu specs and the demo.
local qemu = require "support.qemu"
local proc = require "support.proc"
local tmp = require "support.tmp"
local unix = require "socket.unix"

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

  it("starts QEMU with a QMP socket and stops it", function()
    vm = qemu.start()
    assert.is_true(vm:alive())
    assert.is_true(tmp.exists(vm.sock))
    assert.matches('"QMP"', greeting(vm.sock), 1, true)
    local pid, dir = vm.pid, vm.dir
    vm:stop()
    vm:stop()
    assert.is_false(proc.alive(pid))
    assert.is_false(tmp.exists(dir .. "/qemu.log"))
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
  end)

  it("reports QEMU's own error when it cannot start", function()
    local ok, err = pcall(qemu.start, { args = { "-no-such-option" } })
    assert.is_false(ok)
    assert.matches("no%-such%-option", err)
  end)
end)
