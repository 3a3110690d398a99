-- One end-to-end client in a process of its own (for callgrind, and for
-- memory figures no other benchmark has inflated), against a blast peer.
--   lua5.4 client_child.lua CLIENT <socket> [events=A,B] [every=K] [profile=N] [clock=frozen]
-- CLIENT: qmp, luasocket, careful or chunked (bench/clients.lua).
-- Prints "sample <events> <VmRSS>" every K events as it goes, then a Lua
-- chunk: return { events, skipped, cpu, setup, rss_ready, peak, samples }
-- (cpu: the process's CPU seconds from the end of negotiation to the end
-- of the stream; setup: those before it, loading the modules, connecting
-- and negotiating; samples: those VmRSS figures; rss_ready: VmRSS once
-- negotiated).
-- profile=N: also count which Lua functions run, one sample every N Lua VM
-- instructions once negotiated, and print "profile <samples> <function>"
-- lines, most first (the count hook sees Lua code only, not C).
-- clock=frozen: the qmp client's clock stands still (no deadline passes,
-- no time-driven work runs), for runs slowed down by instrumentation.
local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local clients = require "bench.clients"
local memory = require "support.memory"

local which, path = arg[1], arg[2]
local opts = {}
for i = 3, #arg do
  local k, v = arg[i]:match("^(%w+)=(.*)$")
  if k == "events" then
    opts.events, opts.interest = {}, {}
    for name in v:gmatch("[^,]+") do
      opts.events[#opts.events + 1] = name
      opts.interest[name] = true
    end
  elseif k == "profile" then
    opts.profile = assert(math.tointeger(tonumber(v)), "profile=N: an integer")
  elseif k == "clock" and v == "frozen" then
    opts.clock = { now = function() return 0 end, sleep = function() end }
  elseif k == "every" then
    opts.every = assert(math.tointeger(tonumber(v)), "every=K: an integer")
  else
    error("client_child: unknown argument " .. arg[i])
  end
end

local result = { samples = {} }
local counts = {}
local t0, ready_at = os.clock(), nil
opts.ready = function()
  result.rss_ready = memory.rss()
  ready_at = os.clock()
  if opts.profile then
    local getinfo = debug.getinfo
    debug.sethook(function()
      local info = getinfo(2, "Sn")
      if info then
        local where = ("%s:%d %s"):format(info.short_src, info.linedefined, info.name or "?")
        counts[where] = (counts[where] or 0) + 1
      end
    end, "", opts.profile)
  end
end
if opts.every then
  opts.tick = function(n)
    local rss = memory.rss()
    result.samples[#result.samples + 1] = rss
    io.write(("sample %d %d\n"):format(n, rss))
    io.flush()
  end
end
local run = assert(clients[which], "client_child: qmp, luasocket, careful or chunked")
local handled, stats = run(path, opts)
result.cpu = os.clock() - assert(ready_at, "the client never said it was ready")
result.setup = ready_at - t0
debug.sethook()
result.events, result.skipped = handled, stats.skipped
result.peak = memory.peak()

local ranked = {}
for where, count in pairs(counts) do ranked[#ranked + 1] = { where = where, count = count } end
table.sort(ranked, function(a, b) return a.count > b.count end)
for i = 1, math.min(25, #ranked) do io.write(("profile %d %s\n"):format(ranked[i].count, ranked[i].where)) end
io.write(("return { events = %d, skipped = %d, cpu = %.6f, setup = %.6f, rss_ready = %d, peak = %d, "
          .. "samples = { %s } }\n"):format(result.events, result.skipped, result.cpu, result.setup,
                                            result.rss_ready, result.peak, table.concat(result.samples, ", ")))
