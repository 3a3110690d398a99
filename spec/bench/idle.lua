--- Row 7: 500 idle connections in one qmp.loop (many_peer.lua serves
-- them all).  The loop's CPU time over 2 idle seconds; then one event at a
-- time on a random connection: the time from the peer's send to the
-- handler, both read on CLOCK_MONOTONIC (qmp.monotime).
local H = require "bench.harness"

local M = {}

local CONNECTIONS, TRIALS, GAP, IDLE = 500, 200, 0.005, 2

function M.run()
  local qmp = require "qmp"
  local unix = require "socket.unix"
  local trials = H.quick and 50 or TRIALS
  local dir = H.dir()
  local path, log = dir .. "/many.sock", dir .. "/many.log"
  local pid = H.spawn({ "lua5.4", H.bench_dir .. "/many_peer.lua", path, tostring(CONNECTIONS),
                        tostring(trials), tostring(GAP) }, log)
  H.wait_listening(path, pid, log)
  local t0 = qmp.monotime()
  local vms = {}
  H.cleanup(function() for _, vm in ipairs(vms) do vm:close() end end)
  for i = 1, CONNECTIONS do
    vms[i] = assert(qmp.connect(path, { timeout = 10, name = "vm" .. i }))
  end
  H.say("  [idle] %d clients connected in %s", CONNECTIONS, H.seconds(qmp.monotime() - t0))
  local loop = qmp.loop(vms)
  local latencies = {}
  loop:on("RTC_CHANGE", function(ev)
    local now = qmp.monotime()
    latencies[#latencies + 1] = now - (ev.timestamp.seconds + ev.timestamp.microseconds / 1e6)
  end)

  local c0 = os.clock()
  local _, err = loop:run({ timeout = IDLE })
  local idle_cpu = os.clock() - c0
  assert(err and err.kind == "timeout", "the idle loop ended with " .. tostring(err))
  H.say("  [idle] %d s idle: %s CPU", IDLE, H.seconds(idle_cpu))

  local control = assert(unix.stream())
  assert(control:connect(path))
  H.cleanup(function() control:close() end)
  assert(control:send("go\n"))
  c0 = os.clock()
  local ok, why = loop:run({ timeout = 60, done = function() return #latencies >= trials end })
  local busy_cpu = os.clock() - c0
  assert(ok, "the events did not all come: " .. tostring(why) .. "\n" .. (H.read(log) or ""))
  local lat = H.stats(latencies)
  H.say("  [idle] %d events, one at a time: latency median %s, max %s", trials, H.seconds(lat.median),
        H.seconds(lat.max))
  local sorted = {}
  for i, v in ipairs(latencies) do sorted[i] = v end
  table.sort(sorted)
  return { {
    id = "7a", what = ("%d idle connections in one qmp.loop, %d s"):format(CONNECTIONS, IDLE),
    qmp = ("%s CPU (%.2f %% of a core)"):format(H.seconds(idle_cpu), 100 * idle_cpu / IDLE),
    target = "~0 (< 1 % of a core)", met = idle_cpu / IDLE < 0.01,
  }, {
    id = "7b", what = ("then one event on any of them to its handler"),
    qmp = ("median %s (%s–%s)"):format(H.seconds(lat.median), H.seconds(lat.min), H.seconds(lat.max)),
    target = "< 1 ms median", met = lat.median < 1e-3,
    note = ("%d trials; 90th percentile %s; the loop's CPU per event %s (every turn visits all %d clients)"):format(
      trials, H.seconds(sorted[math.ceil(#sorted * 0.9)]), H.seconds(busy_cpu / trials), CONNECTIONS),
  } }
end

return M
