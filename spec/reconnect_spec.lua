-- Reconnecting (opts.reconnect): a state machine stepped by whatever drives
-- the client, never blocking it.  Against the scripted fake peer, then,
-- tagged #qemu, real QEMUs restarted behind the same socket.
local qmp = require "qmp"
local socket = require "socket"
local fake = require "support.fake_qmp"
local proc = require "support.proc"
local qemu = require "support.qemu"
local tmp = require "support.tmp"

local cleanup = require("support.cleanup")(after_each)
local serve, connect = fake.bound(cleanup)
local EV = fake.event
local OK = fake.reply("{}")
local opening = fake.opening
local monotime = qmp.monotime

local function socket_path() return tmp.socket_path(cleanup) end

local function escape(text)
  return (text:gsub("%p", "%%%0"))
end

describe("opts.reconnect", function()
  it("reports the disconnect, reconnects, renegotiates and resyncs the status", function()
    local srv = fake.start({
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-version" }, { send = fake.event("STOP") }, { close = true },
      { accept = true },
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-status", reply = fake.reply('{"status": "io-error", "running": false}') },
      { hold = 10 },
    })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } }))
    cleanup(function() vm:close() end)
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    -- The command in flight fails with kind closed.
    local ret, err = vm:execute("query-version")
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 3 end }))
    assert.equal("STOP", seen[1].event)
    assert.equal("qmp.disconnected", seen[2].event)
    assert.equal(1, seen[2].generation)
    assert.equal(qmp.events["qmp.disconnected"], getmetatable(seen[2]))
    assert.equal("qmp.reconnected", seen[3].event)
    assert.equal(2, seen[3].generation)
    assert.equal("io-error", seen[3].status)
    assert.equal(2, vm.generation)
    assert.is_false(vm:closed())
  end)

  it("takes a resync reply of any shape: qmp.reconnected without a status", function()
    local srv = fake.start({
      { greet = true }, { expect = "qmp_capabilities", reply = OK }, { close = true },
      { accept = true },
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-status", reply = fake.reply("5") },
      { hold = 10 },
    })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } }))
    cleanup(function() vm:close() end)
    local back
    vm:on("qmp.reconnected", function(ev) back = ev end)
    assert(vm:run({ timeout = 5, done = function() return back ~= nil end }))
    assert.equal(2, back.generation)
    assert.is_nil(back.status)
    assert.equal("ready", vm.state)
  end)

  it("keeps retrying while the socket is missing, and stops on close()", function()
    local srv = fake.start({ { greet = true }, { expect = "qmp_capabilities", reply = OK }, { close = true } })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 1, reconnect = { min = 0.01, max = 0.02 } }))
    local ev = assert(vm:wait("qmp.disconnected", nil, 5))
    assert.equal("closed", ev.kind)
    assert.is_true(srv:wait(5))
    assert.is_nil(vm:wait("qmp.reconnected", nil, 0.2))
    assert.equal("reconnecting", vm.state)
    assert.is_false(vm:closed())
    local _, cerr = vm:execute("query-status")
    assert.equal("closed", cerr.kind)
    assert.matches("reconnect pending.*next attempt %(#%d+%) in [%d.]+ s; last error: refused: no socket", cerr.message)
    vm:close()
    assert.equal("closed", vm.state)
    local _, err = vm:run({ timeout = 1 })
    assert.equal("closed", err.kind)
  end)

  it("raises on bad reconnect options", function()
    assert.has_error(function() qmp.connect("/tmp/x.sock", { reconnect = { min = 0 } }) end)
    assert.has_error(function() qmp.connect("/tmp/x.sock", { reconnect = { min = 2, max = 1 } }) end)
  end)
end)

describe("reconnecting as a state machine", function()
  it("keeps delivering the fleet's events while one VM reconnects to a peer that never greets", function()
    local N = 40
    local loop = qmp.loop()
    for i = 1, 3 do
      local srv = serve(opening({ { expect = "go", reply = OK }, { ticks = { count = N, every = 0.02 } },
                                  { hold = 10 } }))
      loop:add(connect(srv, { timeout = 5, name = "good" .. i }))
    end
    local bad_srv = serve(opening({ { close = true }, { accept = true }, { hold = 10 } }))
    local bad = connect(bad_srv, { timeout = 2, name = "bad", reconnect = { min = 0.01, max = 0.05 } })
    loop:add(bad)
    local bad_seen, bad_states = {}, {}
    bad:on("*", function(ev) bad_seen[#bad_seen + 1] = ev.event end)
    local delays, count, start = {}, 0, math.huge
    loop:on("RTC_CHANGE", function(ev)
      local now = socket.gettime()
      count = count + 1
      bad_states[bad.state] = true
      local sent = ev:time()
      if sent >= start then delays[#delays + 1] = now - sent end
    end)
    for _, vm in ipairs(loop:vms()) do
      if vm ~= bad then assert(vm:execute("go")) end
    end
    start = socket.gettime()
    assert.is_true(loop:run({ timeout = 10, done = function() return count >= 3 * N end }))
    assert.equal(3 * N, count)
    assert.is_true(#delays >= 3 * N - 6, #delays)
    local worst = 0
    for _, d in ipairs(delays) do worst = math.max(worst, d) end
    assert.is_true(worst < 0.1, ("an event waited %.3f s"):format(worst))
    -- The bad VM really was down, and its new peer held it in the handshake.
    assert.same({ "qmp.disconnected" }, bad_seen)
    assert.is_nil(bad_states.ready)
    assert.is_truthy(bad_states.negotiating, "the bad VM never reached its silent peer")
    assert.equal(2, bad_srv:accepted())
  end)

  it("brings a qmp.client created before its peer exists to ready, emitting qmp.connected", function()
    local path = socket_path()
    local vm = qmp.client(path, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } })
    cleanup(function() vm:close() end)
    local l <close> = vm:listen("qmp.connected")
    for _ = 1, 3 do assert(vm:step()) end
    assert.is_true(vm.state == "connecting" or vm.state == "reconnecting", vm.state)
    local _, down = vm:execute("query-status")
    assert.equal("closed", down.kind)
    serve(opening({ { hold = 10 } }), { path = path })
    assert(vm:run({ timeout = 5, done = function() return vm.state == "ready" end }))
    assert.equal("ready", vm.state)
    local ev = assert(l:wait(1))
    assert.equal("qmp.connected", ev.event)
    assert.equal(1, ev.generation)
    assert.is_true(ev.attempts >= 2, ev.attempts)
    assert.equal(1, vm.generation)
  end)

  it("gives up in qmp.connect with reconnect when no peer comes within the timeout, naming the last error", function()
    local path = socket_path()
    local t0 = monotime()
    local vm, err = qmp.connect(path, { timeout = 0.3, reconnect = { min = 0.01, max = 0.05 } })
    local took = monotime() - t0
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.matches("not ready within 0.3 s", err.message)
    assert.matches("last error: refused: no socket at " .. escape(path), err.message)
    assert.is_true(took >= 0.29 and took < 1, took)
  end)

  it("stops reconnecting after the client's own quit", function()
    local srv = serve(opening({ { expect = "quit", reply = OK },
                                { send = EV("SHUTDOWN", '{"guest": false, "reason": "host-qmp-quit"}') },
                                { close = true } }))
    local vm = connect(srv, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } })
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev.event end)
    assert.same({}, assert(vm:execute("quit")))
    local ok, err = vm:run({ timeout = 2 })
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    assert.equal("closed", vm.state)
    assert.same({ "SHUTDOWN" }, seen)   -- no qmp.disconnected: nothing to retry
    assert.is_true(srv:wait(5))
    assert.equal(1, srv:accepted())
  end)

  it("fails commands at once during an outage, saying a reconnect is pending", function()
    local srv = serve(opening({ { close = true } }))
    local vm = connect(srv, { timeout = 5, reconnect = { min = 0.5, max = 1 } })
    assert(vm:wait("qmp.disconnected", nil, 2))
    assert.equal("reconnecting", vm.state)
    local t0 = monotime()
    local ret, err = vm:execute("query-status", nil, { timeout = 5 })
    local took = monotime() - t0
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    assert.matches("reconnect pending", err.message)
    assert.matches("next attempt %(#%d+%) in [%d.]+ s; last error: ", err.message)
    assert.is_true(took < 0.05, took)
  end)

  local HOSTILE = fake.hostile_first

  -- Audit defect: such a first message ended a reconnecting client's retries.
  it("keeps a reconnecting qmp.client retrying after a first message with 1e999 or invalid UTF-8", function()
    local steps = {}
    for i = 1, 4 do
      steps[#steps + 1] = { send = HOSTILE[(i - 1) % #HOSTILE + 1] }
      steps[#steps + 1] = { accept = true }
    end
    steps[#steps + 1] = { hold = 10 }   -- the 5th connection: held, no greeting
    local srv = serve(steps)
    local vm = qmp.client(srv.path, { timeout = 5, reconnect = { min = 0.01, max = 0.02 } })
    cleanup(function() vm:close() end)
    local deadline = monotime() + 5
    while srv:accepted() < 5 and monotime() < deadline do
      local ok, err = pcall(vm.run, vm, { timeout = 0.02 })   -- short turns: the peer's log decides
      assert.is_true(ok, err)
      assert.are_not.equal("closed", vm.state)
    end
    assert.equal(5, srv:accepted())
    assert.are_not.equal("closed", vm.state)
    local _, down = vm:execute("query-status")
    assert.equal("closed", down.kind)
    local attempt = tonumber(down.message:match("attempt %(?#(%d+)"))
    assert.is_true(attempt and attempt >= 5, down.message)
    assert.matches("last error: protocol: ", down.message)
  end)
end)

describe("synthetic event timestamps", function()
  it("stamps qmp.disconnected and qmp.reconnected with the wall clock, never going backwards", function()
    local srv = serve(opening({
      { close = true }, { accept = true },
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-status", reply = fake.reply('{"status": "running", "running": true}') },
      { hold = 10 },
    }))
    local vm = connect(srv, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } })
    local down = assert(vm:wait("qmp.disconnected", nil, 3))
    local back = assert(vm:wait("qmp.reconnected", nil, 3))
    assert.equal("running", back.status)
    for _, ev in ipairs({ down, back }) do
      local ts = ev.timestamp
      assert.equal("integer", math.type(ts.seconds))
      assert.equal("integer", math.type(ts.microseconds))
      assert.is_true(math.abs(ts.seconds - os.time()) <= 1, ts.seconds)
      assert.is_true(ts.microseconds >= 0 and ts.microseconds < 1000000, ts.microseconds)
    end
    local a, b = down.timestamp, back.timestamp
    assert.is_true(b.seconds > a.seconds or (b.seconds == a.seconds and b.microseconds >= a.microseconds))
  end)
end)

describe("reconnecting to a restarted real QEMU #qemu", function()
  it("sees the old QEMU go and the new one come, with a new generation", function()
    local dir = tmp.dir("restart")
    cleanup(function() tmp.remove(dir) end)
    local first = qemu.start({ dir = dir })
    cleanup(function() first:stop() end)
    local vm = assert(qmp.connect(first.sock, { timeout = 5, reconnect = { min = 0.05, max = 0.5 } }))
    cleanup(function() vm:close() end)
    assert(vm:execute("cont"))
    assert(vm:wait("RESUME", nil, 5))
    first:stop()
    local gone = assert(vm:wait("qmp.disconnected", nil, 10))
    assert.equal(1, gone.generation)
    local second = qemu.start({ dir = dir })
    cleanup(function() second:stop() end)
    local back = assert(vm:wait("qmp.reconnected", nil, 10))
    assert.equal(2, back.generation)
    assert.equal("prelaunch", back.status)   -- the new QEMU has not started its CPUs
    assert.equal("prelaunch", assert(vm:execute("query-status")).status)
  end)
end)

local keys = require("support.text").sorted_keys

-- A fake VM that sends RTC_CHANGE with offsets 1, 2, 3 ... every 20 ms.
local function ticking_peer(n)
  local steps = {}
  for k = 1, n do
    steps[#steps + 1] = { send = fake.event("RTC_CHANGE", ('{"offset": %d}'):format(k)) }
    steps[#steps + 1] = { sleep = 0.02 }
  end
  steps[#steps + 1] = { hold = 30 }
  return serve(opening(steps))
end

describe("a qmp.loop while one real QEMU is killed and restarted #qemu", function()
  it("keeps delivering the other VM's events through the outage and the reconnect", function()
    local dir = tmp.dir("qmpv2r")
    cleanup(function() tmp.remove(dir) end)
    local first = qemu.start({ dir = dir })
    cleanup(function() first:stop() end)
    local a = connect(first.sock, { timeout = 5, name = "a", reconnect = { min = 0.02, max = 0.1 } })
    local b = connect(ticking_peer(500).path, { timeout = 5, name = "b" })
    local loop = qmp.loop{ a, b }
    local ticks, last_offset, out_of_order = 0, 0, 0
    local a_events, a_states = {}, {}
    loop:on("*", function(ev, vm)
      if vm == b then
        ticks = ticks + 1
        if ev.offset ~= last_offset + 1 then out_of_order = out_of_order + 1 end
        last_offset = ev.offset
        a_states[a.state] = (a_states[a.state] or 0) + 1
      else
        a_events[#a_events + 1] = ev
      end
    end)
    local function a_saw(name)
      for _, ev in ipairs(a_events) do if ev.event == name then return ev end end
    end
    local function run_until(what, done)
      local ok, err = loop:run({ timeout = TEST_TIMEOUT, done = done })
      assert(ok, what .. ": " .. tostring(err) .. "; a.state = " .. a.state)
    end
    run_until("b's first events", function() return ticks >= 5 end)

    -- Killed: no SHUTDOWN, the socket file stays behind (connections refused).
    proc.kill(first.pid, "KILL")
    first:stop()
    run_until("a's qmp.disconnected", function() return a_saw("qmp.disconnected") ~= nil end)
    assert.is_nil(a_saw("SHUTDOWN"))
    local t0, n0 = qmp.monotime(), ticks
    a_states = {}
    run_until("b's events while a has no QEMU", function() return ticks >= n0 + 10 end)
    assert.same({ "reconnecting" }, keys(a_states))
    assert.is_true(qmp.monotime() - t0 < 2)
    local _, err = a:execute("query-status")
    assert.equal("closed", err.kind)
    assert.matches("reconnect pending.*next attempt %(#%d+%)", err.message)
    assert.is_true(tonumber(err.message:match("next attempt %(#(%d+)%)")) >= 2, err.message)

    -- Restarted on the same socket path, but frozen: the kernel accepts the
    -- connection, no greeting comes.  The loop must not wait for it.
    local second = qemu.start({ dir = dir })
    cleanup(function() proc.kill(second.pid, "CONT"); second:stop() end)
    proc.kill(second.pid, "STOP")
    local n1 = ticks
    a_states = {}
    run_until("b's events while a waits for a greeting",
              function() return ticks >= n1 + 10 and (a_states.connecting or a_states.negotiating) ~= nil end)
    local n2 = ticks
    a_states = {}
    run_until("more of b's events", function() return ticks >= n2 + 10 end)
    assert.is_nil(a_states.ready)
    assert.is_nil(a_states.reconnecting)
    assert.is_nil(a_saw("qmp.reconnected"))

    proc.kill(second.pid, "CONT")
    run_until("a's qmp.reconnected", function() return a_saw("qmp.reconnected") ~= nil end)
    local back = a_saw("qmp.reconnected")
    assert.equal(2, back.generation)
    assert.equal("prelaunch", back.status)
    assert.is_true(back.attempts >= 2)
    assert.equal("ready", a.state)
    local n3 = ticks
    run_until("b's events after the reconnect", function() return ticks >= n3 + 5 end)
    assert.equal(0, out_of_order)
    assert.equal(ticks, last_offset)   -- none lost
    assert(a:execute("cont"))
    assert(a:wait("RESUME", nil, 5))
    assert.equal("running", assert(a:execute("query-status")).status)
  end)
end)
