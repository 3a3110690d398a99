-- qmp.record and qmp.replay: recordings of the scripted fake peer and of a
-- real QEMU, hand-written recordings for each rule of the replay (and for
-- the answers it implies when a recording holds none), and the I/O-error
-- policy tested offline on spec/fixtures/io-error.qmprec and on
-- examples/io-error-capture.qmprec (a passive capture by `qmp-lua record`,
-- made by spec/record_replay_spec.lua).
--
-- That fixture is a real QEMU 7.2 whose disk fails every read (the blkdebug
-- scenario of spec/policy_spec.lua) under resume_on_io_error with POLICY
-- below, recorded by the client that ran the policy.  The #qemu test at the
-- end makes the same recording afresh; to refresh the fixture, run it with
-- QMP_REPLAY_FIXTURE=spec/fixtures/io-error.qmprec.
local qmp = require "qmp"
local fake = require "support.fake_qmp"
local qemu = require "support.qemu"
local tmp = require "support.tmp"
local proc = require "support.proc"

local EV = fake.event
local cleanup = require("support.cleanup")(after_each)

local FIXTURE = "spec/fixtures/io-error.qmprec"
local SAMPLE = "examples/io-error-capture.qmprec"   -- by `qmp-lua record`: see spec/record_replay_spec.lua
local POLICY = { retries = 2, delay = 0.05, window = 60 }

local function scratch()
  local dir = tmp.dir("qmprec")
  cleanup(function() tmp.remove(dir) end)
  return dir
end

local function lines_of(path)
  local list = {}
  for line in io.lines(path) do list[#list + 1] = line end
  return list
end

local function decoded_lines(path)
  local list = {}
  for i, line in ipairs(lines_of(path)) do list[i] = assert(qmp.decode(line)) end
  return list
end

-- {==================== hand-written recordings

local GREETING = '{"QMP":{"version":{"qemu":{"micro":22,"minor":2,"major":7},"package":""},"capabilities":["oob"]}}'

local function event(name, data)
  return ('{"event":"%s","data":%s,"timestamp":{"seconds":1700000000,"microseconds":1}}'):format(name, data or "{}")
end

-- A recording: the header and the opening (greeting, qmp_capabilities),
-- then { t, dir, msg } entries; an entry that is a string is a raw line.
local function recording(entries)
  local lines = {
    '{"qmp-recording":1,"name":"hand","started":"2026-01-01T00:00:00Z"}',
    '{"t":0.001,"dir":"in","msg":' .. GREETING .. '}',
    '{"t":0.002,"dir":"out","msg":{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"qmp#1"}}',
    '{"t":0.003,"dir":"in","msg":{"return":{},"id":"qmp#1"}}',
  }
  for _, e in ipairs(entries) do
    lines[#lines + 1] = type(e) == "string" and e
      or ('{"t":%s,"dir":"%s","msg":%s}'):format(tostring(e[1]), e[2], e[3])
  end
  return lines
end

local function command(name, id, args)
  return ('{"execute":"%s"%s,"id":"qmp#%d"}'):format(name, args and (',"arguments":' .. args) or "", id)
end

local function reply(id, value)
  return ('{"return":%s,"id":"qmp#%d"}'):format(value or "{}", id)
end

local function replay(entries, opts)
  local vm = assert(qmp.replay(recording(entries), opts))
  cleanup(function() vm:close() end)
  return vm
end

-- }==================== hand-written recordings


-- What resume_on_io_error (retries 2, delay 0.05) logs on the incident of
-- the fixtures: two resumes, then it gives up.
local TWO_RESUMES_THEN_GIVE_UP = {
  "disk0: I/O error (read), VM paused; resuming in 0.05 s (attempt 1 of 2)",
  "disk0: cont sent (attempt 1 of 2)",
  "disk0: I/O error (read), VM paused; resuming in 0.10 s (attempt 2 of 2)",
  "disk0: cont sent (attempt 2 of 2)",
  "giving up: disk0: I/O error (read) after 2 resumes within 60 s; VM left paused",
}

describe("qmp.record", function()
  it("writes every message both ways with its time, one JSON line each, then why it ended", function()
    local path = scratch() .. "/r.qmprec"
    local rec = assert(qmp.record.open(path, { name = "vm1" }))
    local vm = fake.client({
      { expect = "query-status", reply = fake.reply('{"status": "running", "running": true}') },
      { send = EV("STOP") }, { hold = 5 },
    }, cleanup, { timeout = 5, trace = rec.trace })
    assert.equal("running", assert(vm:execute("query-status")).status)
    assert(vm:wait("STOP", 5))
    vm:close()
    rec:close("done")
    rec:close("twice")   -- idempotent
    local l = decoded_lines(path)
    assert.same({ 1, "vm1" }, { l[1]["qmp-recording"], l[1].name })
    assert.matches("^%d+%-%d+%-%d+T%d+:%d+:%d+Z$", l[1].started)
    local dirs, last = {}, 0
    for i = 2, #l do
      dirs[#dirs + 1] = l[i].dir
      assert.is_true(l[i].t >= last)
      last = l[i].t
    end
    assert.same({ "in", "out", "in", "out", "in", "in", "end" }, dirs)
    assert.equal(7, l[2].msg.QMP.version.qemu.major)
    assert.equal("qmp_capabilities", l[3].msg.execute)
    assert.same({ execute = "query-status", id = "qmp#2" }, l[5].msg)
    assert.same({ ["return"] = { status = "running", running = true }, id = "qmp#2" }, l[6].msg)
    assert.equal("STOP", l[7].msg.event)
    assert.same({ reason = "done" }, l[8].msg)
    assert.equal(6, rec.messages)
    -- one message per line, greppable
    assert.matches('"dir":"in","msg":{.*"event":"STOP"', lines_of(path)[7])
  end)

  it("run() records until the count of events, the timeout or the end of the connection", function()
    local dir = scratch()
    local srv = fake.serve(fake.opening({ { send = EV("STOP") .. EV("RESUME") .. EV("STOP") }, { hold = 5 } }), cleanup)
    local seen = {}
    local r = assert(qmp.record.run(srv.path, dir .. "/count.qmprec",
                                    { count = 2, on_event = function(ev) seen[#seen + 1] = ev.event end }))
    assert.same({ "STOP", "RESUME" }, seen)
    assert.same({ "2 events", 2 }, { r.reason, r.events })
    local l = decoded_lines(dir .. "/count.qmprec")
    assert.same({ reason = "2 events" }, l[#l].msg)
    assert.equal(srv.path, l[1].name)

    srv = fake.serve(fake.opening({ { hold = 5 } }), cleanup)
    r = assert(qmp.record.run(srv.path, dir .. "/timeout.qmprec", { timeout = 0.2 }))
    assert.same({ "0.2 s passed", 0 }, { r.reason, r.events })

    srv = fake.serve(fake.opening({ { send = EV("SHUTDOWN", '{"guest": false, "reason": "host-qmp-quit"}') }, { close = true } }), cleanup)
    r = assert(qmp.record.run(srv.path, dir .. "/closed.qmprec", { connect = { timeout = 5, name = "vm9" } }))
    assert.matches("^closed: ", r.reason)
    assert.equal(1, r.events)
    l = decoded_lines(dir .. "/closed.qmprec")
    assert.equal("vm9", l[1].name)
    assert.equal("SHUTDOWN", l[#l - 1].msg.event)
  end)

  it("run() ends the file when a signal caught with qmp.signals interrupts it (Ctrl-C)", function()
    local dir = scratch()
    local srv = fake.serve(fake.opening({ { hold = 20 } }), cleanup)
    local path = dir .. "/int.qmprec"
    local script = ("local qmp = require('qmp'); assert(qmp.signals.catch('INT')); "
                    .. "print(qmp.record.run(%q, %q).reason)"):format(srv.path, path)
    local pid = proc.spawn({ "env", "LUA_PATH=./lua/?.lua;./lua/?/init.lua;;", "LUA_CPATH=./?.so;;",
                             "lua5.4", "-e", script }, dir .. "/out")
    cleanup(function() proc.kill(pid, "KILL") end)
    assert.is_true(proc.wait_until(function() return #(tmp.read(path) or ""):gsub("[^\n]", "") >= 4 end, 10))
    proc.kill(pid, "INT")
    assert.is_true(proc.wait_exit(pid, 10))
    local l = decoded_lines(path)
    assert.equal("interrupted", l[#l].msg.reason)
    assert.equal("interrupted\n", tmp.read(dir .. "/out"))   -- run() returned, as on any other end
  end)

  it("run() returns the connection error, and the file says so", function()
    local dir = scratch()
    local r, err = qmp.record.run(dir .. "/nobody.sock", dir .. "/r.qmprec", { connect = { timeout = 1 } })
    assert.is_nil(r)
    assert.equal("refused", err.kind)
    local l = decoded_lines(dir .. "/r.qmprec")
    assert.matches("^not connected: refused", l[#l].msg.reason)
  end)

  it("checks its arguments", function()
    local r, err = qmp.record.open(scratch() .. "/no/such/dir/r.qmprec")
    assert.is_nil(r)
    assert.equal("io", err.kind)
    assert.has_error(function() qmp.record.open(42) end)
    assert.has_error(function() qmp.record.open(scratch() .. "/r", { nmae = "x" }) end)
    assert.has_error(function() qmp.record.run("x.sock", "r", { count = 0 }) end)
    assert.has_error(function() qmp.record.run("x.sock", "r", { connect = { trace = print } }) end)
  end)
end)

describe("qmp.replay", function()
  it("is a client: handlers, listeners and waits see the recorded events, in order", function()
    local vm = replay({
      { 1, "in", event("STOP") },
      { 2, "in", event("RESUME") },
      { 3, "in", event("SHUTDOWN", '{"guest":true,"reason":"guest-shutdown"}') },
    })
    assert.equal("ready", vm.state)
    assert.equal("hand", vm.name)
    assert.equal(7, vm.greeting.QMP.version.qemu.major)
    assert.is_true(vm.oob)
    local l = vm:listen({ "STOP", "SHUTDOWN" })
    local handled = {}
    vm:on("*", function(ev) handled[#handled + 1] = ev.event end)
    local ev = assert(vm:wait("RESUME", 10))
    assert.equal(qmp.events.RESUME, getmetatable(ev))
    local ok, err = vm:run()
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    assert.same({ "STOP", "RESUME", "SHUTDOWN" }, handled)
    assert.equal("STOP", l:next().event)
    assert.is_true(l:next():by_guest())
    assert.equal(3, vm.stats.events)
  end)

  it("fast: recorded gaps and timers take no real time and keep their order", function()
    local vm = replay({ { 100, "in", event("STOP") }, { 300, "in", event("RESUME") } })
    local order = {}
    vm:on("*", function(ev) order[#order + 1] = ("%s@%.0f"):format(ev.event, vm.recording:now()) end)
    vm:after(200, function() order[#order + 1] = ("timer@%.0f"):format(vm.recording:now()) end)
    local t0 = qmp.monotime()
    assert.is_nil(vm:run())
    assert.is_true(qmp.monotime() - t0 < 1)
    assert.same({ "STOP@100", "timer@200", "RESUME@300" }, order)
    local _, err = vm:wait("RESET", 50)   -- a timeout passes on the clock too
    assert.equal("closed", err.kind)
  end)

  it("fast: each step moves the clock on to the next thing due", function()
    local vm = replay({ { 100, "in", event("STOP") }, { 300, "in", event("RESUME") } })
    local order = {}
    vm:on("*", function(ev) order[#order + 1] = ("%s@%.0f"):format(ev.event, vm.recording:now()) end)
    vm:after(200, function() order[#order + 1] = ("timer@%.0f"):format(vm.recording:now()) end)
    assert.is_true(math.abs(vm:timeout() - 100) < 0.01)
    local ok, err
    repeat ok, err = vm:step() until not ok
    assert.same({ "STOP@100", "timer@200", "RESUME@300" }, order)
    assert.matches("end of the recording", err.message)
  end)

  it("recorded: messages come at their recorded times", function()
    local vm = replay({ { 0.15, "in", event("STOP") }, { 0.3, "in", event("RESUME") } }, { speed = "recorded" })
    local t0 = qmp.monotime()
    assert(vm:wait("STOP", 5))
    local first = qmp.monotime() - t0
    assert(vm:wait("RESUME", 5))
    local second = qmp.monotime() - t0
    assert.is_true(first >= 0.14 and first < 0.28, first)
    assert.is_true(second >= 0.28 and second < 2, second)
  end)

  it("recorded: replays join a qmp.loop, which waits for their messages in real time", function()
    local a = replay({ { 0.2, "in", event("STOP") } }, { speed = "recorded", name = "a" })
    local b = replay({ { 0.1, "in", event("STOP") } }, { speed = "recorded", name = "b" })
    local loop = qmp.loop({ a, b })
    local seen = {}
    loop:on("STOP", function(_, vm) seen[#seen + 1] = vm.name end)
    local _, err = loop:run({ timeout = 5 })
    assert.equal("closed", err.kind)   -- both recordings ended
    assert.same({ "b", "a" }, seen)
  end)

  it("answers a recorded command with its recorded reply, under this client's id", function()
    local vm = replay({
      { 1, "out", command("query-status", 7) },
      { 1.1, "in", reply(7, '{"status":"paused","running":false}') },
    })
    assert.same({ status = "paused", running = false }, assert(vm:execute("query-status", nil, { timeout = 5 })))
    assert.same({ 2, 0 }, { vm.stats.replies, vm.stats.unknown })   -- qmp_capabilities's and this one
    assert.same({}, vm.recording.unmatched)
    assert.is_nil(vm.recording:expected())
  end)

  it("plays what follows a recorded command only once the command is sent, as long after it as live", function()
    local vm = replay({
      { 1, "in", event("STOP") },
      { 2, "out", command("cont", 2) },
      { 2.5, "in", event("RESUME") },
      { 2.6, "in", reply(2) },
      { 3, "in", event("RESET", '{"guest":false,"reason":"host-qmp-system-reset"}') },
    })
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ("%s@%.1f"):format(ev.event, vm.recording:now()) end)
    assert.same({ "cont", 6 }, { vm.recording:expected() })
    vm:after(10, function() assert(vm:execute("cont")) end)   -- 8 s later than live
    local _, err = vm:run()
    assert.matches("end of the recording", err.message)
    assert.same({ "STOP@1.0", "RESUME@10.6", "RESET@11.0" }, seen)   -- RESUME dispatched after the handler's cont
    assert.is_true(vm.recording.ended)
  end)

  it("answers a command the recording does not expect from the recording, else with an error, and lists it", function()
    local vm = replay({
      { 1, "out", command("query-status", 2) },
      { 1.1, "in", reply(2, '{"status":"io-error","running":false}') },
      { 2, "out", command("cont", 3) },
      { 2.1, "in", reply(3) },
      { 3, "out", command("query-status", 4) },
      { 3.1, "in", reply(4, '{"status":"running","running":true}') },
      '{"t":100,"dir":"end","msg":{"reason":"later"}}',
    })
    local ok, err = vm:execute("query-name")               -- never recorded: an error
    assert.is_nil(ok)
    assert.same({ "qmp", "GenericError" }, { err.kind, err.class })
    assert.equal("query-name: GenericError: replay: no reply recorded for this command", err.message)
    assert.same({}, assert(vm:execute("cont")))            -- ahead of its turn: the first still ahead
    assert.same({ "query-status", 5 }, { vm.recording:expected() })
    assert.equal("io-error", assert(vm:execute("query-status")).status)   -- in its turn
    assert.equal("io-error", assert(vm:execute("query-status")).status)   -- out of turn: the last played
    assert.same({ "cont", 7 }, { vm.recording:expected() })
    assert(vm:execute("cont"))
    assert.equal("running", assert(vm:execute("query-status")).status)
    assert.equal("running", assert(vm:execute("query-status")).status)   -- the last played, not the first
    local names = {}
    for i, c in ipairs(vm.recording.unmatched) do names[i] = c.name .. " " .. c.from end
    assert.same({ "query-name none", "cont recording", "query-status recording", "query-status recording" }, names)
    assert.same({}, vm.recording.implied)   -- the recording's replies win
    assert.is_false(vm.recording.passive)
  end)

  it("answers a command after the messages that were due when it was sent", function()
    local seen = {}
    local vm = replay({ { 0.05, "in", event("RESET", '{"guest":false,"reason":"host-qmp-system-reset"}') },
                        '{"t":100,"dir":"end","msg":{"reason":"later"}}' },
                      { speed = "recorded", trace = function(dir, text) seen[#seen + 1] = dir .. " " .. text end })
    require("qmp.core").sleep(0.1)   -- a slow script: the RESET came meanwhile, still unread
    local _, err = vm:execute("query-name")
    assert.equal("GenericError", err.class)
    assert.matches('^in {.*"RESET"', seen[#seen - 1])
    assert.matches('^in {.*"error"', seen[#seen])
  end)

  it("asks opts.respond first: a value, an error, or nothing for the recording", function()
    local asked = {}
    local vm = replay({
      { 1, "out", command("query-status", 2) },
      { 1.1, "in", reply(2, '{"status":"io-error","running":false}') },
      { 1.2, "in", event("RESET", '{"guest":false,"reason":"host-qmp-system-reset"}') },
      { 2, "out", command("query-name", 3) },
      { 2.1, "in", reply(3, '{"name":"recorded"}') },
      '{"t":100,"dir":"end","msg":{"reason":"later"}}',
    }, { respond = function(name, args)
      asked[#asked + 1] = name
      if name == "query-status" then return { status = "paused", running = false } end
      if name == "device_del" then return nil, { class = "DeviceNotFound", desc = "Device '" .. args.id .. "' not found" } end
      if name == "eject" then return nil, "tray locked" end
    end })
    local st = assert(vm:execute("query-status"))
    assert.same({ status = "paused", running = false }, st)
    assert(vm:wait("RESET", 5))    -- the checkpoint passed all the same
    assert.equal("recorded", assert(vm:execute("query-name")).name)
    local _, err = vm:execute("device_del", { id = "nic0" })
    assert.same({ "DeviceNotFound", "Device 'nic0' not found" }, { err.class, err.desc })
    _, err = vm:execute("eject", { device = "cd0" })
    assert.same({ "GenericError", "tray locked" }, { err.class, err.desc })
    assert.same({ "qmp_capabilities", "query-status", "query-name", "device_del", "eject" }, asked)
    assert.equal(2, #vm.recording.unmatched)
  end)

  it("the end of the recording closes the client; commands fail as on a closed connection", function()
    local vm = replay({ { 1, "in", event("STOP") }, '{"t":2,"dir":"end","msg":{"reason":"closed: QEMU quit"}}' })
    local _, err = vm:run()
    assert.same({ "closed", "end of the recording: closed: QEMU quit" }, { err.kind, err.message })
    assert.is_true(vm:closed())
    _, err = vm:execute("query-status")
    assert.equal("closed", err.kind)
    -- a recording cut short (no end line) ends after its last message
    vm = replay({ { 1, "in", event("STOP") } })
    _, err = vm:run()
    assert.matches("no end line", err.message)
    assert.equal(1, vm.stats.events)
  end)

  it("stops a client that waits for ever for a command the recording goes on after, and names it", function()
    local vm = replay({ { 1, "in", event("STOP") }, { 2, "out", command("cont", 2) }, { 2.1, "in", reply(2) } })
    local _, err = vm:run()
    assert.equal("closed", err.kind)
    assert.matches("replay stalled: the recording goes on after the command cont %(line 6%)", err.message)
    assert.equal(1, vm.stats.events)
    -- with a time limit, the limit passes (on the replay's clock)
    vm = replay({ { 2, "out", command("cont", 2) } })
    _, err = vm:run({ timeout = 600 })
    assert.equal("timeout", err.kind)
    assert.is_true(vm.recording:now() >= 600)
  end)

  it("runs execute_oob and hmp like the client", function()
    local vm = replay({
      { 1, "out", '{"exec-oob":"migrate-pause","id":"qmp#2"}' },
      { 1.1, "in", reply(2) },
      { 2, "out", command("human-monitor-command", 3, '{"command-line":"info status"}') },
      { 2.1, "in", reply(3, '"VM status: paused\\r\\n"') },
    })
    assert(vm:execute_oob("migrate-pause"))
    assert.equal("VM status: paused", vm:hmp("info status"))
    assert.same({}, vm.recording.unmatched)
  end)

  it("reports a source that is not a recording", function()
    local vm, err = qmp.replay(scratch() .. "/missing.qmprec")
    assert.is_nil(vm)
    assert.equal("io", err.kind)
    local function refused(source, pattern)
      local none, why = qmp.replay(source)
      assert.is_nil(none)
      assert.equal("protocol", why.kind)
      assert.matches(pattern, why.message)
    end
    refused({ '{"t":1,"dir":"in","msg":{}}' }, "recording:1: not a qmp recording")
    refused(recording({ '{"t":1,"dir":"sideways","msg":{}}' }), "recording:5: not a recording line")
    refused(recording({ "{nope" }), "recording:5: ")
    refused({ '{"qmp-recording":2}' }, "later format")
  end)

  it("checks its options", function()
    assert.has_error(function() qmp.replay(recording({}), { sped = "fast" }) end)
    assert.has_error(function() qmp.replay(recording({}), { speed = "slow" }) end)
    assert.has_error(function() qmp.replay(recording({}), { respond = "yes" }) end)
    assert.has_error(function() qmp.replay(recording({}), { reconnect = true }) end)
    assert.has_error(function() qmp.replay(42) end)
  end)
end)

-- {==================== answers a passive recording lacks

-- Ask query-status at each of times (seconds on the replay's clock) while
-- the recording plays to its end; the statuses, in order.
local function statuses_at(vm, times)
  local got = {}
  for i, t in ipairs(times) do
    vm:after(t, function() got[i] = assert(vm:execute("query-status")).status end)
  end
  vm:run()
  return got
end

local function io_error(action)
  return event("BLOCK_IO_ERROR", ('{"device":"","node-name":"disk0","operation":"read","action":"%s",'
                                  .. '"nospace":false,"reason":"Input/output error"}'):format(action))
end

local LATER = '{"t":100,"dir":"end","msg":{"reason":"later"}}'

describe("qmp.replay of a recording without replies (a passive recorder)", function()
  it("answers query-status from the run state the events played so far imply, and lists each answer", function()
    local vm = replay({
      { 1, "in", event("STOP") },
      { 2, "in", event("RESUME") },
      { 3, "in", io_error("stop") },
      { 3.1, "in", event("STOP") },
      { 4, "in", event("RESUME") },
      { 5, "in", io_error("report") },   -- QEMU goes on: no cause for the next STOP
      { 5.1, "in", event("STOP") },
      LATER,
    })
    assert.is_true(vm.recording.passive)
    assert.same({ "running", "paused", "running", "running", "io-error", "running", "paused" },
                statuses_at(vm, { 0.5, 1.5, 2.5, 3.05, 3.5, 4.5, 5.5 }))
    local implied = vm.recording.implied
    assert.equal(7, #implied)
    assert.same({ name = "query-status", reply = { ["return"] = { status = "running", running = true } },
                  why = "assumed: no recorded event says otherwise" },
                { name = implied[1].name, reply = implied[1].reply, why = implied[1].why })
    assert.is_true(math.abs(implied[1].t - 0.5) < 0.01, implied[1].t)   -- when it was sent, on the replay's clock
    assert.same({ ["return"] = { status = "io-error", running = false } }, implied[5].reply)
    -- why names the events, at their times on the replay's clock (the recorded ones, within the handshake's shift)
    local function near(text, pattern, ...)
      local got = { text:match(pattern) }
      assert.equal(select("#", ...), #got, text)
      for i, t in ipairs({ ... }) do assert.is_true(math.abs(tonumber(got[i]) - t) < 0.01, text) end
    end
    near(implied[5].why, "^the STOP at ([%d.]+) s, after the BLOCK_IO_ERROR at ([%d.]+) s$", 3.1, 3)
    near(implied[6].why, "^the RESUME at ([%d.]+) s$", 4)
    near(implied[7].why, "^the STOP at ([%d.]+) s$", 5.1)
    for _, c in ipairs(vm.recording.unmatched) do assert.equal("implied", c.from) end
    assert.equal(7, #vm.recording.unmatched)
  end)

  it("gives the status QEMU 7.2 names for each way a VM stops, suspends, wakes or is reset", function()
    local cases = {
      { "shutdown", event("SHUTDOWN", '{"guest":true,"reason":"guest-shutdown"}'), event("STOP") },   -- -no-shutdown
      { "guest-panicked", event("GUEST_PANICKED", '{"action":"pause"}'), event("STOP") },
      { "watchdog", event("WATCHDOG", '{"action":"pause"}'), event("STOP") },
      { "paused", event("WATCHDOG", '{"action":"reset"}'), event("STOP") },
      { "prelaunch", event("STOP"), event("RESET", '{"guest":false,"reason":"host-qmp-system-reset"}') },
      { "running", event("RESET", '{"guest":true,"reason":"guest-reset"}') },
      { "suspended", event("SUSPEND") },
      { "running", event("SUSPEND"), event("WAKEUP") },
      -- an error while paused stops nothing: the RESUME forgets it, the next STOP is a plain pause
      { "paused", event("STOP"), io_error("stop"), event("RESUME"), event("STOP") },
    }
    for _, case in ipairs(cases) do
      local entries = {}
      for i = 2, #case do entries[#entries + 1] = { i - 1, "in", case[i] } end
      entries[#entries + 1] = LATER
      local vm = replay(entries)
      assert.same({ case[1] }, statuses_at(vm, { #case - 0.5 }), table.concat(case, " ", 2))
    end
  end)

  it("starts running, unless the recording's first word on the run state says otherwise", function()
    local vm = replay({ { 1, "in", event("RESUME") }, LATER })
    assert.same({ "paused", "running" }, statuses_at(vm, { 0.5, 1.5 }))
    assert.equal("assumed: the recording's first run-state event is a RESUME", vm.recording.implied[1].why)
    vm = replay({ { 1, "in", event("WAKEUP") }, LATER })
    assert.same({ "suspended" }, statuses_at(vm, { 0.5 }))
    -- a recorded query-status reply is a fact, from the start: here a VM that needs a reset
    vm = replay({ { 1, "out", command("query-status", 2) },
                  { 1.1, "in", reply(2, '{"status":"shutdown","running":false}') }, LATER })
    assert.is_false(vm.recording.passive)
    local _, err = vm:execute("cont")
    assert.equal("cont: GenericError: Resetting the Virtual Machine is required", err.message)
    assert.matches('status "shutdown"', vm.recording.implied[1].why)
  end)

  it("answers cont as QEMU would in that state and changes nothing: the recorded RESUME comes in its own time", function()
    local vm = replay({
      { 1, "in", io_error("stop") },
      { 1.1, "in", event("STOP") },
      { 5, "in", event("RESUME") },
      { 6, "in", event("SHUTDOWN", '{"guest":true,"reason":"guest-shutdown"}') },
      { 6.1, "in", event("STOP") },
      LATER,
    })
    local seen, answers = {}, {}
    vm:on("*", function(ev) seen[#seen + 1] = ("%s@%.1f"):format(ev.event, vm.recording:now()) end)
    vm:after(2, function()
      answers[#answers + 1] = assert(vm:execute("cont"))
      answers[#answers + 1] = assert(vm:execute("query-status")).status
    end)
    vm:after(7, function()
      local ok, err = vm:execute("cont")
      answers[#answers + 1] = ok or err.message
    end)
    vm:run()
    assert.same({ {}, "io-error", "cont: GenericError: Resetting the Virtual Machine is required" }, answers)
    assert.same({ "BLOCK_IO_ERROR@1.0", "STOP@1.1", "RESUME@5.0", "SHUTDOWN@6.0", "STOP@6.1" }, seen)
    local implied = vm.recording.implied
    assert.same({ "cont", "query-status", "cont" }, { implied[1].name, implied[2].name, implied[3].name })
    assert.same({ ["return"] = {} }, implied[1].reply)
    assert.equal('not recorded: QEMU\'s answer in status "io-error"; the recording goes on as it was', implied[1].why)
    assert.same({ error = { class = "GenericError", desc = "Resetting the Virtual Machine is required" } },
                implied[3].reply)
  end)

  it("answers other commands only from the recording, else with an error that names the command once", function()
    local vm = replay({ { 1, "in", event("STOP") }, LATER })
    local _, err = vm:execute("query-block")
    assert.equal("query-block: GenericError: replay: no reply recorded for this command", err.message)
    assert.same({ { name = "query-block", from = "none" } },
                { { name = vm.recording.unmatched[1].name, from = vm.recording.unmatched[1].from } })
    assert.same({}, vm.recording.implied)
  end)
end)

-- }==================== answers a passive recording lacks

-- {==================== the I/O-error policy, offline

-- The commands (name and arguments) in a recording, or sent by a client (trace).
local function recorded_commands(path)
  local list = {}
  for _, l in ipairs(decoded_lines(path)) do
    if l.dir == "out" then list[#list + 1] = { l.msg.execute, l.msg.arguments } end
  end
  return list
end

local function command_tracer(list)
  return function(dir, text)
    if dir == "out" then
      local msg = qmp.decode(text)
      list[#list + 1] = { msg.execute, msg.arguments }
    end
  end
end

-- Replay a recording under the policy (POLICY, with changes), from the cont
-- its operator sent.  Returns vm, p, the policy's log, the commands sent
-- and how the run ended.
local function replay_policy(source, changes, respond)
  local sent = {}
  local vm = assert(qmp.replay(source, { trace = command_tracer(sent), respond = respond }))
  cleanup(function() vm:close() end)
  local log, opts = {}, {}
  for k, v in pairs(POLICY) do opts[k] = v end
  for k, v in pairs(changes or {}) do opts[k] = v end
  opts.log = function(line) log[#log + 1] = line end
  local p = qmp.policy.resume_on_io_error(vm, opts)
  assert(vm:execute("cont"))
  local _, err = vm:run()
  return vm, p, log, sent, err
end

describe("resume_on_io_error on a recording of a real QEMU", function()
  it("decides as it did live: two resumes, then the give-up, the VM left paused", function()
    local t0 = qmp.monotime()
    local vm, p, log, sent, err = replay_policy(FIXTURE)
    assert.is_true(qmp.monotime() - t0 < 2)   -- the delays pass on the replay's clock
    assert.equal("end of the recording: the spec stopped recording", err.message)
    assert.same(recorded_commands(FIXTURE), sent)    -- every command as live, in order
    assert.same({}, vm.recording.unmatched)
    assert.same({ 2, 1 }, { p.resumes, p.give_ups })
    local errors_recorded = 0
    for _, l in ipairs(decoded_lines(FIXTURE)) do
      if l.dir == "in" and l.msg.event == "BLOCK_IO_ERROR" and l.msg.data.action == "stop" then
        errors_recorded = errors_recorded + 1
      end
    end
    assert.equal(errors_recorded, p.errors_seen)
    assert.same(TWO_RESUMES_THEN_GIVE_UP, log)
  end)

  it("with fewer retries it gives up sooner, and the replay stops where live went on", function()
    local vm, p, log, _, err = replay_policy(FIXTURE, { retries = 1 })
    assert.same({ 1, 1 }, { p.resumes, p.give_ups })
    assert.matches("^giving up: disk0: .* after 1 resume within 60 s", log[#log])
    assert.matches("replay stalled: the recording goes on after the command query%-status", err.message)
    assert.equal("query-status", vm.recording:expected())
  end)

  it("with more retries it resumes once more, answered from the recording and listed as unmatched", function()
    local vm, p, _, _, err = replay_policy(FIXTURE, { retries = 3 })
    assert.matches("end of the recording", err.message)
    assert.same({ 3, 0 }, { p.resumes, p.give_ups })
    local names = {}
    for i, c in ipairs(vm.recording.unmatched) do names[i] = c.name end
    assert.same({ "query-status", "cont" }, names)
  end)

  it("reports a failed query-status through vm.on_error with each prefix once", function()
    local vm = assert(qmp.replay(FIXTURE, { respond = function(name)
      if name == "query-status" then return nil, "nope" end
    end }))
    cleanup(function() vm:close() end)
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    local p = qmp.policy.resume_on_io_error(vm, POLICY)
    assert(vm:execute("cont"))
    vm:run()
    assert.equal(1, #reports)
    assert.equal("resume_on_io_error: query-status: GenericError: nope", reports[1].message)
    assert.equal(0, p.resumes)
  end)

  it("on a passive capture (examples/io-error-capture.qmprec) resumes from the status the events imply", function()
    local vm = assert(qmp.replay(SAMPLE))
    cleanup(function() vm:close() end)
    local log, opts = {}, {}
    for k, v in pairs(POLICY) do opts[k] = v end
    opts.log = function(line) log[#log + 1] = line end
    local p = qmp.policy.resume_on_io_error(vm, opts)
    local _, err = vm:run()   -- no cont of ours: the recorded operator's RESUMEs start each round
    assert.equal("end of the recording: 9 events", err.message)
    assert.is_true(vm.recording.passive)
    assert.same({ 2, 1, 3 }, { p.resumes, p.give_ups, p.errors_seen })
    local answers = {}
    for i, a in ipairs(vm.recording.implied) do answers[i] = a.name .. " " .. qmp.encode(a.reply, { sort = true }) end
    assert.same({
      'query-status {"return":{"running":false,"status":"io-error"}}', 'cont {"return":{}}',
      'query-status {"return":{"running":false,"status":"io-error"}}', 'cont {"return":{}}',
    }, answers)
    assert.same(TWO_RESUMES_THEN_GIVE_UP, log)
  end)

  it("leaves alone a VM that a responder says a user paused", function()
    local vm, p, log, _, err = replay_policy(FIXTURE, nil, function(name)
      if name == "query-status" then return { status = "paused", running = false, singlestep = false } end
    end)
    assert.same({ 0, 0 }, { p.resumes, p.give_ups })
    assert.matches('not resuming: VM status is "paused"', log[2])
    assert.matches("stalled: the recording goes on after the command cont", err.message)
    assert.equal(1, vm:commands_sent("cont"))   -- the operator's only
  end)
end)

local disks = require "support.disks"

describe("record and replay a real QEMU #qemu", function()
  it("a recording of the policy on a failing disk replays to the same decisions", function()
    local dir = scratch()
    local path = os.getenv("QMP_REPLAY_FIXTURE") or (dir .. "/io-error.qmprec")
    local machine = qemu.start({ args = disks.failing_disk(disks.boot_image(dir, disks.POWER_OFF), "off") })
    cleanup(function() machine:stop() end)
    local rec = assert(qmp.record.open(path, { name = "io-error" }))
    local vm = assert(qmp.connect(machine.sock, { timeout = TEST_TIMEOUT, name = "io-error", trace = rec.trace }))
    cleanup(function() vm:close() end)
    local log, opts = {}, {}
    for k, v in pairs(POLICY) do opts[k] = v end
    opts.log = function(line) log[#log + 1] = line end
    local p = qmp.policy.resume_on_io_error(vm, opts)
    assert(vm:execute("cont"))
    assert(vm:run({ timeout = TEST_TIMEOUT, done = function() return p.give_ups > 0 end }))
    assert.is_nil(vm:run({ timeout = 0.3 }))   -- nothing more happens: recorded too
    vm:close()
    rec:close("the spec stopped recording")

    local rvm, rp, rlog, sent, err = replay_policy(path)
    assert.equal("end of the recording: the spec stopped recording", err.message)
    assert.same(log, rlog)
    assert.same({ p.resumes, p.give_ups, p.errors_seen }, { rp.resumes, rp.give_ups, rp.errors_seen })
    assert.same(recorded_commands(path), sent)
    assert.same({}, rvm.recording.unmatched)
  end)
end)
