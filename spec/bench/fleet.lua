--- Row 7: a host's fleet in one qmp.loop, from 1 to 10,000 monitors
-- (QMP_BENCH_QUICK: 1, 500 and 2,000).  Each fleet runs in a fresh process
-- (fleet_child.lua, its fd limit raised with `ulimit -n`) against a peer
-- of its own (fleet_peer.c, built by `make bench`): every monitor is a
-- qmp.client added to one loop, which connects and negotiates them all;
-- then the loop's CPU over IDLE idle seconds, the memory per client, and
-- EVENTS events one at a time, GAP_US apart, each on a monitor picked at
-- random: the loop's CPU per event and the latency from the peer's send
-- to the handler (both on CLOCK_MONOTONIC).  The events come in rounds,
-- interleaved with the same on a loop of one client in the same process,
-- so that a load beside the benchmark weighs on both alike.  The fleet of
-- 500 also takes floods spread over its clients, interleaved with the same
-- floods on the loop of one.
local H = require "bench.harness"
local proc = require "support.proc"

local M = {}

local EVENTS, GAP_US, IDLE = 500, 4000, 2
local FLOOD_SIZE = 500            -- the fleet that also takes the floods
-- Floods are short and many: a round's two floods run close together, and
-- the median of many rounds stands a load beside the benchmark.
local FLOOD_EVENTS, FLOOD_ROUNDS = H.quick and 20000 or 40000, H.quick and 7 or 15
local PEER = ".build/bench/fleet_peer"
local PER_SOCKET = 1000           -- clients per listening socket (a backlog holds 4,096)
local SPARE_FDS = 64              -- the process's own beside one per client

-- The peer, built by the Makefile's rule (a no-op when up to date).
local function peer_exe()
  local _, err = H.capture("make -s " .. PEER)
  if err then error("building the fleet peer failed: " .. err, 0) end
  return PEER
end

-- The hard limit of open files, or nil when unlimited.
local function hard_fd_limit()
  local out = H.capture("ulimit -Hn") or ""
  return math.tointeger(tonumber(out:match("%d+")))
end

-- Run one fleet; returns the child's result table (result.slow says what
-- did not finish in time).
local function run_fleet(exe, size, opts)
  local dir = H.dir()
  local control = ("%s/fleet%d.ctl"):format(dir, size)
  local sockets = {}
  for k = 1, math.max(1, math.ceil(size / PER_SOCKET)) do
    sockets[k] = ("%s/fleet%d-%d.sock"):format(dir, size, k)
  end
  local log = ("%s/fleet%d.log"):format(dir, size)
  local argv = { exe, control }
  for _, p in ipairs(sockets) do argv[#argv + 1] = p end
  local pid = H.spawn(argv, log)
  H.wait_listening(control, pid, log)
  local args = { "control=" .. control, "sockets=" .. table.concat(sockets, ","), "size=" .. size,
                 "events=" .. opts.events, "gap_us=" .. GAP_US, "idle=" .. IDLE, "budget=" .. opts.budget,
                 "rounds=" .. H.rounds }
  if opts.flood then
    args[#args + 1] = "flood=" .. opts.flood
    args[#args + 1] = "flood_rounds=" .. FLOOD_ROUNDS
  end
  local words = { "exec lua5.4", H.quote(H.bench_dir .. "/fleet_child.lua") }
  for _, a in ipairs(args) do words[#words + 1] = H.quote(a) end
  local script = ("ulimit -n %d && %s"):format(size + SPARE_FDS, table.concat(words, " "))
  local p = assert(io.popen("sh -c " .. H.quote(script) .. " 2>&1"))
  local result, output = nil, {}
  for line in p:lines() do
    local chunk = line:match("^result (.*)$")
    if chunk then
      result = assert(load("return " .. chunk, "=fleet_child", "t", {}))()
    else
      H.say("%s", line)
      output[#output + 1] = line
    end
  end
  p:close()
  proc.wait_exit(pid, 5)   -- the peer ends when the child's control connection closes
  if not result then
    error(("the fleet of %d failed:\n%s\npeer: %s"):format(size, table.concat(output, "\n"), H.read(log) or ""), 0)
  end
  return result
end

local function micro(s)
  return s and H.seconds(s) or "—"
end

local function numbers(text)
  local list = {}
  for v in (text or ""):gmatch("%S+") do list[#list + 1] = tonumber(v) end
  return list
end

-- The per-round samples of a result, as statistics: the fleet's CPU per
-- event, the loop of one's, and their ratio round by round.
local function event_stats(r)
  local fleet, solo = numbers(r.event_cpu), numbers(r.solo_cpu)
  if #fleet == 0 then return nil end
  return H.stats(fleet), H.stats(solo), H.stats(H.ratios(fleet, solo))
end

-- One line of the table printed at the end.
local function table_line(r)
  local cpu, _, ratio = event_stats(r)
  local line = ("%8d  %10s  %8s  %6s  %10s  %10s  %9s  %10s  %10s"):format(r.size, micro(cpu and cpu.median),
    ratio and H.ratio(ratio.median) or "—", r.busy and ("%.0f %%"):format(100 * r.busy) or "—", micro(r.median),
    micro(r.p99),
    r.idle and ("%.3f %%"):format(100 * r.idle) or "—", r.rss and H.bytes(r.rss) or "—", micro(r.connect))
  if r.slow then line = line .. "  too slow: " .. r.slow end
  return line
end

-- "busy": the share of a core the loop took while the paced events came
-- (near 100 %: saturated, its events queue up).
local HEADER = ("%8s  %10s  %8s  %6s  %10s  %10s  %9s  %10s  %10s"):format("monitors", "CPU/event", "vs one",
  "busy", "median", "p99", "idle CPU", "memory", "connect")

function M.run()
  local exe = peer_exe()
  local sizes = H.quick and { 1, 500, 2000 } or { 1, 100, 500, 2000, 10000 }
  local events = H.quick and 200 or EVENTS
  local hard = hard_fd_limit()
  local limited
  local results = {}
  for _, wanted in ipairs(sizes) do
    local size = wanted
    if hard and size + SPARE_FDS > hard then
      size = hard - SPARE_FDS
      limited = ("the hard limit of open files is %d: %d monitors measured instead of %d"):format(hard, size, wanted)
      H.say("  %s", limited)
    end
    if size >= 1 and (#results == 0 or results[#results].size < size) then
      -- A loop that visits every client each turn takes long: bounded, so
      -- that the whole benchmark stays within about 3 minutes.
      local budget = size >= 10000 and 60 or 30
      results[#results + 1] = run_fleet(exe, size, { events = events, budget = budget,
                                                     flood = wanted == FLOOD_SIZE and FLOOD_EVENTS or nil })
    end
  end

  local one, big = results[1], results[#results]
  local lines = { HEADER }
  for _, r in ipairs(results) do lines[#lines + 1] = table_line(r) end
  local whole = table.concat(lines, "\n     ")
  H.say("\n  %s", (table.concat(lines, "\n  ")))

  local n = ("%d"):format(big.size):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", "")
  -- A figure of the biggest fleet, or why there is none.
  local function figure(value, text)
    if value ~= nil then return text end
    return big.slow and ("too slow: " .. big.slow) or "—"
  end
  local connected = big.rss ~= nil   -- the connect phase finished in time
  local rows = {}
  rows[#rows + 1] = {
    id = "7a", what = ("%s monitors connected and negotiated in one qmp.loop"):format(n),
    qmp = figure(big.rss, H.seconds(big.connect)), target = "< 10 s", met = connected and big.connect < 10,
    note = ("%s CPU"):format(H.seconds(big.connect_cpu)),
  }
  rows[#rows + 1] = {
    id = "7b", what = ("the loop of %s idle, %d s"):format(n, IDLE),
    qmp = figure(big.idle, ("%.3f %% of a core"):format(100 * (big.idle or 0))),
    target = "< 0.1 % of a core", met = big.idle ~= nil and big.idle < 0.001,
    note = big.settle and ("measured after the first 0.2 s that follow connecting, which took %s CPU")
      :format(H.seconds(big.settle)) or nil,
  }
  rows[#rows + 1] = {
    id = "7c", what = ("memory per idle client, %s in the loop"):format(n),
    qmp = figure(big.rss, big.rss and H.bytes(big.rss)), target = "≤ 16 KiB", met = connected and big.rss <= 16 * 1024,
    note = big.heap and ("resident set growth ÷ clients; %s of it Lua heap"):format(H.bytes(big.heap)) or nil,
  }
  local cpu, solo_cpu, ratio = event_stats(big)
  local alone = event_stats(one)   -- the fleet of one: a loop of one in a process of its own
  rows[#rows + 1] = {
    id = "7d", what = ("CPU per event, one every %d ms on a random one of %s"):format(GAP_US // 1000, n),
    qmp = figure(cpu, cpu and H.spread(cpu, "seconds")),
    contender = solo_cpu and ("loop of one: %s"):format(H.spread(solo_cpu, "seconds")) or "—",
    ratio = ratio and H.spread(ratio, "ratio") or "—", target = "≤ 1.5× one", met = ratio ~= nil and ratio.median <= 1.5,
    note = ("%d events in %d rounds, each interleaved with the same on a loop of one client in the same process; "
            .. "the cost relative to it (lower is better)%s"):format(big.events or 0, H.rounds,
            cpu and alone and (". Against the fleet of 1 (a loop of one in a process of its own, %s): %s")
              :format(H.seconds(alone.median), H.ratio(cpu.median / alone.median)) or ""),
  }
  rows[#rows + 1] = {
    id = "7e", what = ("latency from the peer's send to the handler, %s in the loop"):format(n),
    qmp = figure(big.median, big.median and ("median %s, p99 %s"):format(H.seconds(big.median), H.seconds(big.p99))),
    contender = big.solo_median and ("loop of one: median %s, p99 %s"):format(H.seconds(big.solo_median),
                                                                            H.seconds(big.solo_p99)),
    target = "median < 300 µs, p99 < 2 ms", met = big.median ~= nil and big.median < 300e-6 and big.p99 < 2e-3,
    note = big.max and ("max %s"):format(H.seconds(big.max)) or nil,
  }
  local fleet500
  for _, r in ipairs(results) do if r.flood_spread then fleet500 = r end end
  if fleet500 then
    local spread, on_one = numbers(fleet500.flood_spread), numbers(fleet500.flood_one)
    local r = H.stats(H.ratios(spread, on_one))
    rows[#rows + 1] = {
      id = "7f", what = ("a flood spread over %d clients, CPU per event"):format(fleet500.size),
      qmp = H.spread(H.stats(spread), "seconds"), contender = "one client: " .. H.spread(H.stats(on_one), "seconds"),
      ratio = H.spread(r, "ratio"), target = "≤ 1.1× one", met = r.median <= 1.1,
      note = ("%d rounds of a flood of %d events round-robin over the %d, then the same on a loop of one in the "
              .. "same process; the cost relative to one (lower is better).  The peer writes 8 events at a time "
              .. "to a client in both"):format(FLOOD_ROUNDS, FLOOD_EVENTS, fleet500.size),
    }
  else
    rows[#rows + 1] = { id = "7f", what = ("a flood spread over %d clients"):format(FLOOD_SIZE),
                        qmp = "not measured", note = "its fleet did not come to the floods" }
  end
  rows[#rows + 1] = {
    id = "7g", what = "the fleet from 1 to " .. n .. " monitors", qmp = "see the note",
    note = (limited and (limited .. "\n     ") or "") .. whole,
  }
  return rows
end

return M
