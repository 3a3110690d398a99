-- #long: event floods (`make test-long`, not `make test`).
-- A peer process (paced_peer.lua) writes 50,000 events/s for 60 s, each
-- numbered in data.seq, at a steady rate (a rate-limited writer, not as
-- fast as the socket takes them).
--   1. into a handler that keeps up: every event arrives once, in order,
--      and the resident set stays bounded;
--   2. into a slow handler (1 ms a call) and a listener read slowly, both
--      with a bounded queue, under vm:run, then the same under qmp.loop
--      (beside a second, quiet VM): the client still reads everything
--      (the peer never waits on it), each consumer's delivered + dropped
--      == sent exactly, its drops are exactly the numbers it is missing,
--      and the bound is really reached (dropped > 0).
-- QMP_LONG_RATE and QMP_LONG_SECONDS change the rate and the length.
local qmp = require "qmp"
local core = require "qmp.core"
local measure = require "long.measure"
local peers = require "long.peers"
local settings = require "long.settings"

local cleanup = require("support.cleanup")(after_each)

local SENT = math.floor(settings.RATE * settings.SECONDS)
local RSS_BOUND = 16 * 1024   -- KiB the resident set may grow by during a flood
local MAX_LAG = 1.0           -- seconds the peer may ever be behind its schedule
local SLOW = 0.001            -- seconds per call of the slow handler
local MAX_QUEUE = 1000        -- the handlers' queue in the slow runs
local LISTEN_QUEUE = 500      -- the listener's
local TAKE_EVERY, TAKE = 0.01, 20   -- the listener's reader: 20 events every 10 ms

-- A consumer's view of the numbers: in order, each once, and which are missing.
local function tally()
  return { n = 0, last = 0, missing = 0, disorder = 0 }
end

local function see(t, seq)
  if type(seq) ~= "number" or seq <= t.last then
    t.disorder = t.disorder + 1   -- a duplicate, or out of order
  else
    t.missing, t.last = t.missing + (seq - t.last - 1), seq
  end
  t.n = t.n + 1
end

-- Sample VmRSS every 2 s from a client's timers (no collection: the live figure).
local function sample_rss(vm, into)
  local function tick(v)
    into[#into + 1] = measure.rss_now()
    v:after(2, tick)
  end
  vm:after(2, tick)
end

local function max_of(list, floor)
  local m = floor
  for _, v in ipairs(list) do if v > m then m = v end end
  return m
end

-- What every flood checks of the peer: it sent everything on schedule.
local function check_peer(report)
  assert.equal(SENT, report.sent)
  assert.is_true(report.lag <= MAX_LAG,
    ("the peer fell %.2f s behind its schedule: the client stopped reading"):format(report.lag))
end

describe("#long flood", function()
  it("50,000 events/s for 60 s into a handler: none lost, none twice, in order, RSS bounded", function()
    local peer = peers.paced(settings.RATE, settings.SECONDS, cleanup)
    local vm = assert(qmp.connect(peer.path, { timeout = 10 }))
    cleanup(function() vm:close() end)
    local seen = tally()
    vm:on("BLOCK_IO_ERROR", function(ev) see(seen, ev.data.seq) end)
    local rss = {}
    sample_rss(vm, rss)
    local rss0 = measure.rss()
    local cpu0, t0 = os.clock(), qmp.monotime()
    local ok, err = vm:run({ timeout = settings.SECONDS + 60 })
    local cpu, seconds = os.clock() - cpu0, qmp.monotime() - t0
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))   -- the peer closed after its last event
    local report = peer:finish(30)
    local rss1 = measure.rss()
    local peak = max_of(rss, rss1)
    check_peer(report)
    assert.equal(SENT, vm.stats.events)
    assert.equal(SENT, seen.n)
    assert.equal(0, seen.missing)
    assert.equal(0, seen.disorder)
    assert.equal(SENT, seen.last)
    assert.equal(0, vm.stats.overflow)
    assert.is_true(peak - rss0 <= RSS_BOUND, ("VmRSS grew from %d to %d KiB"):format(rss0, peak))
    measure.say("flood handler: %d events sent at %d/s over %.1f s (peer at most %.3f s behind), %d delivered, "
                .. "0 lost, 0 twice, in order; client CPU %.1f s (%.0f%% of a core); VmRSS %d KiB before, "
                .. "peak %d, %d after", report.sent, settings.RATE, report.elapsed, report.lag, seen.n, cpu,
                100 * cpu / seconds, rss0, peak, rss1)
  end)

  -- The slow consumers of one VM: a 1 ms handler behind the handlers' queue
  -- (MAX_QUEUE) and a listener (LISTEN_QUEUE) read TAKE events every
  -- TAKE_EVERY seconds by a timer.  Returns their tallies and the listener.
  local function slow_consumers(vm, on)
    local handled, listened = tally(), tally()
    on("BLOCK_IO_ERROR", function(ev)
      see(handled, ev.data.seq)
      core.sleep(SLOW)
    end)
    local l = vm:listen("BLOCK_IO_ERROR", nil, { max_queue = LISTEN_QUEUE })
    local function take(v)
      for _ = 1, TAKE do
        local ev = l:next()
        if not ev then break end
        see(listened, ev.data.seq)
      end
      v:after(TAKE_EVERY, take)
    end
    vm:after(TAKE_EVERY, take)
    return handled, listened, l
  end

  -- What the slow runs check, and their figures.
  local function check_slow(what, vm, report, handled, listened, l, rss0, peak, rss1, overflow_reports)
    check_peer(report)
    assert.equal(SENT, vm.stats.events)                 -- the client read every one
    -- the handlers: all of the queue was dispatched before the run ended
    assert.equal(0, handled.disorder)
    assert.is_true(vm.stats.overflow > 0)
    assert.equal(SENT, handled.n + vm.stats.overflow)
    assert.equal(handled.missing, vm.stats.overflow)
    assert.equal(SENT, handled.last)
    assert.is_true(overflow_reports > 0)
    -- the listener: what is still buffered is read now
    local buffered = l:size()
    while true do
      local ev = l:next()
      if not ev then break end
      see(listened, ev.data.seq)
    end
    assert.equal(0, listened.disorder)
    assert.is_true(l.dropped > 0)
    assert.equal(SENT, listened.n + l.dropped)
    assert.equal(listened.missing, l.dropped)
    assert.equal(SENT, listened.last)
    assert.is_true(peak - rss0 <= RSS_BOUND, ("VmRSS grew from %d to %d KiB"):format(rss0, peak))
    measure.say("flood slow %s: %d events sent at %d/s over %.1f s (peer at most %.3f s behind), all read; "
                .. "1 ms handler, max_queue %d: %d delivered + %d dropped; listener, max_queue %d, read %d "
                .. "per %g s: %d read (%d of them left at the end) + %d dropped; drops == missing numbers, "
                .. "order kept; VmRSS %d KiB before, peak %d, %d after",
                what, report.sent, settings.RATE, report.elapsed, report.lag, MAX_QUEUE, handled.n,
                vm.stats.overflow, LISTEN_QUEUE, TAKE, TAKE_EVERY, listened.n, buffered, l.dropped, rss0, peak, rss1)
  end

  it("the same into a slow handler and a slow listener under vm:run: delivered + dropped == sent", function()
    local peer = peers.paced(settings.RATE, settings.SECONDS, cleanup)
    local vm = assert(qmp.connect(peer.path, { timeout = 10, max_queue = MAX_QUEUE }))
    cleanup(function() vm:close() end)
    local reports = 0
    vm.on_error = function(e) if e.kind == "overflow" then reports = reports + 1 end end
    local handled, listened, l = slow_consumers(vm, function(...) return vm:on(...) end)
    local rss = {}
    sample_rss(vm, rss)
    local rss0 = measure.rss()
    local ok, err = vm:run({ timeout = settings.SECONDS + 60 })
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))
    local report = peer:finish(30)
    local rss1 = measure.rss()
    check_slow("vm:run", vm, report, handled, listened, l, rss0, max_of(rss, rss1), rss1, reports)
  end)

  it("the same under qmp.loop, beside a quiet VM whose every event arrives", function()
    local peer = peers.paced(settings.RATE, settings.SECONDS, cleanup)
    local quiet = peers.paced(100, settings.SECONDS, cleanup)
    local vm = assert(qmp.connect(peer.path, { timeout = 10, max_queue = MAX_QUEUE, name = "flood" }))
    local other = assert(qmp.connect(quiet.path, { timeout = 10, max_queue = MAX_QUEUE, name = "quiet" }))
    cleanup(function() vm:close() other:close() end)
    local reports = 0
    vm.on_error = function(e) if e.kind == "overflow" then reports = reports + 1 end end
    local loop = qmp.loop{ vm, other }
    local quiet_seen = tally()
    local handled, listened, l = slow_consumers(vm, function(names, fn)
      return loop:on(names, function(ev, v)   -- a fleet handler, slow for every VM
        if v == other then see(quiet_seen, ev.data.seq) end
        if v == vm then return fn(ev, v) end
        core.sleep(SLOW)
      end)
    end)
    local rss = {}
    sample_rss(vm, rss)
    local closed = {}
    loop.on_close = function(v, e) closed[#closed + 1] = v.name .. ": " .. tostring(e) end
    local rss0 = measure.rss()
    local ok, err = loop:run({ timeout = settings.SECONDS + 60 })
    assert.is_nil(ok)
    assert.equal("closed", err.kind, tostring(err))   -- both peers done, no VM left
    assert.equal(2, #closed)
    local report, quiet_report = peer:finish(30), quiet:finish(30)
    local rss1 = measure.rss()
    check_slow("qmp.loop", vm, report, handled, listened, l, rss0, max_of(rss, rss1), rss1, reports)
    assert.equal(quiet_report.sent, quiet_seen.n)
    assert.equal(0, quiet_seen.missing)
    assert.equal(0, quiet_seen.disorder)
    assert.equal(0, other.stats.overflow)
    measure.say("flood slow qmp.loop: the quiet VM beside it: %d events sent, %d delivered, none lost",
                quiet_report.sent, quiet_seen.n)
  end)
end)
