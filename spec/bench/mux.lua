--- Row 10: one monitor shared by `qmp-lua mux` (issue 21).  The mux runs
-- as it is deployed: a `bin/qmp-lua mux` process of its own, between the
-- monitor and its clients.
-- 10a: query-status round trips against a real QEMU (-machine none,
-- paused, no devices) with two monitors: a qmp client on one directly,
-- and the same client through a mux holding the other, TRIPS each per
-- round, interleaved; wall time of each trip: median and p99.  Target:
-- the mux's median within 1.2× the direct one plus 100 µs (a mux adds a
-- hop: two more writes and reads, and a process switch).
-- 10b: a flood through the mux: CLIENTS clients (mux_clients.c, one
-- process) each take the RATE events a second that the upstream
-- (mux_peer.c) sends for SECONDS seconds; events counted per client (none
-- may be lost or out of turn), their lag from the peer's timestamp, and
-- the mux process's CPU (/proc).
local H = require "bench.harness"

local M = {}

local TRIPS, ROUNDS = 2000, 5   -- a round of both takes about a second
local RATE, SECONDS, CLIENTS = 50000, H.quick and 2 or 10, 10
local QMP_LUA = H.bench_dir .. "/../../bin/qmp-lua"

local mux_count = 0

-- A `qmp-lua mux UPSTREAM --listen PATH` process; its pid and socket.
local function start_mux(upstream)
  mux_count = mux_count + 1
  local path = ("%s/mux%d.sock"):format(H.dir(), mux_count)
  local log = ("%s/mux%d.log"):format(H.dir(), mux_count)
  local pid = H.spawn({ "lua5.4", QMP_LUA, "mux", upstream, "--listen", path }, log)
  H.wait_listening(path, pid, log)
  return pid, path, log
end

-- CPU seconds (user + system) process pid has used so far.
local ticks_per_second
local function cpu_seconds(pid)
  ticks_per_second = ticks_per_second or tonumber((H.capture("getconf CLK_TCK") or "100"):match("%d+"))
  local stat = assert(H.read("/proc/" .. pid .. "/stat"), "no process " .. pid)
  local fields = {}
  for f in stat:match("^.*%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
  -- after the name: state is field 3, utime 14 and stime 15
  return (tonumber(fields[12]) + tonumber(fields[13])) / ticks_per_second
end

-- The p-th quantile of a sorted list.
local function quantile(sorted, p)
  return sorted[math.max(1, math.ceil(p * #sorted))]
end

-- trips query-status round trips on a fresh connection to path: the
-- sorted wall times.
local function round_trips(qmp, path, trips)
  local vm = assert(qmp.connect(path, { timeout = 10 }))
  assert(vm:execute("query-status"))
  local now, t = qmp.monotime, {}
  for i = 1, trips do
    local t0 = now()
    assert(vm:execute("query-status"))
    t[i] = now() - t0
  end
  vm:close()
  table.sort(t)
  return t
end

local function rtt_row()
  local what = "query-status round trip through qmp-lua mux, real QEMU"
  if not H.have_command("qemu-system-x86_64") then
    return { id = "10a", what = what, qmp = "no QEMU here", target = "≤ 1.2× direct + 100 µs" }
  end
  local qmp = require "qmp"
  local dir = H.dir()
  local direct, shared = dir .. "/qemu-direct.sock", dir .. "/qemu-shared.sock"
  local log = dir .. "/qemu.log"
  local qemu = H.spawn({ "qemu-system-x86_64", "-machine", "none", "-display", "none", "-nodefaults", "-S",
                         "-qmp", "unix:" .. direct .. ",server=on,wait=off",
                         "-qmp", "unix:" .. shared .. ",server=on,wait=off" }, log)
  H.wait_listening(direct, qemu, log)
  H.wait_listening(shared, qemu, log)
  local _, through = start_mux(shared)
  local trips = H.size(TRIPS)
  local p99 = { direct = {}, mux = {} }
  local version
  local s = H.interleave("mux rtt", {
    { name = "direct", run = function(round)
        local t = round_trips(qmp, direct, trips)
        if round > 0 then table.insert(p99.direct, quantile(t, 0.99)) end
        return quantile(t, 0.5)
      end },
    { name = "mux", run = function(round)
        local t = round_trips(qmp, through, trips)
        if round > 0 then table.insert(p99.mux, quantile(t, 0.99)) end
        return quantile(t, 0.5)
      end },
  }, math.min(H.rounds, ROUNDS))
  do
    local vm = assert(qmp.connect(through, { timeout = 10 }))
    local v = vm.greeting.QMP.version.qemu
    version = ("%d.%d"):format(v.major, v.minor)
    vm:close()
  end
  local d, m = H.stats(s.direct), H.stats(s.mux)
  local ratio = H.stats(H.ratios(s.direct, s.mux))   -- as the table reads ratios: the contender's over ours
  local added = {}
  for i = 1, #s.mux do added[i] = s.mux[i] - s.direct[i] end
  local bound = 1.2 * d.median + 100e-6
  return {
    id = "10a", what = ("query-status round trip through qmp-lua mux, QEMU %s (median)"):format(version),
    qmp = H.spread(m, "seconds"), contender = "direct: " .. H.spread(d, "seconds"),
    ratio = H.spread(ratio, "ratio"), target = "≤ 1.2× direct + 100 µs",
    met = m.median <= bound,
    note = ("%d round trips per round and contender, a qmp client on a second monitor of the same QEMU; "
            .. "the mux adds %s (median of rounds); p99: mux %s, direct %s; bound now %s")
      :format(trips, H.seconds(H.stats(added).median), H.spread(H.stats(p99.mux), "seconds"),
              H.spread(H.stats(p99.direct), "seconds"), H.seconds(bound)),
  }
end

local function flood_row()
  local peer_exe = assert(H.compile("mux_peer.c", false))
  local clients_exe = assert(H.compile("mux_clients.c", false))
  local dir = H.dir()
  local upstream, peer_log = dir .. "/mux-peer.sock", dir .. "/mux-peer.log"
  local peer = H.spawn({ peer_exe, upstream }, peer_log)
  H.wait_listening(upstream, peer, peer_log)
  local mux, path, mux_log = start_mux(upstream)
  local cpu0, t0 = cpu_seconds(mux), require("qmp").monotime()
  H.say("  [mux flood] %d clients, %d events/s each for %d s", CLIENTS, RATE, SECONDS)
  local out, err = H.capture(("%s %s %d %d %d"):format(H.quote(clients_exe), H.quote(path), CLIENTS, RATE, SECONDS))
  if not out then error("mux_clients failed: " .. err .. "\nmux: " .. (H.read(mux_log) or ""), 0) end
  local cpu, wall = cpu_seconds(mux) - cpu0, require("qmp").monotime() - t0
  local want, counts, lost, total = RATE * SECONDS, {}, 0, 0
  for k, events, gaps in out:gmatch("client (%d+) (%d+) (%d+)") do
    events, gaps = tonumber(events), tonumber(gaps)
    counts[#counts + 1] = events
    total = total + events
    if events ~= want or gaps ~= 0 then
      lost = lost + 1
      H.say("  [mux flood] client %s: %d of %d events, %d out of turn", k, events, want, gaps)
    end
  end
  local elapsed = tonumber(out:match("elapsed (%S+)"))
  local median, p99, max = out:match("lag (%S+) (%S+) (%S+)")
  local cut = select(2, (H.read(mux_log) or ""):gsub(" cut", ""))
  H.say("  [mux flood] %d events delivered in %.2f s; mux CPU %.2f s over %.2f s", total, elapsed, cpu, wall)
  return {
    id = "10b", what = ("%d clients through qmp-lua mux, %dk events/s each for %d s"):format(CLIENTS, RATE // 1000,
                                                                                           SECONDS),
    qmp = ("%.0fk events/s delivered, mux %.0f %% of a core"):format(total / elapsed / 1000, 100 * cpu / wall),
    target = "nothing lost", met = #counts == CLIENTS and lost == 0 and cut == 0,
    note = ("%d of %d clients got all %d events in turn; %d cut; lag from the peer's timestamp: median %s, "
            .. "p99 %s, max %s; mux CPU %s per delivered event (its whole run, connects included)")
      :format(CLIENTS - lost, CLIENTS, want, cut, H.seconds(tonumber(median)), H.seconds(tonumber(p99)),
              H.seconds(tonumber(max)), H.seconds(cpu / math.max(total, 1))),
  }
end

function M.run()
  return { rtt_row(), flood_row() }
end

return M
