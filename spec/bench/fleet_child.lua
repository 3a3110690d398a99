-- One fleet of the fleet benchmark (fleet.lua), in a process of its own so
-- that its memory and file descriptors are its own.  Against a fleet_peer:
-- first one client alone in a loop of its own (the peer's connection 0),
-- then SIZE monitors in one qmp.loop (qmp.client each: the loop makes the
-- connections; the peer's connections 1..SIZE).  Then it measures the idle
-- loop, the memory per client, paced events (one every GAP_US on a random
-- monitor) in rounds interleaved with the same on the loop of one, and,
-- with flood=N, floods spread over the fleet interleaved with the same
-- flood on the loop of one.
--   lua5.4 fleet_child.lua control=PATH sockets=P1,P2,... size=N events=N gap_us=N
--                          idle=SECONDS budget=SECONDS rounds=N [flood=N flood_rounds=N]
-- Prints progress lines as it goes, then one line "result <Lua table>".
-- Every wait is bounded: a phase that does not finish within the budget is
-- reported as "too slow" (result.slow) and the phases after it are skipped.
local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local qmp = require "qmp"
local unix = require "socket.unix"
local memory = require "support.memory"

local monotime = qmp.monotime

local opt = {}
for i = 1, #arg do
  local k, v = arg[i]:match("^([%w_]+)=(.*)$")
  assert(k, "fleet_child: expected key=value, got " .. arg[i])
  opt[k] = v
end
local sockets = {}
for p in opt.sockets:gmatch("[^,]+") do sockets[#sockets + 1] = p end
local size, events, gap_us = tonumber(opt.size), tonumber(opt.events), tonumber(opt.gap_us)
local idle, rounds = tonumber(opt.idle), tonumber(opt.rounds)
local flood, flood_rounds = tonumber(opt.flood), tonumber(opt.flood_rounds)
local deadline = monotime() + tonumber(opt.budget)
local label = ("[fleet %d]"):format(size)

local function say(fmt, ...)
  io.stdout:write("  ", label, " ", fmt:format(...), "\n")
  io.stdout:flush()
end

local result = { size = size }

local function finish()
  local parts = {}
  for k, v in pairs(result) do
    parts[#parts + 1] = ("%s = %s"):format(k, type(v) == "string" and ("%q"):format(v) or tostring(v))
  end
  io.stdout:write("result { ", table.concat(parts, ", "), " }\n")
  io.stdout:flush()
  os.exit(0)
end

-- The time left of the budget, at most limit.
local function left(limit)
  return math.max(0, math.min(limit or math.huge, deadline - monotime()))
end

local function too_slow(what)
  result.slow = what
  say("too slow: %s; the rest is skipped", what)
  finish()
end

local control = assert(unix.stream())
assert(control:connect(opt.control))

-- An order to the peer; answer(what) reads its answer (bounded).
local function order(line)
  assert(control:send(line .. "\n"))
end

local function answer(what)
  control:settimeout(math.max(left(), 1))
  local reply, err = control:receive("*l")
  if not reply then error(("fleet_child: no answer from the peer to %s: %s"):format(what, err)) end
  if reply:match("^error") then error("fleet_child: the peer says: " .. reply) end
  return reply
end

local NAMES = { "RTC_CHANGE", "BLOCK_IO_ERROR", "BALLOON_CHANGE", "JOB_STATUS_CHANGE" }

-- What the fleet handler does: count events, and in the paced phase keep
-- each one's latency (the peer stamps the send time on CLOCK_MONOTONIC).
local got, latencies = 0, nil
local function handler(ev)
  got = got + 1
  if latencies then
    local ts = ev.timestamp
    latencies[#latencies + 1] = monotime() - (ts.seconds + ts.microseconds * 1e-6)
  end
end

-- The loop of one the fleet is compared with: negotiated first, so it is
-- the peer's connection 0 and the fleet is 1..size.
local solo = assert(qmp.connect(sockets[1], { name = "solo" }))
local solo_loop = qmp.loop{ solo }
solo_loop:on(NAMES, handler)
local first = 1   -- the fleet's first connection at the peer

-- {==================== connect and negotiate

-- After a full collection (memory.heap), both.
local function footprint()
  local heap = memory.heap()
  return memory.rss(), heap
end

local rss0, heap0 = footprint()
local loop = qmp.loop()
local ready, lost = 0, {}
loop:on("qmp.connected", function() ready = ready + 1 end)
loop:on(NAMES, handler)
loop.on_close = function(vm, err) lost[#lost + 1] = vm.name .. ": " .. tostring(err) end
local vms = {}
local c0, t0 = os.clock(), monotime()
for i = 1, size do
  local vm = assert(qmp.client(sockets[(i - 1) % #sockets + 1], { name = "vm" .. i, timeout = left(60) }))
  vms[i] = vm
  loop:add(vm)
end
local ok, err = loop:run({ timeout = left(60), done = function() return ready + #lost == size end })
result.connect, result.connect_cpu = monotime() - t0, os.clock() - c0
if #lost > 0 then error(("fleet_child: %d of %d connections failed, the first: %s"):format(#lost, size, lost[1])) end
if not ok then too_slow(("%d of %d ready after %.1f s (%s)"):format(ready, size, result.connect, err)) end
order("count")
local peer_count = tonumber(answer("count"))
assert(peer_count == size + first, ("the peer has %s negotiated, expected %d"):format(peer_count, size + first))
say("%d connected and negotiated in %.2f s (%.2f s CPU)", size, result.connect, result.connect_cpu)

-- }==================== connect and negotiate
-- {==================== memory and idle

local rss1, heap1 = footprint()
result.rss, result.heap = (rss1 - rss0) / size, (heap1 - heap0) / size
say("memory per client: %.1f KiB resident, of which %.1f KiB Lua heap", result.rss / 1024, result.heap / 1024)

-- The first turns after connecting do the connect phase's last chores
-- once: measured apart, so that the idle figure is the loop's steady state.
if left() < idle + 1 then too_slow("no time left for the idle phase") end
c0 = os.clock()
loop:run({ timeout = 0.2 })
result.settle = os.clock() - c0
c0 = os.clock()
ok, err = loop:run({ timeout = idle })
result.idle = (os.clock() - c0) / idle
assert(not ok and err.kind == "timeout", "the idle loop ended with " .. tostring(err))
say("idle %g s: %.3f %% of a core (the first 0.2 s after connecting: %.2f ms CPU)", idle, 100 * result.idle,
    result.settle * 1e3)

-- }==================== memory and idle
-- {==================== paced events

-- n paced events on `count` connections from `from`, the loop run until
-- all came; keeps their latencies in into.  The CPU per event.
local function paced(which_loop, n, from, count, into)
  got, latencies = 0, into
  order(("paced %d %d %d %d"):format(n, gap_us, from, count))
  local c, t = os.clock(), monotime()
  local done, why = which_loop:run({ timeout = left(n * gap_us * 1e-6 * 4 + 10), done = function() return got >= n end })
  local spent, took = os.clock() - c, monotime() - t
  if not done then
    too_slow(("%d of %d paced events on %s in %.1f s (%s)"):format(got, n, which_loop == solo_loop and "the loop of one"
      or count .. " monitors", took, why))
  end
  answer("paced")
  latencies = nil
  return spent / n, spent, took
end

local function percentile(sorted, p)
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

-- Rounds of the fleet and the loop of one in turn, after a warm-up round.
local per_round = math.ceil(events / rounds)
local fleet_cpu, solo_cpu, fleet_lat, solo_lat = {}, {}, {}, {}
local busy, span = 0, 0   -- the fleet's CPU and wall time over the rounds
for round = 0, rounds do
  local f, spent, took = paced(loop, round == 0 and 20 or per_round, first, size, round > 0 and fleet_lat or {})
  local o = paced(solo_loop, round == 0 and 20 or per_round, 0, 1, round > 0 and solo_lat or {})
  if round > 0 then
    fleet_cpu[round], solo_cpu[round] = f, o
    busy, span = busy + spent, span + took
  end
  say("paced, %s: %d events one every %d µs on a random one of %d: %.1f µs CPU per event; on the loop of one %.1f µs",
      round == 0 and "warm-up" or ("round %d/%d"):format(round, rounds), round == 0 and 20 or per_round, gap_us,
      size, f * 1e6, o * 1e6)
end
table.sort(fleet_lat)
table.sort(solo_lat)
result.event_cpu = table.concat(fleet_cpu, " ")
result.solo_cpu = table.concat(solo_cpu, " ")
result.median, result.p99, result.max = percentile(fleet_lat, 0.5), percentile(fleet_lat, 0.99), fleet_lat[#fleet_lat]
result.solo_median, result.solo_p99 = percentile(solo_lat, 0.5), percentile(solo_lat, 0.99)
result.events, result.busy = #fleet_lat, busy / span
say("latency over %d events: median %.0f µs, p99 %.0f µs, max %.0f µs; on the loop of one: median %.0f µs, "
    .. "p99 %.0f µs; the fleet's loop was busy %.1f %% of the time", #fleet_lat, result.median * 1e6,
    result.p99 * 1e6, result.max * 1e6, result.solo_median * 1e6, result.solo_p99 * 1e6, 100 * result.busy)

-- }==================== paced events
-- {==================== flood: spread over the fleet, or all on one client

-- CPU per event of one flood of `flood` events, the loop run until all came.
local function flood_once(which_loop, k, from)
  got = 0
  order(("flood %d %d %d"):format(flood, k, from))
  local c = os.clock()
  local done, why = which_loop:run({ timeout = left(60), done = function() return got >= flood end })
  local spent = os.clock() - c
  if not done then
    too_slow(("%d of %d flood events on %s (%s)"):format(got, flood, which_loop == solo_loop and "the loop of one"
      or k .. " monitors", why))
  end
  answer("flood")
  return spent / flood
end

if flood then
  local spread, one = {}, {}
  for round = 0, flood_rounds do
    local s = flood_once(loop, size, first)
    local o = flood_once(solo_loop, 1, 0)
    if round > 0 then spread[#spread + 1], one[#one + 1] = s, o end
    say("flood of %d, %s: over %d clients %.2f µs CPU per event, on a loop of one %.2f µs", flood,
        round == 0 and "warm-up" or ("round %d/%d"):format(round, flood_rounds), size, s * 1e6, o * 1e6)
  end
  result.flood_spread = table.concat(spread, " ")
  result.flood_one = table.concat(one, " ")
end

-- }==================== flood

for _, vm in ipairs(vms) do vm:close() end
solo:close()
control:close()
finish()
