-- The event catalogue: one known type per QEMU event, the seed documents'
-- examples decode to them, the helpers, and the generated table of docs/events.md.
local qmp = require "qmp"
local catalogue = require "qmp.catalogue"
local seeds = require "fixtures.seed_events"
local event_table = require "support.event_table"
local tmp = require "support.tmp"
local qemu = require "support.qemu"

local cleanup = require("support.cleanup")(after_each)

local by_name = {}
for _, e in ipairs(catalogue) do by_name[e.name] = e end

local function read(path) return assert(tmp.read(path), "cannot read " .. path) end

local function lines(path)
  local list = {}
  for line in read(path):gmatch("[^\n]+") do list[#list + 1] = line end
  return list
end

-- The 26 event types of the later seed document.
local SEED_NAMES = {
  "BALLOON_CHANGE", "BLOCK_IMAGE_CORRUPTED", "BLOCK_IO_ERROR", "BLOCK_JOB_CANCELLED",
  "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR", "BLOCK_JOB_READY", "DEVICE_DELETED",
  "DEVICE_TRAY_MOVED", "GUEST_PANICKED", "NIC_RX_FILTER_CHANGED", "RESET", "RESUME",
  "RTC_CHANGE", "SHUTDOWN", "SPICE_CONNECTED", "SPICE_DISCONNECTED", "SPICE_INITIALIZED",
  "STOP", "SUSPEND", "SUSPEND_DISK", "VNC_CONNECTED", "VNC_DISCONNECTED", "VNC_INITIALIZED",
  "WAKEUP", "WATCHDOG",
}

-- Events QEMU added after 7.2, up to 10.0.
local AFTER_7_2 = { "CPU_POLARIZATION_CHANGE", "HV_BALLOON_STATUS_REPORT", "GUEST_PVSHUTDOWN",
                    "VFIO_MIGRATION", "NETDEV_VHOST_USER_CONNECTED", "NETDEV_VHOST_USER_DISCONNECTED" }

local THROTTLED = { "RTC_CHANGE", "WATCHDOG", "BALLOON_CHANGE", "QUORUM_FAILURE", "QUORUM_REPORT_BAD",
                    "VSERPORT_CHANGE", "MEMORY_DEVICE_SIZE_CHANGE", "HV_BALLOON_STATUS_REPORT",
                    "BLOCK_IO_ERROR" }

local JSON_KINDS = { string = true, int = true, bool = true, number = true, object = true, array = true }

local function version(v)
  return type(v) == "string" and v:match("^%d+%.%d+$") ~= nil
end

local function vnum(v)
  local major, minor = v:match("^(%d+)%.(%d+)$")
  return tonumber(major) * 1000 + tonumber(minor)
end

local function event(json) return assert(qmp.decode(json)) end

-- The seed example of name from document doc ("full" unless given).
local function seed(name, doc)
  for _, s in ipairs(seeds) do
    if s.name == name and s.doc == (doc or "full") then return event(s.json) end
  end
  error("no seed example of " .. name)
end

describe("the event catalogue", function()
  it("has one well-formed entry per event name", function()
    local seen = {}
    for i, e in ipairs(catalogue) do
      local where = "entry " .. i .. " (" .. tostring(e.name) .. ")"
      assert.matches("^[A-Z][A-Z0-9_]*$", e.name, where)
      assert.is_nil(seen[e.name], where .. " twice")
      seen[e.name] = true
      assert.is_string(e.doc, where)
      assert.is_nil(e.doc:find("\n"), where .. ": doc is one line")
      assert.is_true(#e.doc > 10, where)
      assert.is_true(version(e.since), where .. ": since")
      if e.removed then assert.is_true(vnum(e.removed) > vnum(e.since), where) end
      assert.is_table(e.fields, where)
      assert.is_table(e.first, where)
      for _, k in ipairs(e.first) do assert.is_table(e.fields[k], where .. ": first " .. k) end
      for member, f in pairs(e.fields) do
        local at = where .. "." .. member
        assert.is_string(f.type, at)
        assert.is_true(JSON_KINDS[f.type] or f.type:match("^[A-Z][%w]*$") ~= nil, at .. ": type " .. f.type)
        assert.is_string(f.doc, at)
        assert.is_nil(f.doc:find("\n"), at)
        assert.is_true(f.optional == nil or f.optional == true, at)
        if f.since then
          assert.is_true(version(f.since), at)
          assert.is_true(vnum(f.since) > vnum(e.since), at .. ": since is newer than the event")
        end
      end
      assert.is_true(e.throttled == nil or e.throttled == true, where)
      assert.equal(e.throttled == true, e.throttle ~= nil, where .. ": throttle goes with throttled")
    end
    assert.is_true(#catalogue >= 58)
  end)

  it("covers the seed documents, QEMU 7.2 and the events added up to 10.0", function()
    for _, name in ipairs(SEED_NAMES) do assert.is_table(by_name[name], name) end
    local seven = lines("spec/fixtures/qemu-7.2-events.txt")
    assert.equal(52, #seven)
    for _, name in ipairs(seven) do assert.is_table(by_name[name], name) end
    for _, name in ipairs(AFTER_7_2) do
      assert.is_table(by_name[name], name)
      assert.is_true(vnum(by_name[name].since) > vnum("7.2"), name)
    end
    for _, name in ipairs({ "MEM_UNPLUG_ERROR", "RDMA_GID_STATUS_CHANGED" }) do
      assert.equal("9.1", by_name[name].removed, name)
    end
  end)

  it("marks exactly the events QEMU rate-limits", function()
    local want = {}
    for _, name in ipairs(THROTTLED) do want[name] = true end
    for _, e in ipairs(catalogue) do
      assert.equal(want[e.name] == true, e.throttled == true, e.name)
    end
    local t = by_name.BLOCK_IO_ERROR.throttle
    assert.same({ key = "qom-path", since = "9.2", unless = { action = "stop" } }, t)
    assert.equal("node-name", by_name.QUORUM_REPORT_BAD.throttle.key)
  end)

  it("lists old and new members of SHUTDOWN, RESET and BLOCK_IO_ERROR", function()
    for _, name in ipairs({ "SHUTDOWN", "RESET" }) do
      assert.equal("bool", by_name[name].fields.guest.type)
      assert.equal("ShutdownCause", by_name[name].fields.reason.type)
    end
    local f = by_name.BLOCK_IO_ERROR.fields
    for _, m in ipairs({ "device", "node-name", "operation", "action", "nospace", "reason", "qom-path" }) do
      assert.is_table(f[m], m)
    end
    assert.equal("9.2", f["qom-path"].since)
    assert.is_true(f.nospace.optional)
  end)
end)

-- Facts the catalogue once had wrong, as QEMU's git history has them (the
-- first release whose schema, or before 2.1 whose code, has the thing).
local CORRECTED = {
  { "RESUME.since", "0.13" },                         -- QEMU's doc note says 0.12; 0.12.x never sent it
  { "RTC_CHANGE.fields.qom-path.since", "7.0" },      -- was 7.2; 6.2 lacks it
  { "BLOCK_IO_ERROR.fields.reason.since", "2.2" },    -- was 2.8; came with nospace
  { "RTC_CHANGE.throttle.since", "1.2" },             -- rate limits began in 1.2
  { "WATCHDOG.throttle.since", "1.2" },
}

describe("the catalogue's corrected facts", function()
  -- "RTC_CHANGE.fields.qom-path.since" -> by_name.RTC_CHANGE.fields["qom-path"].since
  local function fact(path)
    local v = by_name
    for key in path:gmatch("[^.]+") do
      assert.is_table(v, path)
      v = v[key]
    end
    return v
  end

  for _, c in ipairs(CORRECTED) do
    it(c[1] .. " is " .. c[2], function()
      assert.equal(c[2], fact(c[1]))
    end)
  end
end)

describe("catalogue types", function()
  it("exist from the start, known, with the catalogue's data", function()
    local listed = {}
    for name, T in pairs(qmp.events) do listed[name] = T end
    for _, e in ipairs(catalogue) do
      local T = listed[e.name]
      assert.is_table(T, e.name .. " listed by pairs(qmp.events)")
      assert.equal(e.name, T.name)
      assert.is_true(T.known, e.name)
      assert.equal(e.doc, T.doc)
      assert.equal(e.since, T.since)
      assert.equal(e.throttled, T.throttled)
      assert.same(e.first, T.first)
      for member, f in pairs(e.fields) do
        assert.equal(f.type, T.fields[member].type, e.name .. "." .. member)
      end
    end
  end)

  it("are copies: completing a type leaves the catalogue alone", function()
    assert.are_not.equal(by_name.SHUTDOWN.fields, qmp.events.SHUTDOWN.fields)
    assert.are_not.equal(qmp.events.SHUTDOWN.fields, qmp.events.RESET.fields)
  end)

  it("stay open for extension", function()
    finally(function() qmp.events.STOP.mine = nil end)
    function qmp.events.STOP:mine() return "mine " .. self.event end
    assert.equal("mine STOP", event('{"event": "STOP"}'):mine())
  end)

  it("give an unknown name a type with known == false", function()
    local ev = event('{"event": "__com.example_FOO", "data": {"x": 1}}')
    local T = getmetatable(ev)
    assert.equal(qmp.events["__com.example_FOO"], T)
    assert.is_false(T.known)
    assert.is_nil(T.doc)
    assert.equal(1, ev.x)
  end)

  it("read a documented member the event lacks as nil, not as a type field", function()
    local ev = event('{"event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/machine/peripheral/n0"}}')
    assert.is_nil(ev.name)
    assert.equal("/machine/peripheral/n0", ev.path)
    assert.equal("NIC_RX_FILTER_CHANGED", getmetatable(ev).name)
  end)

  it("put the first members first in tostring", function()
    local ev = event('{"event": "BLOCK_WRITE_THRESHOLD", "data": {"write-threshold": 100,'
                     .. ' "amount-exceeded": 5, "node-name": "disk0"},'
                     .. ' "timestamp": {"seconds": 1700000000, "microseconds": 5}}')
    assert.matches("BLOCK_WRITE_THRESHOLD node%-name=disk0 amount%-exceeded=5 write%-threshold=100$", tostring(ev))
    ev = event('{"event": "BLOCK_IO_ERROR", "data": {"reason": "Input/output error", "action": "stop",'
               .. ' "operation": "read", "device": "", "qom-path": "/machine/peripheral/vd0", "x-extra": 1}}')
    assert.matches('BLOCK_IO_ERROR qom%-path=/machine/peripheral/vd0 device="" operation=read action=stop'
                   .. ' reason="Input/output error" x%-extra=1$', tostring(ev))
  end)

  -- %q wrote a newline as a backslash and a newline, and a word without
  -- spaces as it was, escape sequences and all.
  it("keep tostring one line, the peer's control bytes escaped, whatever the names and strings hold", function()
    local ev = event('{"event": "X\\nY", "data": {"a b": "c\\nd", "esc": "\\u001b[2J", "q": "say \\"hi\\"",'
                     .. ' "u": "\u{e9}t\u{e9}", "w": "plain"}, "timestamp": {"seconds": 1, "microseconds": 2}}')
    local line = tostring(ev)
    assert.falsy(line:find("%c"), line)
    assert.matches(' "X\\nY" "a b"="c\\nd" esc="\\u001b%[2J" q="say \\"hi\\"" u="\u{e9}t\u{e9}" w=plain$', line)
    local raw = setmetatable({ event = "R", data = { b = "\255\0x" } }, qmp.events.R)
    assert.matches(' R b="\\xff\\u0000x"$', tostring(raw))   -- not UTF-8: high bytes as \xNN
  end)
end)

describe("the seed documents' examples", function()
  it("cover every seed event name", function()
    local have = {}
    for _, s in ipairs(seeds) do have[s.name] = true end
    for _, name in ipairs(SEED_NAMES) do assert.is_true(have[name], name) end
    assert.equal(36, #seeds)
  end)

  it("decode to their known type with every member readable and documented", function()
    for i, s in ipairs(seeds) do
      local where = s.doc .. " #" .. i .. " " .. s.name
      local ev, err = qmp.decode(s.json)
      assert(ev, where .. ": " .. tostring(err))
      assert.equal(s.name, ev.event, where)
      assert.equal(qmp.events[s.name], getmetatable(ev), where)
      assert.is_true(getmetatable(ev).known, where)
      assert.is_true(ev:is(s.name), where)
      for member, value in pairs(ev.data) do
        assert.equal(value, ev[member], where .. ": ev." .. member)
        assert.is_table(qmp.events[s.name].fields[member], where .. ": " .. member .. " in the catalogue")
      end
      assert.is_string(tostring(ev))
    end
  end)
end)

describe("event helpers", function()
  it("progress: offset / len, nil without a usable len", function()
    local ev = event('{"event": "BLOCK_JOB_CANCELLED", "data": {"type": "stream", "device": "vd0",'
                     .. ' "len": 10737418240, "offset": 134217728, "speed": 0}}')
    assert.near(0.0125, ev:progress(), 1e-12)
    assert.equal(1, event('{"event": "BLOCK_JOB_COMPLETED", "data": {"len": 4, "offset": 4}}'):progress())
    assert.is_nil(event('{"event": "BLOCK_JOB_READY", "data": {"len": 0, "offset": 0}}'):progress())
    assert.is_nil(event('{"event": "BLOCK_JOB_READY", "data": {"device": "vd0"}}'):progress())
    assert.is_nil(event('{"event": "BLOCK_JOB_ERROR", "data": {"device": "vd0"}}'):progress())
    assert.is_nil(event('{"event": "BLOCK_JOB_PENDING"}'):progress())
  end)

  it("failed: a job or a dump that ended in error", function()
    assert.is_true(event('{"event": "BLOCK_JOB_COMPLETED", "data": {"error": "Input/output error"}}'):failed())
    assert.is_false(event('{"event": "BLOCK_JOB_COMPLETED", "data": {"len": 1, "offset": 1}}'):failed())
    assert.is_true(event('{"event": "DUMP_COMPLETED", "data": {"result": {"status": "failed"}}}'):failed())
    assert.is_false(event('{"event": "DUMP_COMPLETED", "data": {"result": {"status": "completed",'
                          .. ' "completed": 5, "total": 5}}}'):failed())
  end)

  it("by_guest: true, false, or nil for an event from before 2.10", function()
    assert.is_true(event('{"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}'):by_guest())
    assert.is_false(event('{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}'):by_guest())
    assert.is_nil(event('{"event": "SHUTDOWN"}'):by_guest())
    assert.is_nil(event('{"event": "RESET", "data": {}}'):by_guest())
  end)

  it("client_address and server_address for VNC and SPICE", function()
    local vnc = seed("VNC_CONNECTED")
    assert.equal("127.0.0.1:58425", vnc:client_address())
    assert.equal("0.0.0.0:5901", vnc:server_address())
    local spice = seed("SPICE_INITIALIZED")
    assert.equal("127.0.0.1:49004", spice:client_address())
    assert.equal("127.0.0.1:5921", spice:server_address())
    local v6 = event('{"event": "VNC_DISCONNECTED", "data": {"client": {"host": "::1", "service": "40000",'
                     .. ' "family": "ipv6", "websocket": false}}}')
    assert.equal("[::1]:40000", v6:client_address())
    assert.is_nil(v6:server_address())
    local unix = event('{"event": "VNC_CONNECTED", "data": {"client": {"host": "", "service": "",'
                       .. ' "family": "unix", "websocket": false}}}')
    assert.equal("", unix:client_address())
  end)

  it("panic_info and hyperv_args, with a uint64 argument", function()
    local ev = event('{"event": "GUEST_PANICKED", "data": {"action": "pause", "info": {"type": "hyper-v",'
                     .. ' "arg1": 18446744073709551615, "arg2": 0, "arg3": 1, "arg4": 2, "arg5": 3}}}')
    assert.equal("hyper-v", ev:panic_info().type)
    local args = ev:hyperv_args()
    assert.equal(5, #args)
    assert.equal(qmp.uint64("18446744073709551615"), args[1])
    assert.equal("18446744073709551615", tostring(args[1]))
    assert.same({ 0, 1, 2, 3 }, { args[2], args[3], args[4], args[5] })
    local s390 = event('{"event": "GUEST_CRASHLOADED", "data": {"action": "run", "info": {"type": "s390",'
                       .. ' "core": 0, "psw-mask": 1, "psw-addr": 2, "reason": "disabled-wait"}}}')
    assert.equal("s390", s390:panic_info().type)
    assert.is_nil(s390:hyperv_args())
    local old = seed("GUEST_PANICKED")  -- from before info existed
    assert.is_nil(old:panic_info())
    assert.is_nil(old:hyperv_args())
  end)

  it("stopped_vm for BLOCK_IO_ERROR", function()
    assert.is_true(seed("BLOCK_IO_ERROR", "early"):stopped_vm())
    assert.is_false(event('{"event": "BLOCK_IO_ERROR", "data": {"action": "report"}}'):stopped_vm())
  end)

  it("peer_address for NETDEV_STREAM_CONNECTED", function()
    local function peer(addr)
      return event('{"event": "NETDEV_STREAM_CONNECTED", "data": {"netdev-id": "n0", "addr": ' .. addr .. '}}')
             :peer_address()
    end
    assert.equal("127.0.0.1:40000", peer('{"type": "inet", "host": "127.0.0.1", "port": "40000"}'))
    assert.equal("/tmp/s", peer('{"type": "unix", "path": "/tmp/s"}'))
    assert.equal("vsock:3:1024", peer('{"type": "vsock", "cid": "3", "port": "1024"}'))
    assert.is_nil(event('{"event": "NETDEV_STREAM_CONNECTED", "data": {"netdev-id": "n0"}}'):peer_address())
  end)
end)

describe("the event table of docs/events.md", function()
  it("is the output of spec/support/event_table.lua", function()
    local block = event_table.block(read("docs/events.md"))
    assert.is_string(block, "docs/events.md has no " .. event_table.BEGIN .. " block")
    assert.equal(event_table.render(), block)
  end)

  it("has a row per catalogue entry", function()
    local rows = 0
    for _ in event_table.render():gmatch("\n| `") do rows = rows + 1 end
    assert.equal(#catalogue, rows)
  end)
end)

describe("the QEMU 7.2 event list #qemu", function()
  it("matches a live QEMU's query-qmp-schema", function()
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local vm = assert(qmp.connect(machine.sock, { timeout = 10 }))
    cleanup(function() vm:close() end)
    local v = vm.greeting.QMP.version.qemu
    if v.major ~= 7 or v.minor ~= 2 then
      pending(("QEMU %d.%d here: the fixture is for 7.2"):format(v.major, v.minor))
      return
    end
    local entities = assert(vm:execute("query-qmp-schema", nil, { timeout = 30 }))
    local live = {}
    for _, e in ipairs(entities) do
      if e["meta-type"] == "event" then live[#live + 1] = e.name end
    end
    table.sort(live)
    assert.same(lines("spec/fixtures/qemu-7.2-events.txt"), live)
  end)
end)
