--- Row 6: millions of events through a handler, in a fresh process (so no
-- other benchmark's heap counts): RSS growth from the moment the client is
-- negotiated to the process's peak (VmHWM).  QMP_BENCH_SOAK_EVENTS sets
-- how many (default 10,000,000; QMP_BENCH_QUICK: 1,000,000).
local H = require "bench.harness"

local M = {}

local CORPUS = 100000

local function mib_list(samples)
  local list = {}
  for i, v in ipairs(samples) do list[i] = ("%.1f"):format(v / (1 << 20)) end
  return table.concat(list, " ")
end

function M.run()
  local n = H.env_int("QMP_BENCH_SOAK_EVENTS", H.quick and 1000000 or 10000000)
  local repeats = math.max(1, n // CORPUS)
  n = repeats * CORPUS
  local path, peer = H.blast_peer(H.corpus_file(CORPUS), 1, repeats)
  local every = math.max(CORPUS, n // 10)
  H.say("  [soak] %d events (the %dk-event corpus %d times), VmRSS every %d", n, CORPUS // 1000, repeats, every)
  local cmd = ("lua5.4 %s qmp %s every=%d 2>&1"):format(H.quote(H.bench_dir .. "/client_child.lua"),
                                                         H.quote(path), every)
  local t0 = os.time()
  local p = assert(io.popen(cmd))
  local text = {}
  for line in p:lines() do
    local count, rss = line:match("^sample (%d+) (%d+)$")
    if count then
      H.say("  [soak] %5.1fM events, VmRSS %s", tonumber(count) / 1e6, H.bytes(tonumber(rss)))
    else
      text[#text + 1] = line
    end
  end
  p:close()
  text = table.concat(text, "\n")
  local chunk = text:match("return {.*}")
  if not chunk then error("the soak client failed:\n" .. text, 0) end
  local r = assert(load(chunk))()
  H.wait_exit(peer, 10)
  assert(r.events == n, ("the handler saw %d events, not %d"):format(r.events, n))
  local growth = r.peak - r.rss_ready
  return { {
    id = "6", what = ("%.0fM events through a handler, RSS growth"):format(n / 1e6),
    qmp = ("%s (%s → %s)"):format(H.bytes(growth), H.bytes(r.rss_ready), H.bytes(r.peak)),
    target = "≤ 16 MiB", met = growth <= 16 << 20,
    note = ("from VmRSS once negotiated to the peak VmHWM; %.0fk events/s (CPU), %d s; VmRSS at each tenth: %s MiB")
           :format(n / r.cpu / 1000, os.time() - t0, mib_list(r.samples)),
  } }
end

return M
