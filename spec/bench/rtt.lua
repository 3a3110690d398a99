--- Row 8: query-status round trips against a real QEMU (support/qemu.lua:
-- TCG, paused, no devices), qmp against a minimal C client (qmp_rtt.c) on
-- the same monitor socket, one connection after the other (QEMU serves one
-- client per monitor).  Wall time per round trip.
local H = require "bench.harness"

local M = {}

local TRIPS = 5000

function M.run()
  local qemu = require "support.qemu"
  if not qemu.available() then
    return { { id = "8", what = "query-status round trips, real QEMU", qmp = "no QEMU here",
               target = "≤ 1.2× the C client" } }
  end
  local qmp = require "qmp"
  local exe, why = H.compile("qmp_rtt.c", false)
  if not exe then error(why, 0) end
  local vm = qemu.start()
  H.cleanup(function() vm:stop() end)
  local trips = H.size(TRIPS)
  local version
  local s = H.interleave("rtt", {
    { name = "qmp", run = function()
        local client = assert(qmp.connect(vm.sock, { timeout = 10 }))
        local v = client.greeting.QMP.version.qemu
        version = ("%d.%d"):format(v.major, v.minor)
        assert(client:execute("query-status"))
        local t0 = qmp.monotime()
        for _ = 1, trips do assert(client:execute("query-status")) end
        local t = qmp.monotime() - t0
        client:close()
        return t / trips
      end },
    { name = "C client", run = function()
        local out, err = H.capture(("%s %s %d"):format(H.quote(exe), H.quote(vm.sock), trips))
        if not out then error("qmp_rtt failed: " .. err, 0) end
        return assert(tonumber(out:match("^%s*(%S+)")), "no time from qmp_rtt: " .. out) / trips
      end },
  })
  local q, c = H.stats(s.qmp), H.stats(s["C client"])
  local r = H.stats(H.ratios(s["C client"], s.qmp))
  return { {
    id = "8", what = ("query-status round trip, QEMU %s (wall time)"):format(version),
    qmp = H.spread(q, "seconds"), contender = H.spread(c, "seconds") .. " minimal C client",
    ratio = H.spread(r, "ratio"), target = "≥ 0.83× (within 1.2×)", met = r.median >= 1 / 1.2,
    note = ("%d round trips per round"):format(trips),
  } }
end

return M
