-- #long: a reconnect storm (`make test-long`, not `make test`).
-- Under one qmp.loop: VM a, a real QEMU that is killed (SIGKILL) and
-- started again on the same socket 100 times, followed by a reconnecting
-- client; VM b, another real QEMU, reset every 50 ms (a RESET event each
-- time); and a paced peer sending 200 numbered events/s.  The loop never
-- waits for QEMU a to come up (the new QEMU is only spawned; the client's
-- reconnect steps find it), and every event of b and of the peer arrives,
-- once, in order, while a goes down and up.
-- QMP_LONG_RESTARTS changes the number of restarts.
local qmp = require "qmp"
local socket = require "socket"
local proc = require "support.proc"
local qemu = require "support.qemu"
local measure = require "long.measure"
local peers = require "long.peers"
local settings = require "long.settings"

local cleanup = require("support.cleanup")(after_each)

local TICK_RATE = 200      -- the peer's events per second
local RESET_EVERY = 0.05   -- seconds between b's resets
local UP_FOR = 0.05        -- seconds a's QEMU lives once reconnected, before the next kill

describe("#long storm", function()
  it("a QEMU killed and restarted 100 times under qmp.loop; the other VMs' events all delivered #qemu", function()
    if not qemu.available() then
      pending("qemu-system-x86_64 is not installed")
      return
    end
    local a = qemu.start()
    local current = a.pid                   -- a's QEMU now
    cleanup(function()
      proc.terminate(current, 5)
      a:stop()
    end)
    local b = qemu.start()
    cleanup(function() b:stop() end)
    local ticker = peers.paced(TICK_RATE, 3600, cleanup)

    local va = assert(qmp.client(a.sock, { name = "a", timeout = 5, reconnect = { min = 0.02, max = 0.2 } }))
    local vb = assert(qmp.connect(b.sock, { name = "b", timeout = 5 }))
    local vt = assert(qmp.connect(ticker.path, { name = "ticker", timeout = 5 }))
    cleanup(function() va:close() vb:close() vt:close() end)
    local loop = qmp.loop{ va, vb, vt }
    local closed = {}
    loop.on_close = function(v, e) closed[v.name] = tostring(e) end

    -- a: kill it once it is up, start the next one at once, count.
    local a_up = { connected = 0, reconnected = 0, disconnected = 0, not_prelaunch = 0 }
    local restarts, down_since, downtime_max = 0, nil, 0
    local function kill_and_restart()
      proc.kill(current, "KILL")
      down_since = qmp.monotime()
      if restarts < settings.RESTARTS then
        restarts = restarts + 1
        current = proc.spawn(a.argv, a.dir .. "/qemu.log")   -- unlinks the old socket and listens anew
      end
    end
    va:on("qmp.connected", function(_, v)
      a_up.connected = a_up.connected + 1
      v:after(UP_FOR, kill_and_restart)
    end)
    va:on("qmp.disconnected", function() a_up.disconnected = a_up.disconnected + 1 end)
    va:on("qmp.reconnected", function(ev, v)
      a_up.reconnected = a_up.reconnected + 1
      if ev.status ~= "prelaunch" then a_up.not_prelaunch = a_up.not_prelaunch + 1 end
      downtime_max = math.max(downtime_max, qmp.monotime() - down_since)
      if a_up.reconnected < settings.RESTARTS then v:after(UP_FOR, kill_and_restart) end
    end)

    -- b: a reset every RESET_EVERY seconds, each answered by a RESET event.
    local resets, reset_events, reset_failed = 0, 0, 0
    local function reset(v)
      if v:execute("system_reset") then resets = resets + 1 else reset_failed = reset_failed + 1 end
      v:after(RESET_EVERY, reset)
    end
    vb:after(RESET_EVERY, reset)
    vb:on("RESET", function() reset_events = reset_events + 1 end)

    -- the ticker: numbered events, and how late each was handled (wall clock).
    local ticks = { n = 0, last = 0, missing = 0, disorder = 0, late = 0 }
    vt:on("BLOCK_IO_ERROR", function(ev)
      local seq = ev.data.seq
      if seq <= ticks.last then ticks.disorder = ticks.disorder + 1
      else ticks.missing, ticks.last = ticks.missing + (seq - ticks.last - 1), seq end
      ticks.n = ticks.n + 1
      ticks.late = math.max(ticks.late, socket.gettime() - ev:time())
    end)

    local fds0 = measure.fds()
    local rss0 = measure.rss()
    local t0 = qmp.monotime()
    assert(loop:run({ timeout = 60 + settings.RESTARTS * 10,
                      done = function() return a_up.reconnected == settings.RESTARTS end }))
    local seconds = qmp.monotime() - t0
    -- the end: the ticker stops and closes; its last events are still delivered
    ticker:request_stop()
    local ok, err = loop:run({ timeout = 30, done = function() return closed.ticker ~= nil end })
    assert(ok, tostring(err))
    local report = ticker:finish(30)
    -- b's last reset was answered before the end: its RESET is in by now
    assert(loop:run({ timeout = 5, done = function() return reset_events == resets end }))
    local fds1 = measure.fds()   -- the ticker's dead socket stays open until vt:close()
    local rss1 = measure.rss()

    assert.equal(1, a_up.connected)
    assert.equal(settings.RESTARTS, a_up.disconnected)
    assert.equal(settings.RESTARTS, a_up.reconnected)
    assert.equal(settings.RESTARTS + 1, va.generation)
    assert.equal(0, a_up.not_prelaunch)
    assert.equal("ready", va.state)
    assert.equal(0, reset_failed)
    assert.is_true(resets > 0)
    assert.equal(resets, reset_events)
    assert.equal(report.sent, ticks.n)
    assert.equal(0, ticks.missing)
    assert.equal(0, ticks.disorder)
    assert.is_nil(closed.a)
    assert.is_nil(closed.b)
    assert.equal(fds0, fds1)   -- a's socket is a new one, but one
    measure.say("storm: QEMU a killed and restarted %d times in %.1f s (longest down %.2f s), generation %d; "
                .. "meanwhile b reset %d times, %d RESET events; the peer sent %d events at %d/s, %d delivered, "
                .. "none lost, in order, at most %.3f s late; fds %d -> %d; VmRSS %d -> %d KiB",
                restarts, seconds, downtime_max, va.generation, resets, reset_events, report.sent, TICK_RATE,
                ticks.n, ticks.late, fds0, fds1, rss0, rss1)
  end)
end)
