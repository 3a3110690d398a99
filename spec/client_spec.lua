-- The client against a scripted fake QMP peer: the protocol's edge cases.
local qmp = require "qmp"
local core_poll = require("qmp.core").poll
local fake = require "support.fake_qmp"
local raises = require "support.raises"
local tmp = require "support.tmp"

local EV = fake.event
local OK = fake.reply("{}")

local opening = fake.opening

local cleanup = require("support.cleanup")(after_each)

local serve, connect = fake.bound(cleanup)
local monotime = qmp.monotime

local function socket_path() return tmp.socket_path(cleanup) end

describe("qmp.connect()", function()
  it("reads the greeting and negotiates oob when it is offered", function()
    local srv = serve(opening({ { wait_close = true } }))
    local vm = connect(srv)
    assert.equal(7, vm.greeting.QMP.version.qemu.major)
    assert.is_true(vm.oob)
    vm:close()
    assert.is_true(srv:wait(5))
    assert.matches('"enable":%["oob"%]', srv:received()[1])
  end)

  it("negotiates without arguments when oob is not offered", function()
    local srv = serve({ { greet = { capabilities = {} } }, { expect = "qmp_capabilities", reply = OK },
                        { wait_close = true } })
    local vm = connect(srv)
    assert.is_false(vm.oob)
    local ret, err = vm:execute_oob("migrate-pause")
    assert.is_nil(ret)
    assert.equal("unsupported", err.kind)
    vm:close()
    srv:wait(5)
    assert.not_matches("arguments", srv:received()[1])
  end)

  it("keeps events sent before the greeting and during negotiation, in order", function()
    local srv = serve({
      { send = EV("VSERPORT_CHANGE", '{"id": "c0", "open": true}') },
      { greet = true },
      { expect = "qmp_capabilities" },
      { send = EV("RTC_CHANGE", '{"offset": 1, "qom-path": "/machine/unattached/device[0]"}') },
      { send = '{"return": {}, "id": %ID}\r\n' },
      { wait_close = true },
    })
    local vm = connect(srv)
    local list = {}
    vm:on("*", function(ev) list[#list + 1] = ev end)   -- registered after connect: still sees them
    assert.equal(1, assert(vm:wait("RTC_CHANGE", nil, 1)).offset)       -- and so do waits
    assert.equal("c0", assert(vm:wait("VSERPORT_CHANGE", nil, 1)).id)
    assert(vm:step())
    assert.equal(2, #list)
    assert.equal("VSERPORT_CHANGE", list[1].event)
    assert.equal("RTC_CHANGE", list[2].event)
  end)

  it("times out on a peer that never greets", function()
    local srv = serve({ { hold = 10 } })
    local t0 = qmp.monotime()
    local vm, err = qmp.connect(srv.path, { timeout = 0.3 })
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.matches("greeting", tostring(err))
    assert.is_true(qmp.monotime() - t0 < 3)
  end)

  it("rejects a peer that is not a QMP monitor", function()
    local srv = serve({ { send = '{"hello": "world"}\r\n' }, { hold = 5 } })
    local vm, err = qmp.connect(srv.path, { timeout = 2 })
    assert.is_nil(vm)
    assert.equal("protocol", err.kind)
    assert.matches("greeting", err.message)
  end)

  it("reports a failed negotiation as a protocol error", function()
    local srv = serve({ { greet = true },
      { expect = "qmp_capabilities",
        reply = '{"error": {"class": "GenericError", "desc": "nope"}, "id": %ID}' }, { hold = 5 } })
    local vm, err = qmp.connect(srv.path, { timeout = 2 })
    assert.is_nil(vm)
    assert.equal("protocol", err.kind)
    assert.matches("negotiation failed.*nope", err.message)
  end)

  it("returns refused for a missing socket", function()
    local vm, err = qmp.connect("/nonexistent/dir/qmp.sock", { timeout = 1 })
    assert.is_nil(vm)
    assert.equal("refused", err.kind)
    assert.matches("no socket at /nonexistent/dir/qmp.sock", tostring(err))
  end)

  it("raises for a socket path longer than sun_path", function()
    assert.has_error(function() qmp.connect("/" .. ("x"):rep(200)) end)
    local ok, msg = pcall(qmp.connect, "/" .. ("x"):rep(200))
    assert.is_false(ok)
    assert.matches("too long", msg)
  end)

  it("raises on misuse of its options", function()
    assert.has_error(function() qmp.connect("/tmp/x.sock", { timeout = "soon" }) end)
    assert.has_error(function() qmp.connect("/tmp/x.sock", 5) end)
    assert.has_error(function() qmp.connect(42) end)
    assert.has_error(function() qmp.connect("tcp:localhost") end)
  end)

  it("checks the peer uid with expect_uid", function()
    local srv = serve(opening({ { wait_close = true } }))
    local vm, err = qmp.connect(srv.path, { timeout = 2, expect_uid = 4242 })
    assert.is_nil(vm)
    assert.equal("denied", err.kind)
    local me = tonumber(io.popen("id -u"):read("l"))
    local srv2 = serve(opening({ { wait_close = true } }))
    local vm2 = connect(srv2, { timeout = 2, expect_uid = me })
    assert.equal(me, vm2.peer.uid)
  end)

  it("accepts an fd the caller already has", function()
    local socket = require "socket.unix"
    local srv = serve(opening({ { expect = "query-status", reply = fake.reply('{"status": "running"}') },
                                { wait_close = true } }))
    local c = assert(socket())
    assert(c:connect(srv.path))
    local fd = c:getfd()
    c:setfd(-1)  -- the qmp connection owns it now
    local vm = assert(qmp.connect({ fd = fd }, { timeout = 2 }))
    cleanup(function() vm:close() end)
    assert.equal("running", assert(vm:execute("query-status")).status)
  end)
end)

describe("vm:execute()", function()
  it("returns the return member, matching replies by id", function()
    local srv = serve(opening({
      { expect = "query-status", reply = fake.reply('{"status": "running", "running": true}') },
      { wait_close = true },
    }))
    local vm = connect(srv)
    local st = assert(vm:execute("query-status"))
    assert.equal("running", st.status)
    assert.equal(2, vm.stats.replies)  -- qmp_capabilities, then query-status
  end)

  it("sends the arguments as JSON with exact integers", function()
    local srv = serve(opening({ { expect = "block_set_io_throttle", expect_args = '"bps":1000000000000000', reply = OK },
                                { wait_close = true } }))
    local vm = connect(srv)
    assert(vm:execute("block_set_io_throttle", { bps = 1000000000000000 }))
  end)

  it("keeps events that arrive while a command waits, in order", function()
    local srv = serve(opening({
      { expect = "stop" },
      { send = EV("STOP") .. EV("BLOCK_JOB_READY", '{"device": "j0", "len": 1, "offset": 1, "speed": 0, "type": "mirror"}') },
      { send = '{"return": {}, "id": %ID}\r\n' .. EV("RESUME") },
      { wait_close = true },
    }))
    local vm = connect(srv)
    assert(vm:execute("stop"))
    local stop = assert(vm:wait("STOP", nil, 1))
    assert.equal(qmp.events.STOP, getmetatable(stop))
    assert.equal("j0", assert(vm:wait("BLOCK_JOB_*", nil, 1)).device)
    assert.equal("RESUME", assert(vm:wait({ "RESUME", "STOP" }, nil, 1)).event)
  end)

  it("returns a QMP error as kind qmp with class and desc", function()
    local srv = serve(opening({
      { expect = "nope", reply = '{"id": %ID, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}' },
      { wait_close = true },
    }))
    local vm = connect(srv)
    local ret, err = vm:execute("nope")
    assert.is_nil(ret)
    assert.equal("qmp", err.kind)
    assert.equal("CommandNotFound", err.class)
    assert.equal("The command nope has not been found", err.desc)
    assert.equal("qmp: nope: CommandNotFound: The command nope has not been found", tostring(err))
    assert.not_matches("\n", tostring(err))
  end)

  it("takes an id-less error as the answer to the command in flight", function()
    local srv = serve(opening({
      { expect = "x", reply = '{"error": {"class": "GenericError", "desc": "JSON parse error"}}' },
      { wait_close = true },
    }))
    local vm = connect(srv)
    local _, err = vm:execute("x")
    assert.equal("qmp", err.kind)
    assert.equal("JSON parse error", err.desc)
  end)

  it("reports a reply with neither return nor error", function()
    local srv = serve(opening({ { expect = "x", reply = '{"id": %ID}' }, { wait_close = true } }))
    local vm = connect(srv)
    local _, err = vm:execute("x")
    assert.equal("protocol", err.kind)
  end)

  it("drops a late reply after a timeout and answers the next command correctly", function()
    local srv = serve(opening({
      { expect = "slow" },
      { sleep = 0.4 },
      { send = '{"return": "late", "id": %ID}\r\n' },
      { expect = "fast", reply = fake.reply('"fast"') },
      { wait_close = true },
    }))
    local vm = connect(srv)
    local ret, err = vm:execute("slow", nil, { timeout = 0.1 })
    assert.is_nil(ret)
    assert.equal("timeout", err.kind)
    assert.matches("slow", err.message)
    assert.equal("fast", assert(vm:execute("fast")))
    assert.equal(1, vm.stats.stale)
  end)

  it("drops and counts replies with unknown ids", function()
    local srv = serve(opening({
      { expect = "q" },
      { send = '{"return": "bogus", "id": "someone-else"}\r\n{"return": 7, "id": 12}\r\n' },
      { send = '{"return": "mine", "id": %ID}\r\n' },
      { wait_close = true },
    }))
    local vm = connect(srv)
    assert.equal("mine", assert(vm:execute("q")))
    assert.equal(2, vm.stats.unknown)
  end)

  it("works when every byte arrives on its own", function()
    local srv = serve({
      { send = fake.greeting, chunk = 1 },
      { expect = "qmp_capabilities" },
      { send = '{"return": {}, "id": %ID}\r\n', chunk = 1 },
      { expect = "query-name" },
      { send = EV("STOP") .. '{"return": {"name": "vm-1"}, "id": %ID}\r\n', chunk = 3 },
      { wait_close = true },
    })
    local vm = connect(srv)
    assert.equal("vm-1", assert(vm:execute("query-name")).name)
    assert.equal("STOP", assert(vm:wait("STOP", nil, 1)).event)
  end)

  it("understands a pretty=on monitor", function()
    local srv = serve({
      { send = '{\r\n    "QMP": {\r\n        "version": {\r\n            "qemu": {"micro": 22, "minor": 2, "major": 7},\r\n' ..
               '            "package": ""\r\n        },\r\n        "capabilities": [\r\n            "oob"\r\n        ]\r\n    }\r\n}\r\n' },
      { expect = "qmp_capabilities", reply = '{\r\n    "return": {\r\n    },\r\n    "id": %ID\r\n}' },
      { expect = "query-status", reply = '{\r\n    "return": {\r\n        "status": "prelaunch"\r\n    },\r\n    "id": %ID\r\n}' },
      { wait_close = true },
    })
    local vm = connect(srv)
    assert.equal("prelaunch", assert(vm:execute("query-status")).status)
  end)

  it("passes HMP through with vm:hmp(), without the last line end", function()
    local srv = serve(opening({
      { expect = "human-monitor-command", expect_args = '"command%-line":"info status"',
        reply = fake.reply('"VM status: paused (prelaunch)\\r\\n"') },
      { wait_close = true },
    }))
    local vm = connect(srv)
    assert.equal("VM status: paused (prelaunch)", assert(vm:hmp("info status")))
  end)

  it("gives HMP's lines with \\n ends, taking off exactly one line end at the end", function()
    local srv = serve(opening({
      { expect = "human-monitor-command", reply = fake.reply('"a: 1\\r\\nb: 2\\r\\n"') },
      { expect = "human-monitor-command", reply = fake.reply('"one\\r\\n\\r\\n"') },
      { expect = "human-monitor-command", reply = fake.reply('"lf only\\n"') },
      { expect = "human-monitor-command", reply = fake.reply('"no end\\rhere"') },
      { wait_close = true },
    }))
    local vm = connect(srv)
    assert.equal("a: 1\nb: 2", assert(vm:hmp("info a")))
    assert.equal("one\n", assert(vm:hmp("info b")))       -- a blank last line stays
    assert.equal("lf only", assert(vm:hmp("info c")))
    assert.equal("no end\rhere", assert(vm:hmp("info d")))   -- a lone \r is the text's own
  end)

  it("takes an HMP reply that is not text as a protocol error, the session going on", function()
    local srv = serve(opening({
      { expect = "human-monitor-command", reply = fake.reply("{}") },
      { expect = "human-monitor-command", reply = fake.reply('""') },
      { wait_close = true },
    }))
    local vm = connect(srv)
    local text, err = vm:hmp("info status")
    assert.is_nil(text)
    assert.equal("protocol", err.kind)
    assert.equal("human-monitor-command returned a table, not text", err.message)
    assert.equal("", assert(vm:hmp("info status")))
  end)

  it("sends exec-oob when oob was negotiated", function()
    local srv = serve(opening({ { expect = "migrate-pause", expect_args = '"exec%-oob"', reply = OK },
                                { wait_close = true } }))
    local vm = connect(srv)
    assert.same({}, assert(vm:execute_oob("migrate-pause")))
  end)

  it("raises on a NUL byte once, at the caller's line, with one prefix, sending nothing", function()
    local srv = serve(opening({ { wait_close = true } }))
    local vm = connect(srv)
    local here = debug.getinfo(1, "S").short_src
    local function check(expected, line, ok, msg)
      assert.is_false(ok)
      assert.equal(("%s:%d: %s"):format(here, line, expected), msg)
      assert.equal(1, select(2, msg:gsub("%.lua:%d+:", "")), msg)    -- one location
      assert.equal(1, select(2, msg:gsub("qmp: ", "")), msg)         -- one prefix
    end
    check("qmp: execute: x: a string in the command holds a NUL byte, which QEMU refuses",
          debug.getinfo(1, "l").currentline + 1,
          pcall(vm.execute, vm, "x", { s = "a\0b" }))
    check("qmp: hmp: human-monitor-command: a string in the command holds a NUL byte, which QEMU refuses",
          debug.getinfo(1, "l").currentline + 1,
          pcall(vm.hmp, vm, "info \0"))
    vm:close()
    assert.is_true(srv:wait(5))
    assert.equal(1, #srv:received())   -- qmp_capabilities only
  end)

  it("raises on misuse", function()
    local srv = serve(opening({ { wait_close = true } }))
    local vm = connect(srv)
    assert.has_error(function() vm:execute(nil) end)
    assert.has_error(function() vm:execute("x", "not a table") end)
    assert.has_error(function() vm:execute("x", { f = print }) end)
    assert.has_error(function() vm:execute("x", nil, { timeout = -1 }) end)
  end)
end)

describe("vm:execute() with opts.fds", function()
  -- The list is checked whole before the command is queued.  Before, a list
  -- the socket write refuses (too many fds, a hole) passed the check of each
  -- fd, was queued, and the write raised inside the flush: the command stayed
  -- at the head of the output queue and every later command raised while
  -- vm.state said "ready".  A __len of 2^40 must not be walked to.
  local function lying(n) return setmetatable({ 0 }, { __len = function() return n end }) end

  it("raises at the caller's line for too many fds, a hole, other keys or a lying __len; nothing is sent and the client goes on", function()
    local srv = serve(opening({ { expect = "query-status", reply = fake.reply('{"status": "running"}') },
                                { wait_close = true } }))
    local vm = connect(srv)
    local many, max = {}, require("qmp.core").MAX_FDS
    for i = 1, 300 do many[i] = 0 end
    local over = table.move(many, 1, max + 1, 1, {})
    local cases = {
      { many, "fds: 300 file descriptors, but one command carries at most " .. max },
      { over, ("fds: %d file descriptors, but one command carries at most %d"):format(max + 1, max) },
      { { 0, nil, 0 }, "fds must be a list without holes: fds%[2%] is nil" },
      { { 0, [4] = 0 }, "fds must be a list without holes or other keys: it has the key 4" },
      { { 0, x = 0 }, 'fds must be a list without holes or other keys: it has the key "x"' },
      { lying(2 ^ 40), "fds has a __len that says 1099511627776%.0, but holds 1 fd" },
      { lying(2), "fds has a __len that says 2, but holds 1 fd" },
    }
    for _, case in ipairs(cases) do
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, msg = pcall(vm.execute, vm, "getfd", { fdname = "f" }, { fds = case[1] })
      assert.is_false(ok, case[2])
      assert.matches("client_spec%.lua:" .. line .. ": qmp: execute: " .. case[2], msg)
      assert.equal("ready", vm.state)
    end
    assert.equal(16, max)   -- the C core's limit, one number for both
    assert.equal("running", assert(vm:execute("query-status")).status)   -- not wedged
    vm:close()
    assert.is_true(srv:wait(5))
    assert.equal(2, #srv:received())   -- qmp_capabilities and query-status only
  end)
end)

describe("connection loss", function()
  it("fails the pending command with closed at EOF inside a message, keeping earlier events", function()
    local srv = serve(opening({ { expect = "query-status" },
                                { send = EV("STOP") .. '{"return": {"sta' }, { close = true } }))
    local vm = connect(srv)
    local ret, err = vm:execute("query-status")
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    assert.matches("bytes discarded", err.message)
    assert.is_true(vm:closed())
    assert.equal("STOP", assert(vm:wait("STOP", nil, 1)).event)
    local _, again = vm:execute("query-status")
    assert.equal("closed", again.kind)
  end)

  it("closes the connection on garbage from the peer", function()
    local srv = serve(opening({ { expect = "x" }, { send = "Welcome to HTTP\r\n" }, { hold = 5 } }))
    local vm = connect(srv)
    local _, err = vm:execute("x")
    assert.equal("closed", err.kind)
    assert.equal("protocol", err.cause.kind)
    assert.is_true(vm:closed())
  end)

  it("gives toolarge for a message over max_message", function()
    local srv = serve(opening({ { expect = "x" }, { send = '{"return": "' .. ("a"):rep(5000) .. '", "id": %ID}\r\n' },
                                { hold = 5 } }))
    local vm = connect(srv, { timeout = 5, max_message = 1000 })
    local _, err = vm:execute("x")
    assert.equal("toolarge", err.cause.kind)
  end)

  it("survives hostile nesting", function()
    local srv = serve(opening({ { expect = "x" }, { send = '{"return": ' .. ("["):rep(200000) }, { hold = 5 } }))
    local vm = connect(srv)
    local _, err = vm:execute("x")
    assert.equal("protocol", err.cause.kind)
    assert.matches("nesting", err.cause.message)
  end)

  it("treats quit as done even when QEMU closes first", function()
    local srv = serve(opening({ { expect = "quit" },
                                { send = EV("SHUTDOWN", '{"guest": false, "reason": "host-qmp-quit"}') },
                                { close = true } }))
    local vm = connect(srv)
    assert.same({}, assert(vm:execute("quit")))
    assert.is_false(assert(vm:wait("SHUTDOWN", nil, 1)).guest)
    local _, err = vm:execute("query-status")
    assert.equal("closed", err.kind)
  end)

  it("closes idempotently, and works as a to-be-closed variable", function()
    local srv = serve(opening({ { wait_close = true } }))
    do
      local vm <close> = assert(qmp.connect(srv.path, { timeout = 5 }))
      assert.is_false(vm:closed())
    end
    assert.is_true(srv:wait(5))
    local srv2 = serve(opening({ { wait_close = true } }))
    local vm = connect(srv2)
    vm:close()
    vm:close()
    local _, err = vm:execute("query-status")
    assert.equal("closed", err.kind)
    assert.matches("closed", tostring(vm))
  end)
end)

describe("event queue", function()
  it("skips events outside the interest set", function()
    local srv = serve(opening({ { expect = "x" }, { send = EV("RTC_CHANGE", '{"offset": 1}') .. EV("STOP") },
                                { send = '{"return": {}, "id": %ID}\r\n' }, { wait_close = true } }))
    local vm = connect(srv, { timeout = 5, events = { "STOP" } })
    local l <close> = vm:listen("*")
    assert(vm:execute("x"))
    assert.equal(1, l:size())
    assert.equal("STOP", l:next().event)
    assert.equal(1, vm.stats.skipped)
  end)

  it("counts and reports an overflow instead of losing events silently", function()
    local burst = {}
    for i = 1, 10 do burst[i] = EV("RTC_CHANGE", '{"offset": ' .. i .. '}') end
    local srv = serve(opening({ { expect = "x" }, { send = table.concat(burst) },
                                { send = '{"return": {}, "id": %ID}\r\n' }, { wait_close = true } }))
    local vm = connect(srv, { timeout = 5, max_queue = 4 })
    local reported = {}
    vm.on_error = function(err) reported[#reported + 1] = err end
    local left = {}
    vm:on("*", function(ev) left[#left + 1] = ev end)
    assert(vm:execute("x"))
    assert.equal(6, vm.stats.overflow)
    assert.equal(3, #reported)          -- the 1st, 2nd and 4th drop: once per power of two
    assert.equal("overflow", reported[1].kind)
    assert(vm:step())
    assert.equal(4, #left)
    assert.equal(7, left[1].offset)   -- the oldest went first
  end)

  it("step() reads what has arrived without waiting, and reports the end of the stream", function()
    local srv = serve(opening({ { sleep = 0.1 }, { send = EV("STOP") .. EV("RESUME") }, { close = true } }))
    local vm = connect(srv)
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev.event end)
    local t0 = qmp.monotime()
    assert.is_true(vm:step())
    assert.is_true(qmp.monotime() - t0 < 0.05)   -- nothing there yet: no waiting
    assert.same({}, seen)
    assert.equal("STOP", assert(vm:wait("STOP", nil, 2)).event)
    assert.equal("RESUME", assert(vm:wait("RESUME", nil, 1)).event)
    local ok, err
    for _ = 1, 100 do  -- the close follows the events; bounded
      core_poll({ vm:pollfd() }, 0.05)
      ok, err = vm:step()
      if not ok then break end
    end
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    assert.same({ "STOP", "RESUME" }, seen)   -- delivered before the end was reported
  end)

  it("wait() times out with kind timeout", function()
    local srv = serve(opening({ { hold = 5 } }))
    local vm = connect(srv)
    local ev, err = vm:wait("STOP", nil, 0.1)
    assert.is_nil(ev)
    assert.equal("timeout", err.kind)
  end)
end)

describe("diagnostics", function()
  local raised, here, at_line = raises.raised, raises.here, raises.at_line

  it("raises on a misspelt connect option at the caller's line, naming the right one", function()
    local line, msg = here(), raised(function() qmp.connect("/tmp/x.sock", { timout = 1 }) end)
    assert.matches('unknown option "timout"', msg)
    assert.matches('did you mean "timeout"', msg)
    at_line(msg, line)
  end)

  it("raises on misspelt options of execute, run, listen and the policy at the caller's line", function()
    local vm = connect(serve(opening({ { hold = 10 } })))
    local line, msg = here(), raised(function() vm:execute("x", nil, { timeot = 1 }) end)
    assert.matches('unknown option "timeot"', msg)
    at_line(msg, line)
    line, msg = here(), raised(function() vm:run{ tmeout = 1 } end)
    assert.matches('unknown option "tmeout"', msg)
    at_line(msg, line)
    line, msg = here(), raised(function() vm:listen("STOP", nil, { max = 1 }) end)
    assert.matches('unknown option "max"', msg)
    at_line(msg, line)
    line, msg = here(), raised(function() qmp.policy.resume_on_io_error(vm, { retry = 3 }) end)
    assert.matches('unknown option "retry"', msg)
    assert.matches("retries", msg)   -- among the known options
    at_line(msg, line)
    assert.equal(0, vm:handlers())   -- the failed policy left nothing behind
  end)

  it("raises on a malformed address at the caller's line", function()
    local line, msg = here(), raised(function() qmp.connect(123) end)
    assert.matches("address", msg)
    at_line(msg, line)
    line, msg = here(), raised(function() qmp.connect("tcp:host") end)
    assert.matches("tcp:host", msg)
    at_line(msg, line)
  end)

  it("warns once per misspelt event name and suggests the right one on timeout", function()
    local vm = connect(serve(opening({ { hold = 10 } })))
    local usage = {}
    vm.on_error = function(err) if err.kind == "usage" then usage[#usage + 1] = err end end
    local ev, err = vm:wait("SHUTDWN", 0.2)
    assert.is_nil(ev)
    assert.equal("timeout", err.kind)
    assert.matches("no SHUTDWN event within 0.2 s", err.message)
    assert.matches("did you mean SHUTDOWN", err.message)
    assert.equal(1, #usage)
    assert.matches("SHUTDWN", usage[1].message)
    local _, err2 = vm:wait("SHUTDWN", 0.05)
    assert.matches("did you mean SHUTDOWN", err2.message)
    assert.equal(1, #usage)
  end)

  it("knows the client's own event names, and suggests them for a misspelt one", function()
    local vm = connect(serve(opening({ { hold = 10 } })))
    local usage = {}
    vm.on_error = function(err) if err.kind == "usage" then usage[#usage + 1] = err end end
    for _, name in ipairs({ "qmp.connected", "qmp.disconnected", "qmp.reconnected" }) do
      vm:on(name, function() end)
    end
    assert.equal(0, #usage)
    local _, err = vm:wait("qmp.reconected", 0.05)
    assert.matches("did you mean qmp.reconnected", err.message)
    assert.equal(1, #usage)
  end)

  it("says the monitor may be held by another client when no greeting comes", function()
    local srv = serve({ { hold = 10 } })
    local t0 = monotime()
    local vm, err = qmp.connect(srv.path, { timeout = 0.3 })
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.matches("may be held by another client", err.message)
    assert.is_true(monotime() - t0 < 1)
  end)

  it("refuses a regular file, saying it is not a socket", function()
    local path = socket_path()
    tmp.write(path, "not a monitor\n")
    local vm, err = qmp.connect(path, { timeout = 1 })
    assert.is_nil(vm)
    assert.equal("refused", err.kind)
    assert.matches("not a socket", err.message)
  end)
end)
