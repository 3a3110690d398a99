--- Row 9: a flood of events to 100 handlers with glob filters against the
-- same flood to one handler.  99 of the filters are globs (and lists of
-- globs, a few with a data filter) for event families the corpus never
-- sends; the 100th is "*", as is the single handler: both runs call the
-- same one counting handler per event, so what differs is only the cost
-- of finding it among the others.
--   9  the dispatcher on its own (qmp.dispatch fed decoded events in
--      batches of 256, as a client does): nothing else in the figure, so
--      the ratio is the lookup's cost, undiluted by reading and decoding.
--   9b end to end: a client in a fresh process per run (as rows 1 and 2)
--      reading the corpus from blast_peer.lua with the default max_queue;
--      its CPU per event, and the events its full queue dropped.
local H = require "bench.harness"

local M = {}

local HANDLERS = 100
local BATCH = 256    -- events handed to the dispatcher at a time, as a client's step does

-- Event families a policy might watch that the corpus never sends.
local FAMILIES = {
  "MEMORY_FAILURE", "NETDEV_STREAM", "ACPI_DEVICE", "UNPLUG_PRIMARY", "FAILOVER", "DUMP", "COLO",
  "MEM_UNPLUG", "RDMA_GID", "WAKEUP", "PR_MANAGER", "VFU_CLIENT", "HV_BALLOON", "CPU_THROTTLE",
  "VFIO_MIGRATION", "NETDEV_VHOST_USER", "QUORUM_FAILURE", "BLOCK_EXPORT", "GUEST_CRASHLOADED",
  "SUSPEND_DISK", "MEMORY_DEVICE", "BLOCK_IMAGE", "SPICE_MIGRATE", "MIGRATION_PASS", "DEVICE_UNPLUG",
  "X_DIRTY_RATE", "CXL_MEMORY", "EVTCHN", "XEN_DOMAIN", "VNC_AUTH", "NBD_EXPORT", "SEV_GUEST",
  "TDX_GUEST", "THROTTLE_GROUP", "VIRTIO_MEM", "S390_CPU", "IOTHREAD_POLL", "SNAPSHOT_LOAD",
}

-- The 99 filters: { names, data } each, none matching a name the corpus
-- may hold.
local function other_filters()
  local corpus_names = require("bench.corpus").mix()
  local function misses(globs)
    local takes = require("qmp.filter").name_test(globs)
    for name in pairs(corpus_names) do
      if takes(name) then return false end
    end
    return true
  end
  local list = {}
  for i, family in ipairs(FAMILIES) do
    local forms = { { family .. "_*" }, { "*_" .. family }, { family .. "?*", "*" .. family .. "_?*" } }
    for k, globs in ipairs(forms) do
      if misses(globs) and #list < HANDLERS - 1 then
        local names = #globs == 1 and globs[1] or globs
        local data = (i + k) % 10 == 0 and { device = "virtio-disk0" } or nil
        list[#list + 1] = { names, data }
      end
    end
  end
  assert(#list == HANDLERS - 1, "not enough filters that miss the corpus")
  return list
end

-- Register the handlers of a run on `target` (a client or a dispatcher:
-- target:on(names, data, fn)): one "*", or the 99 others then "*".
-- Returns how many events the "*" handler saw and how many the others did.
local function register(target, handlers, filters)
  local seen, strays = 0, 0
  local function stray() strays = strays + 1 end
  if handlers > 1 then
    for _, f in ipairs(filters) do
      if f[2] then target:on(f[1], f[2], stray) else target:on(f[1], stray) end
    end
  end
  target:on("*", function() seen = seen + 1 end)
  return function() return seen, strays end
end

-- {==================== 9: the dispatcher on its own

-- The first n events of the corpus, decoded, in batches of BATCH.
local function decoded_batches(n)
  local qmp = require "qmp"
  local path = H.corpus_file(n)
  local batches, batch = {}, {}
  for line in io.lines(path) do
    batch[#batch + 1] = assert(qmp.decode(line))
    if #batch == BATCH then batches[#batches + 1], batch = batch, {} end
  end
  if #batch > 0 then batches[#batches + 1] = batch end
  return batches
end

-- CPU seconds to dispatch every batch `passes` times to the run's handlers
-- (with counted = true: the Lua VM instructions that took instead, counted
-- by a hook, which the machine's load does not change).
local function dispatch_flood(batches, passes, handlers, filters, counted)
  local qmp = require "qmp"
  local Dispatch = require "qmp.dispatch"
  local d = Dispatch.new({ now = qmp.monotime, max_queue = 10000, unknown_name = function() end,
                           report = function(err) error("dispatch reported: " .. tostring(err)) end })
  local counts = register(d, handlers, filters)
  local vm, total, instructions = {}, 0, 0
  if counted then debug.sethook(function() instructions = instructions + 1 end, "", 1) end
  local t0 = os.clock()
  for _ = 1, passes do
    for _, batch in ipairs(batches) do
      d:push_list(batch, #batch)
      d:deliver(vm, BATCH)
      total = total + #batch
    end
  end
  local cpu = os.clock() - t0
  debug.sethook()
  local seen, strays = counts()
  assert(seen == total and strays == 0, ("the handlers saw %d and %d events of %d"):format(seen, strays, total))
  return counted and instructions or cpu, total
end

local function direct(n, passes, filters)
  local batches = decoded_batches(n)
  local events = 0
  local function timed(handlers)
    return function()
      local cpu, total = dispatch_flood(batches, passes, handlers, filters)
      events = total
      return cpu
    end
  end
  local s = H.interleave("dispatch", {
    { name = "1 handler", run = timed(1) },
    { name = HANDLERS .. " handlers", run = timed(HANDLERS) },
  })
  local one = dispatch_flood(batches, 1, 1, filters, true)
  local many = dispatch_flood(batches, 1, HANDLERS, filters, true)
  H.say("  [dispatch] Lua VM instructions for one pass: %d with 1 handler, %d with %d", one, many, HANDLERS)
  return s["1 handler"], s[HANDLERS .. " handlers"], events, many / one
end

-- }==================== 9: the dispatcher on its own

-- {==================== 9b: end to end

--- The client of one end-to-end run, in a process of its own: connect to
-- the blast peer at path, register `handlers`, run to the end of the
-- stream; prints a Lua chunk: return { events =, strays =, overflow =, reported =, cpu = }.
function M.child(path, handlers)
  local qmp = require "qmp"
  local filters = other_filters()
  local reported = 0
  local vm = assert(qmp.connect(path, { timeout = 30 }))
  vm.on_error = function(err)
    if err.kind ~= "overflow" then error("the client reported: " .. tostring(err)) end
    reported = reported + 1
  end
  local counts = register(vm, handlers, filters)
  local t0 = os.clock()
  local _, err = vm:run()
  local cpu = os.clock() - t0
  assert(err and err.kind == "closed", "run ended with " .. tostring(err))
  vm:close()
  local seen, strays = counts()
  io.write(("return { events = %d, strays = %d, overflow = %d, reported = %d, cpu = %.6f }\n")
    :format(seen, strays, vm.stats.overflow, reported, cpu))
end

local function end_to_end(n)
  local file = H.corpus_file(n)
  local path = H.blast_peer(file, 2 * (H.rounds + 1))
  local dropped = { [1] = 0, [HANDLERS] = 0 }
  local function timed(handlers)
    return function()
      local code = ("package.path = %q .. package.path; require('bench.handlers').child(%q, %d)")
        :format(H.bench_dir .. "/../?.lua;", path, handlers)
      local out, err = H.capture("lua5.4 -e " .. H.quote(code))
      if not out then error(handlers .. " handler(s): the client failed: " .. err, 0) end
      local r = assert(load(out:match("return {.*}") or error("no result: " .. out, 0)))()
      assert(r.strays == 0, r.strays .. " events reached handlers whose filters miss them")
      assert(r.events + r.overflow == n, ("%d events handled and %d dropped, of %d"):format(r.events, r.overflow, n))
      dropped[handlers] = math.max(dropped[handlers], r.overflow)
      return r.cpu
    end
  end
  local s = H.interleave("end to end", {
    { name = "1 handler", run = timed(1) },
    { name = HANDLERS .. " handlers", run = timed(HANDLERS) },
  })
  return s["1 handler"], s[HANDLERS .. " handlers"], dropped
end

-- }==================== 9b: end to end

local function per_event(samples, n)
  local out = {}
  for i, v in ipairs(samples) do out[i] = v / n end
  return out
end

function M.run()
  local n = H.size(100000)
  local filters = other_filters()
  local with_data = 0
  for _, f in ipairs(filters) do if f[2] then with_data = with_data + 1 end end
  H.say("  %d handlers: %d glob filters that miss every event of the corpus (%d with a data filter), then \"*\"",
        HANDLERS, #filters, with_data)

  -- Not smaller in quick mode: a run is cheap, and with fewer events the
  -- once-per-name work would weigh more than it does in a flood.
  local one, many, events, instructions = direct(20000, 10, filters)
  one, many = per_event(one, events), per_event(many, events)
  local r = H.stats(H.ratios(many, one))
  local q1, q100 = H.stats(one), H.stats(many)

  local e_one, e_many, dropped = end_to_end(n)
  e_one, e_many = per_event(e_one, n), per_event(e_many, n)
  local er = H.stats(H.ratios(e_many, e_one))
  local e1, e100 = H.stats(e_one), H.stats(e_many)

  return {
    { id = "9", what = ("dispatch alone, %dk events: %d glob handlers vs 1, CPU per event"):format(events // 1000, HANDLERS),
      qmp = H.spread(q100, "seconds") .. " with " .. HANDLERS, contender = H.spread(q1, "seconds") .. " with 1",
      ratio = H.spread(r, "ratio"), target = "≤ 1.2×", met = r.median <= 1.2,
      note = ("ratio = the CPU time with %d handlers ÷ with 1, per round (lower is better); the dispatcher fed decoded "
              .. "events directly; Lua VM instructions (a count hook, one pass): %.2f×"):format(HANDLERS, instructions) },
    { id = "9b", what = ("end to end, %dk events: %d glob handlers vs 1, CPU per event"):format(n // 1000, HANDLERS),
      qmp = H.spread(e100, "seconds") .. " with " .. HANDLERS, contender = H.spread(e1, "seconds") .. " with 1",
      ratio = H.spread(er, "ratio"), target = "≤ 1.2×, 0 dropped", met = er.median <= 1.2 and dropped[HANDLERS] == 0,
      note = ("a client reading blast_peer.lua, default max_queue; dropped by the handlers' queue (most in a run): "
              .. "%d of %d with %d handlers, %d with 1"):format(dropped[HANDLERS], n, HANDLERS, dropped[1]) },
  }
end

return M
