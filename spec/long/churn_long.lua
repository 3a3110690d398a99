-- #long: connection churn (`make test-long`, not `make test`).
-- 10,000 connect / negotiate / abrupt-end cycles, with this process's open
-- file descriptors and resident memory flat across them.
--
-- Killing a real QEMU 10,000 times would take hours (each start is a few
-- hundred milliseconds of TCG set-up), so the 10,000 run against a fake
-- peer process (churn_peer.lua) that ends each connection the way the
-- kernel ends a killed process's: the socket closed, with or without the
-- client's last command unread (ECONNRESET), after events, mid-message, or
-- before the greeting.  The same in a client that reconnects (10,000
-- generations of one client), then 100 peer processes killed for real
-- with SIGKILL, and 100 real QEMUs killed with SIGKILL.
local qmp = require "qmp"
local proc = require "support.proc"
local qemu = require "support.qemu"
local measure = require "long.measure"
local peers = require "long.peers"
local settings = require "long.settings"

local cleanup = require("support.cleanup")(after_each)

-- Cycles before the first checkpoint: lazily loaded code, caches, and
-- glibc's malloc, whose threshold for giving big buffers their own mmap
-- rises as they are freed, so that the heap grows by some hundreds of KiB
-- over the first thousands of connections and then stays put.
local WARMUP = math.min(2000, settings.CYCLES // 5)

local RSS_SLACK = 1024    -- KiB the resident set may move by between two checkpoints
local LUA_SLACK = 64      -- KiB the Lua heap may (after a full collection)

-- fds, RSS and the Lua heap at a checkpoint: { fds =, list =, rss =, lua = } (KiB).
local function checkpoint()
  local n, list = measure.fds()
  local rss = measure.rss()
  return { fds = n, list = list, rss = rss, lua = math.floor(collectgarbage("count")) }
end

local function assert_flat(before, after, what)
  assert.same(before.list, after.list, what .. ": the open file descriptors changed")
  assert.is_true(after.rss - before.rss <= RSS_SLACK,
    ("%s: VmRSS grew from %d to %d KiB"):format(what, before.rss, after.rss))
  assert.is_true(after.lua - before.lua <= LUA_SLACK,
    ("%s: the Lua heap grew from %d to %d KiB"):format(what, before.lua, after.lua))
end

-- "fds 6 -> 6; VmRSS a -> b KiB; Lua heap c -> d KiB"
local function flat_text(before, after)
  return ("fds %d -> %d; VmRSS %d -> %d KiB; Lua heap %d -> %d KiB"):format(before.fds, after.fds,
    before.rss, after.rss, before.lua, after.lua)
end

-- settings.KILLS times: start() starts a peer and connects to it, returning
-- the client, the peer's pid and a function that clears up after the peer;
-- the peer is killed with SIGKILL and the client must see the connection
-- closed within timeout seconds.  From the 11th kill on, the fds, VmRSS
-- and the Lua heap stay flat.
local function killed_while_connected(what, timeout, start)
  local before
  local t0 = qmp.monotime()
  for i = 1, settings.KILLS do
    if i == 11 then before = checkpoint() end
    local vm, pid, tidy = start()
    proc.kill(pid, "KILL")
    local ok, err = vm:run({ timeout = timeout })
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))
    vm:close()
    tidy()
  end
  local seconds = qmp.monotime() - t0
  local after = checkpoint()
  assert_flat(before, after, "killed " .. what)
  measure.say("churn killed %s: %d in %.1f s; %s (from cycle 11 on)", what, settings.KILLS, seconds,
              flat_text(before, after))
end

describe("#long churn", function()
  it("10,000 fresh clients: connect, negotiate, the peer ends the connection abruptly", function()
    local peer = peers.churn(settings.CYCLES, "fresh", cleanup)
    local outcome = {}
    local function count(k) outcome[k] = (outcome[k] or 0) + 1 end
    local samples = {}
    local before
    local t0 = qmp.monotime()
    for i = 1, settings.CYCLES do
      if i == WARMUP + 1 then before = checkpoint() end
      local kind = i % 5
      local vm, err = qmp.connect(peer.path, { timeout = 5 })
      if kind == 4 then   -- silent: closed before the greeting
        assert.is_nil(vm, "cycle " .. i)
        assert.is_true(err.kind == "closed" or err.kind == "protocol", tostring(err))
        count("refused at greeting")
      else
        assert(vm, "cycle " .. i .. ": " .. tostring(err))
        local seen = 0
        vm:on("*", function() seen = seen + 1 end)
        if kind == 2 then   -- reset: the command is cut off
          local ok, cerr = vm:execute("query-status")
          assert.is_nil(ok)
          assert.equal("closed", cerr.kind)
        end
        local ok, rerr = vm:run({ timeout = 5 })
        assert.is_nil(ok)
        assert.equal("closed", rerr.kind, "cycle " .. i .. ": " .. tostring(rerr))
        assert.equal(kind == 1 and 3 or 0, seen, "cycle " .. i)
        vm:close()
        count(({ [0] = "eof", "events then eof", "reset", "torn message" })[kind])
      end
      if i % (settings.CYCLES // 10) == 0 then samples[#samples + 1] = measure.rss() end
    end
    local seconds = qmp.monotime() - t0
    local after = checkpoint()
    local report = peer:finish(30)
    assert.equal(settings.CYCLES, report.served)
    assert_flat(before, after, "fresh clients")
    local parts = {}
    for k, v in pairs(outcome) do parts[#parts + 1] = ("%s %d"):format(k, v) end
    table.sort(parts)
    measure.say("churn fresh: %d cycles in %.1f s (%s); %s (from cycle %d on); VmRSS at each tenth: %s KiB",
                settings.CYCLES, seconds, table.concat(parts, ", "), flat_text(before, after), WARMUP + 1,
                table.concat(samples, " "))
  end)

  it("10,000 generations of one reconnecting client, under vm:run", function()
    local peer = peers.churn(settings.CYCLES, "resync", cleanup)
    -- max_queue 1000: the event ring (its slots, vm:wait's history) is full
    -- after some 330 generations of three events, well within the warm-up
    local vm = assert(qmp.client(peer.path, { timeout = 5, max_queue = 1000,
                                              reconnect = { min = 0.001, max = 0.002 } }))
    cleanup(function() vm:close() end)
    local got = { connected = 0, reconnected = 0, disconnected = 0, events = 0 }
    local before
    local samples = {}
    vm:on("qmp.connected", function() got.connected = got.connected + 1 end)
    vm:on("qmp.reconnected", function(ev)
      got.reconnected = got.reconnected + 1
      if ev.status ~= "running" then got.bad_status = (got.bad_status or 0) + 1 end
    end)
    vm:on("qmp.disconnected", function()
      got.disconnected = got.disconnected + 1
      if got.disconnected == WARMUP then before = checkpoint() end
      if got.disconnected % (settings.CYCLES // 10) == 0 then samples[#samples + 1] = measure.rss() end
    end)
    vm:on({ "STOP", "RESUME", "RESET" }, function() got.events = got.events + 1 end)
    local t0 = qmp.monotime()
    assert(vm:run({ timeout = 600, done = function() return got.disconnected == settings.CYCLES end }))
    local seconds = qmp.monotime() - t0
    vm:close()
    local after = checkpoint()
    local report = peer:finish(30)
    assert.equal(settings.CYCLES, report.served)
    assert.is_nil(got.bad_status)
    assert.equal(1, got.connected)
    assert.equal(settings.CYCLES - 1, got.reconnected)
    assert.equal(settings.CYCLES, vm.generation)
    assert.equal(3 * report.events, got.events)
    assert_flat(before, after, "reconnecting client")
    measure.say("churn reconnect: %d generations of one client in %.1f s; %d events; %s (from cycle %d on); "
                .. "VmRSS at each tenth: %s KiB", settings.CYCLES, seconds, got.events, flat_text(before, after),
                WARMUP + 1, table.concat(samples, " "))
  end)

  it("100 peer processes killed with SIGKILL while connected", function()
    killed_while_connected("peers", 5, function()
      local peer = peers.churn(1, "hold", nil, 60)
      local vm = assert(qmp.connect(peer.path, { timeout = 5 }))
      return vm, peer.pid, function()
        assert.is_true(proc.wait_exit(peer.pid, 5))
        peer:stop()
      end
    end)
  end)

  it("100 real QEMUs killed with SIGKILL while connected #qemu", function()
    if not qemu.available() then
      pending("qemu-system-x86_64 is not installed")
      return
    end
    killed_while_connected("QEMUs", 10, function()
      local q = qemu.start()
      local vm = assert(qmp.connect(q.sock, { timeout = 10 }))
      assert.equal("prelaunch", assert(vm:execute("query-status")).status)
      return vm, q.pid, function() q:stop() end
    end)
  end)
end)
