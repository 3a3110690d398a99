-- Real events from a real QEMU (TCG, -M pc -S, no guest OS): each recipe makes
-- QEMU emit one or more event types, and each event must come back typed
-- (getmetatable(ev) == qmp.events.NAME) with integer timestamps and members
-- of the right Lua types. support.event_census counts the distinct names
-- checked; the last test wants at least 20.
local qmp = require "qmp"
local qemu = require "support.qemu"
local disks = require "support.disks"
local tmp = require "support.tmp"
local census = require "support.event_census"
local socket = require "socket"
local unix = require "socket.unix"

local cleanup = require("support.cleanup")(after_each)

local T = TEST_TIMEOUT or 10

-- expect(name, members, vm:wait(...)): the event (or the wait's nil, err)
-- checked against its type; members maps a member to a Lua type name, or
-- to "integer" for an exact integer.
local function expect(name, members, ev, err)
  assert(ev, name .. ": " .. tostring(err))
  assert.equal(name, ev.event)
  assert.equal(qmp.events[name], getmetatable(ev))
  assert.is_true(ev:is(name))
  assert.equal("integer", math.type(ev.timestamp.seconds))
  assert.equal("integer", math.type(ev.timestamp.microseconds))
  assert.is_true(ev.timestamp.seconds > 1000000000, name .. ": timestamp")
  assert.is_table(ev.data)
  for member, kind in pairs(members or {}) do
    local value = ev[member]
    assert.equal(value, ev.data[member], name .. "." .. member .. " read through the event")
    if kind == "integer" then
      assert.equal("integer", math.type(value), name .. "." .. member)
    else
      assert.equal(kind, type(value), name .. "." .. member)
    end
  end
  census.record(ev)
  return ev
end

local function execute(vm, command, args)
  local ret, err = vm:execute(command, args)
  assert(ret, command .. ": " .. tostring(err))
  return ret
end

local function blockdev_add(vm, args)
  return execute(vm, "blockdev-add", args)
end

-- An unused TCP port on the loopback (bound then released).
local function free_port()
  local s = assert(socket.tcp())
  assert(s:bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return math.tointeger(tonumber(port))
end

local JOB = { type = "string", device = "string", len = "integer", offset = "integer", speed = "integer" }

describe("real QEMU run-state and device events #qemu", function()
  local machine, vm

  setup(function()
    machine = qemu.start({ args = { "-device", "ide-cd,id=cd0,bus=ide.1",
      "-device", "qemu-xhci,id=xhci" } })
    vm = assert(qmp.connect(machine.sock, { timeout = T, name = "run-state" }))
  end)

  teardown(function()
    if vm then vm:close() end
    if machine then machine:stop() end
  end)

  it("RESUME and STOP", function()
    execute(vm, "cont")
    expect("RESUME", {}, vm:wait("RESUME", nil, T))
    execute(vm, "stop")
    local ev = expect("STOP", {}, vm:wait("STOP", nil, T))
    assert.same({}, ev.data)
  end)

  it("RESET from system_reset", function()
    execute(vm, "system_reset")
    local ev = expect("RESET", { guest = "boolean", reason = "string" },
      vm:wait("RESET", { guest = false }, T))
    assert.is_false(ev.guest)
    assert.equal("host-qmp-system-reset", ev.reason)
  end)

  it("POWERDOWN from system_powerdown", function()
    execute(vm, "system_powerdown")
    expect("POWERDOWN", {}, vm:wait("POWERDOWN", nil, T))
  end)

  it("DEVICE_TRAY_MOVED from eject", function()
    execute(vm, "eject", { id = "cd0", force = true })
    local ev = expect("DEVICE_TRAY_MOVED", { device = "string", id = "string", ["tray-open"] = "boolean" },
      vm:wait("DEVICE_TRAY_MOVED", { id = "cd0" }, T))
    assert.is_true(ev["tray-open"])
  end)

  it("DEVICE_DELETED from unplugging a USB tablet", function()
    execute(vm, "device_add", { driver = "usb-tablet", id = "tab0", bus = "xhci.0" })
    execute(vm, "device_del", { id = "tab0" })
    local ev = expect("DEVICE_DELETED", { device = "string", path = "string" },
      vm:wait("DEVICE_DELETED", { device = "tab0" }, T))
    assert.equal("/machine/peripheral/tab0", ev.path)
  end)

  it("SHUTDOWN from quit", function()
    execute(vm, "quit")
    local ev = expect("SHUTDOWN", { guest = "boolean", reason = "string" }, vm:wait("SHUTDOWN", nil, T))
    assert.is_false(ev.guest)
    assert.equal("host-qmp-quit", ev.reason)
    assert.is_true(machine:wait_exit(T))
  end)
end)

describe("real QEMU block events #qemu", function()
  local machine, vm

  setup(function()
    machine = qemu.start({})
    vm = assert(qmp.connect(machine.sock, { timeout = T, name = "block" }))
    blockdev_add(vm, { driver = "null-co", ["node-name"] = "src", size = 1 << 30 })
    blockdev_add(vm, { driver = "null-co", ["node-name"] = "dst", size = 1 << 30 })
  end)

  teardown(function()
    if vm then vm:close() end
    if machine then machine:stop() end
  end)

  -- A fresh qcow2 image of size bytes made by QEMU itself (blockdev-create);
  -- returns the path and the name of its file node.
  local function create_qcow2(name, size)
    local path = machine.dir .. "/" .. name .. ".qcow2"
    tmp.write(path, "")
    blockdev_add(vm, { driver = "file", ["node-name"] = name .. "-file", filename = path })
    execute(vm, "blockdev-create", { ["job-id"] = "create-" .. name,
      options = { driver = "qcow2", file = name .. "-file", size = size } })
    expect("JOB_STATUS_CHANGE", { id = "string", status = "string" },
      vm:wait("JOB_STATUS_CHANGE", { id = "create-" .. name, status = "concluded" }, T))
    execute(vm, "job-dismiss", { id = "create-" .. name })
    return path, name .. "-file"
  end

  it("BLOCK_JOB_READY, BLOCK_JOB_COMPLETED and JOB_STATUS_CHANGE from a mirror", function()
    local life <close> = vm:listen("JOB_STATUS_CHANGE", { id = "m0" })  -- the whole life, from before it starts
    execute(vm, "blockdev-mirror", { ["job-id"] = "m0", device = "src", target = "dst", sync = "full" })
    local ready = expect("BLOCK_JOB_READY", JOB, vm:wait("BLOCK_JOB_READY", { device = "m0" }, T))
    assert.equal("mirror", ready.type)
    assert.equal(1 << 30, ready.len)
    execute(vm, "block-job-complete", { device = "m0" })
    local done = expect("BLOCK_JOB_COMPLETED", JOB, vm:wait("BLOCK_JOB_COMPLETED", { device = "m0" }, T))
    assert.equal("mirror", done.type)
    assert.equal(done.len, done.offset)
    assert.is_nil(done.error)
    -- The job's whole life, in order.
    for _, status in ipairs({ "created", "running", "ready", "waiting", "pending", "concluded", "null" }) do
      local ev = expect("JOB_STATUS_CHANGE", { id = "string", status = "string" }, life:wait(T))
      assert.equal(status, ev.status)
    end
  end)

  it("BLOCK_JOB_CANCELLED from cancelling a throttled backup", function()
    execute(vm, "blockdev-backup", { ["job-id"] = "b0", device = "src", target = "dst",
      sync = "full", speed = 1 })
    execute(vm, "block-job-cancel", { device = "b0", force = true })
    local ev = expect("BLOCK_JOB_CANCELLED", JOB, vm:wait("BLOCK_JOB_CANCELLED", { device = "b0" }, T))
    assert.equal("backup", ev.type)
    assert.is_true(ev.offset < ev.len)
    assert.equal(1, ev.speed)
  end)

  it("BLOCK_JOB_PENDING from a backup with auto-finalize off", function()
    execute(vm, "blockdev-backup", { ["job-id"] = "b1", device = "src", target = "dst",
      sync = "full", ["auto-finalize"] = false })
    local ev = expect("BLOCK_JOB_PENDING", { type = "string", id = "string" },
      vm:wait("BLOCK_JOB_PENDING", { id = "b1" }, T))
    assert.equal("backup", ev.type)
    execute(vm, "job-finalize", { id = "b1" })
    expect("BLOCK_JOB_COMPLETED", JOB, vm:wait("BLOCK_JOB_COMPLETED", { device = "b1" }, T))
  end)

  it("BLOCK_JOB_ERROR from a backup whose source fails to read", function()
    local img = machine.dir .. "/data.raw"
    tmp.write(img, string.rep("\xAA", 1 << 20))  -- data: zero areas would be skipped
    blockdev_add(vm, { driver = "raw", ["node-name"] = "bad-src", file = {
      driver = "blkdebug", ["inject-error"] = { { event = "read_aio", errno = 5 } },
      image = { driver = "file", filename = img } } })
    blockdev_add(vm, { driver = "null-co", ["node-name"] = "small-dst", size = 1 << 20 })
    execute(vm, "blockdev-backup", { ["job-id"] = "e0", device = "bad-src", target = "small-dst",
      sync = "full", ["on-source-error"] = "report" })
    local ev = expect("BLOCK_JOB_ERROR", { device = "string", operation = "string", action = "string" },
      vm:wait("BLOCK_JOB_ERROR", { device = "e0" }, T))
    assert.equal("read", ev.operation)
    assert.equal("report", ev.action)
    local done = expect("BLOCK_JOB_COMPLETED", JOB, vm:wait("BLOCK_JOB_COMPLETED", { device = "e0" }, T))
    assert.is_string(done.error)
  end)

  it("stream and commit jobs on qcow2 overlays", function()
    blockdev_add(vm, { driver = "null-co", ["node-name"] = "base", size = 1 << 20, ["read-zeroes"] = true })
    local _, top_file = create_qcow2("top", 1 << 20)
    blockdev_add(vm, { driver = "qcow2", ["node-name"] = "top", file = top_file, backing = "base" })
    execute(vm, "block-stream", { ["job-id"] = "s0", device = "top" })
    local streamed = expect("BLOCK_JOB_COMPLETED", JOB, vm:wait("BLOCK_JOB_COMPLETED", { device = "s0" }, T))
    assert.equal("stream", streamed.type)

    local _, top2_file = create_qcow2("top2", 1 << 20)
    blockdev_add(vm, { driver = "qcow2", ["node-name"] = "top2", file = top2_file, backing = "top" })
    execute(vm, "block-commit", { ["job-id"] = "c0", device = "top2" })
    local ready = expect("BLOCK_JOB_READY", JOB, vm:wait("BLOCK_JOB_READY", { device = "c0" }, T))
    assert.equal("commit", ready.type)
    execute(vm, "block-job-complete", { device = "c0" })
    local done = expect("BLOCK_JOB_COMPLETED", JOB, vm:wait("BLOCK_JOB_COMPLETED", { device = "c0" }, T))
    assert.equal("commit", done.type)
  end)

  it("BLOCK_WRITE_THRESHOLD from a write past the threshold", function()
    blockdev_add(vm, { driver = "null-co", ["node-name"] = "wt", size = 1 << 20 })
    execute(vm, "block-set-write-threshold", { ["node-name"] = "wt", ["write-threshold"] = 4096 })
    vm:hmp('qemu-io wt "write 0 65536"')
    local ev = expect("BLOCK_WRITE_THRESHOLD",
      { ["node-name"] = "string", ["amount-exceeded"] = "integer", ["write-threshold"] = "integer" },
      vm:wait("BLOCK_WRITE_THRESHOLD", { ["node-name"] = "wt" }, T))
    assert.equal(4096, ev["write-threshold"])
    assert.equal(65536 - 4096, ev["amount-exceeded"])
  end)

  it("QUORUM_REPORT_BAD from a quorum child that fails to read", function()
    local children = {}
    for i = 1, 3 do
      local path = machine.dir .. "/q" .. i .. ".raw"
      tmp.write(path, string.rep("\x55", 1 << 16))
      local file = { driver = "file", filename = path }
      if i == 3 then
        file = { driver = "blkdebug", ["inject-error"] = { { event = "read_aio", errno = 5 } }, image = file }
      end
      children[i] = { driver = "raw", file = file }
    end
    blockdev_add(vm, { driver = "quorum", ["node-name"] = "q", ["vote-threshold"] = 2, children = children })
    vm:hmp('qemu-io q "read 0 4096"')
    local ev = expect("QUORUM_REPORT_BAD", { type = "string", error = "string", ["node-name"] = "string",
      ["sector-num"] = "integer", ["sectors-count"] = "integer" }, vm:wait("QUORUM_REPORT_BAD", nil, T))
    assert.equal("read", ev.type)
    assert.equal(0, ev["sector-num"])
    assert.equal(8, ev["sectors-count"])
  end)

  it("BLOCK_EXPORT_DELETED from removing an NBD export", function()
    execute(vm, "nbd-server-start", { addr = { type = "unix", data = { path = machine.dir .. "/nbd.sock" } } })
    cleanup(function() vm:execute("nbd-server-stop") end)
    execute(vm, "block-export-add", { type = "nbd", id = "exp0", ["node-name"] = "dst" })
    execute(vm, "block-export-del", { id = "exp0" })
    expect("BLOCK_EXPORT_DELETED", { id = "string" }, vm:wait("BLOCK_EXPORT_DELETED", { id = "exp0" }, T))
  end)

  it("BLOCK_IMAGE_CORRUPTED from a qcow2 whose L1 table points at the refcount table", function()
    local path, file = create_qcow2("corrupt", 1 << 20)
    execute(vm, "blockdev-del", { ["node-name"] = file })
    -- Header: l1_table_offset at byte 40, refcount_table_offset at byte 48 (big endian).
    local header = tmp.read(path)
    local l1 = string.unpack(">I8", header, 41)
    local refcount_table = string.unpack(">I8", header, 49)
    local f = assert(io.open(path, "r+b"))
    f:seek("set", l1)
    f:write(string.pack(">I8", refcount_table | (1 << 63)))  -- L1[0], flagged COPIED
    f:close()
    blockdev_add(vm, { driver = "qcow2", ["node-name"] = "cq", file = { driver = "file", filename = path } })
    vm:hmp('qemu-io cq "write 0 4096"')
    vm:hmp('qemu-io cq "flush"')  -- the L2 (refcount table) write is checked here
    local ev = expect("BLOCK_IMAGE_CORRUPTED", { device = "string", ["node-name"] = "string", msg = "string",
      offset = "integer", size = "integer", fatal = "boolean" },
      vm:wait("BLOCK_IMAGE_CORRUPTED", { ["node-name"] = "cq" }, T))
    assert.is_true(ev.fatal)
    assert.equal(refcount_table, ev.offset)
    assert.matches("refcount table", ev.msg)
  end)
end)

describe("real QEMU events with an I/O error from the firmware #qemu", function()
  local dir, machine, vm

  setup(function()
    dir = tmp.dir("qemu")
    local img = dir .. "/disk.raw"
    tmp.write(img, string.rep("\0", 1 << 20))
    machine = qemu.start({ dir = dir, args = {
      "-blockdev", "driver=file,node-name=f0,filename=" .. img,
      "-blockdev", "driver=blkdebug,node-name=d0,image=f0,inject-error.0.event=read_aio,inject-error.0.errno=5",
      "-blockdev", "driver=raw,node-name=disk0,file=d0",
      "-device", "virtio-blk-pci,drive=disk0,cyls=2,heads=16,secs=63,rerror=stop,werror=stop" } })
    vm = assert(qmp.connect(machine.sock, { timeout = T, name = "io-error" }))
  end)

  teardown(function()
    if vm then vm:close() end
    if machine then machine:stop() end
    tmp.remove(dir)
  end)

  it("BLOCK_IO_ERROR with action stop, then STOP", function()
    execute(vm, "cont")
    local ev = expect("BLOCK_IO_ERROR", { device = "string", ["node-name"] = "string", operation = "string",
      action = "string", nospace = "boolean", reason = "string" },
      vm:wait("BLOCK_IO_ERROR", { ["node-name"] = "disk0" }, T))
    assert.equal("read", ev.operation)
    assert.equal("stop", ev.action)
    assert.is_false(ev.nospace)
    expect("STOP", {}, vm:wait("STOP", nil, T))
    assert.equal("io-error", execute(vm, "query-status").status)
  end)
end)

describe("real QEMU events with external peers #qemu", function()
  local dir, machine, vm, port, vnc_path

  setup(function()
    port = free_port()
    dir = tmp.dir("qemu")
    vnc_path = dir .. "/vnc.sock"
    machine = qemu.start({ dir = dir, args = { "-vnc", "unix:" .. vnc_path,
      "-netdev", "stream,id=n0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=" .. port } })
    vm = assert(qmp.connect(machine.sock, { timeout = T, name = "peers" }))
  end)

  teardown(function()
    if vm then vm:close() end
    if machine then machine:stop() end
    tmp.remove(dir)
  end)

  it("NETDEV_STREAM_CONNECTED and NETDEV_STREAM_DISCONNECTED from a TCP peer", function()
    local c = assert(socket.tcp())
    cleanup(function() c:close() end)
    c:settimeout(T)
    assert(c:connect("127.0.0.1", port))
    local _, local_port = c:getsockname()
    local ev = expect("NETDEV_STREAM_CONNECTED", { ["netdev-id"] = "string", addr = "table" },
      vm:wait("NETDEV_STREAM_CONNECTED", { ["netdev-id"] = "n0" }, T))
    assert.equal("inet", ev.addr.type)
    assert.equal("127.0.0.1", ev.addr.host)
    assert.equal(tostring(local_port), ev.addr.port)  -- QEMU sends the port as a string
    c:close()
    expect("NETDEV_STREAM_DISCONNECTED", { ["netdev-id"] = "string" },
      vm:wait("NETDEV_STREAM_DISCONNECTED", { ["netdev-id"] = "n0" }, T))
  end)

  it("VNC_CONNECTED, VNC_INITIALIZED and VNC_DISCONNECTED from an RFB 3.8 client", function()
    local c = assert(unix.stream())
    cleanup(function() c:close() end)
    c:settimeout(T)
    assert(c:connect(vnc_path))
    local version = assert(c:receive(12))
    assert.equal("RFB 003.008\n", version)
    assert(c:send(version))
    local n = assert(c:receive(1)):byte()
    local types = assert(c:receive(n))
    assert.truthy(types:find("\1", 1, true), "security type None offered")
    assert(c:send("\1"))                                       -- None
    assert.equal(0, string.unpack(">I4", assert(c:receive(4))))  -- SecurityResult: OK
    assert(c:send("\1"))                                       -- ClientInit, shared
    local init = assert(c:receive(24))                         -- ServerInit
    assert(c:receive(string.unpack(">I4", init, 21)))          -- desktop name

    local function check_vnc(name)
      local ev = expect(name, { server = "table", client = "table" }, vm:wait(name, nil, T))
      assert.equal("unix", ev.server.family)
      assert.equal(vnc_path, ev.server.service)
      assert.is_string(ev.server.host)
      assert.is_boolean(ev.server.websocket)
      assert.equal("unix", ev.client.family)
      assert.is_string(ev.client.host)
      assert.is_string(ev.client.service)
      assert.is_false(ev.client.websocket)
      return ev
    end
    check_vnc("VNC_CONNECTED")
    assert.equal("none", check_vnc("VNC_INITIALIZED").server.auth)
    c:close()
    check_vnc("VNC_DISCONNECTED")
  end)

  it("DUMP_COMPLETED from a detached dump-guest-memory", function()
    execute(vm, "dump-guest-memory", { paging = false, protocol = "file:" .. machine.dir .. "/core",
      detach = true })
    local ev = expect("DUMP_COMPLETED", { result = "table" }, vm:wait("DUMP_COMPLETED", nil, T))
    assert.is_nil(ev.error)
    assert.equal("completed", ev.result.status)
    assert.equal("integer", math.type(ev.result.total))
    assert.equal(ev.result.total, ev.result.completed)
  end)

  it("MIGRATION and MIGRATION_PASS from a migration to a pipe", function()
    execute(vm, "migrate-set-capabilities", { capabilities = { { capability = "events", state = true } } })
    -- A detached dump (the test before) blocks migration until its thread
    -- has cleaned up, which may be just after DUMP_COMPLETED.
    local deadline = socket.gettime() + T
    while true do
      local ok, err = vm:execute("migrate", { uri = "exec:cat > /dev/null" })
      if ok then break end
      assert(err.kind == "qmp" and tostring(err.desc):find("dump", 1, true)
        and socket.gettime() < deadline, "migrate: " .. tostring(err))
      socket.sleep(0.01)
    end
    for _, status in ipairs({ "setup", "active", "completed" }) do
      local ev = expect("MIGRATION", { status = "string" }, vm:wait("MIGRATION", { status = status }, T))
      assert.equal(status, ev.status)
    end
    local pass = expect("MIGRATION_PASS", { pass = "integer" }, vm:wait("MIGRATION_PASS", nil, T))
    assert.equal(1, pass.pass)
  end)
end)

describe("real QEMU guest-side events driven over qtest #qemu", function()
  local dir, machine, vm, qt

  -- One qtest command; QEMU answers each line with "OK" (or "FAIL ...").
  local function qtest(line)
    assert(qt:send(line .. "\n"))
    local reply = assert(qt:receive("*l"))
    assert.equal("OK", reply, line)
  end

  setup(function()
    -- No guest code: with SeaBIOS, the guest's POST would select CMOS
    -- registers on port 0x70 between this test's index and data writes.
    dir = tmp.dir("qemu")
    local bios = disks.halt_firmware(dir)
    machine = qemu.start({ dir = dir, qtest = true, args = { "-bios", bios, "-device", "pvpanic", "-device", "ib700",
      "-action", "panic=pause", "-action", "watchdog=pause" } })
    vm = assert(qmp.connect(machine.sock, { timeout = T, name = "qtest" }))
    qt = assert(unix.stream())
    qt:settimeout(T)
    assert(qt:connect(machine.qtest_sock))
  end)

  teardown(function()
    if qt then qt:close() end
    if vm then vm:close() end
    if machine then machine:stop() end
    tmp.remove(dir)
  end)

  -- Running, whatever the last test left.
  local function running()
    if not execute(vm, "query-status").running then
      execute(vm, "cont")
      assert(vm:wait("RESUME", nil, T))
    end
  end

  it("GUEST_PANICKED from the pvpanic port", function()
    running()
    qtest("outb 0x505 0x1")
    local ev = expect("GUEST_PANICKED", { action = "string" }, vm:wait("GUEST_PANICKED", nil, T))
    assert.equal("pause", ev.action)
    assert.is_nil(ev.info)  -- pvpanic says nothing more
  end)

  it("GUEST_CRASHLOADED from the pvpanic port", function()
    running()
    qtest("outb 0x505 0x2")
    local ev = expect("GUEST_CRASHLOADED", { action = "string" }, vm:wait("GUEST_CRASHLOADED", nil, T))
    assert.equal("run", ev.action)
  end)

  it("WATCHDOG from an expiring ib700", function()
    running()
    qtest("outb 0x443 0x0f")
    local ev = expect("WATCHDOG", { action = "string" }, vm:wait("WATCHDOG", nil, T))
    assert.equal("pause", ev.action)
  end)

  it("RTC_CHANGE from CMOS writes, throttled to a sample of the burst #timing", function()
    running()
    local rtc <close> = vm:listen("RTC_CHANGE")
    local t0 = socket.gettime()
    for i = 1, 10 do
      qtest("outb 0x70 0x0")                       -- seconds register
      qtest(("outb 0x71 0x%02d"):format(i * 5))  -- BCD
    end
    local first = expect("RTC_CHANGE", { offset = "integer", ["qom-path"] = "string" }, rtc:wait(T))
    -- QEMU sends the first at once and holds the rest back for a second.
    -- When the burst fits in that second (unless the machine is starved),
    -- a single event has come for ten writes well under a second later, and
    -- the held one carries the last write: second 50 where the first wrote 5,
    -- so 45 s on, less the wall clock between them (rounded, 0 or 1 s).
    local early = rtc:wait(0.2)
    local whole = socket.gettime() - t0 < 0.9
    if whole then assert.is_nil(early) end
    local last = expect("RTC_CHANGE", { offset = "integer", ["qom-path"] = "string" }, early or rtc:wait(3))
    assert.equal(first["qom-path"], last["qom-path"])
    local moved = last.offset - first.offset
    if whole then
      assert(moved == 45 or moved == 44, ("offset moved %d s, want 44 or 45"):format(moved))
      assert.is_nil(rtc:wait(0.1))
    else  -- a later write's sample
      assert.is_true(moved > 0, moved)
    end
  end)
end)

describe("real QEMU event coverage #qemu", function()
  it("checked at least 20 distinct event types", function()
    local names = census.names()
    assert(#names >= 20, ("only %d event types: %s"):format(#names, table.concat(names, " ")))
  end)
end)
