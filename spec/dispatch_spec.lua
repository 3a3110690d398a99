-- The dispatch part on its own: the ring of events that is the handlers'
-- queue and vm:wait's history, fed in batches as the session hands them on.
local Dispatch = require "qmp.dispatch"

local function new(max_queue)
  local reports = {}
  local d = Dispatch.new({
    now = function() return 0 end, max_queue = max_queue,
    stats = { overflow = 0, handler_errors = 0 },
    report = function(e) reports[#reports + 1] = e end,
    unknown_name = function() end,
  })
  return d, reports
end

local function events(from, to)
  local list = {}
  for i = from, to do list[#list + 1] = { event = "SEQ", data = { n = i } } end
  return list
end

local vm = { _stop = false }

-- The numbers of the events held in the log (vm:wait's history and the
-- handlers' queue), oldest first.
local function held(d)
  local seen = {}
  for seq = d._first, d._last do seen[#seen + 1] = d._log[seq % d._cap + 1].data.n end
  return seen
end

describe("the dispatch ring", function()
  it("hands every event of every batch to the handlers, in order", function()
    local d = new(10000)
    local got = {}
    d:on("*", function(ev) got[#got + 1] = ev.data.n end)
    local n = 0
    for size = 1, 300 do
      d:push_list(events(n + 1, n + size), size)
      n = n + size
      if size % 7 == 0 then d:deliver(vm, math.huge) end
    end
    d:deliver(vm, math.huge)
    assert.equal(n, #got)
    for i = 1, n do assert.equal(i, got[i]) end
  end)

  it("keeps every undelivered event, and of the rest the newest 1024 to 2048, for vm:wait", function()
    local d = new(10000)
    d:on("*", function() end)
    d:push_list(events(1, 5000), 5000)
    local all = held(d)                   -- none delivered yet: none goes
    assert.same({ 5000, 1, 5000 }, { #all, all[1], all[5000] })
    d:deliver(vm, math.huge)
    for n = 5001, 20000, 100 do
      d:push_list(events(n, n + 99), 100)
      local kept = held(d)
      assert.equal(n + 99, kept[#kept])
      assert.is_true(#kept >= 1024 and #kept <= 2048, "held " .. #kept)
      for i = 2, #kept do assert.equal(kept[i - 1] + 1, kept[i]) end
      d:deliver(vm, math.huge)
    end
  end)

  it("drops the oldest undelivered events when full, counting each: delivered + dropped == pushed", function()
    local d, reports = new(100)
    local got = {}
    d:on("*", function(ev) got[#got + 1] = ev.data.n end)
    d:push_list(events(1, 250), 250)      -- one batch larger than the queue
    d:push_list(events(251, 260), 10)
    d:deliver(vm, math.huge)
    assert.equal(100, #got)
    assert.equal(161, got[1])             -- the newest 100 are left
    assert.equal(260, got[100])
    assert.equal(160, d._p.stats.overflow)
    assert.equal("overflow", reports[1].kind)
    assert.equal(8, #reports)             -- the 1st, 2nd, 4th ... 128th drop
  end)

  it("gives each listener every matching event of a batch, in order", function()
    local d = new(10000)
    local a, b = d:listen("*"), d:listen("SEQ", function(data) return data.n % 2 == 0 end)
    d:push_list(events(1, 10), 10)
    for i = 1, 10 do assert.equal(i, a:next().data.n) end
    for i = 2, 10, 2 do assert.equal(i, b:next().data.n) end
    assert.is_nil(a:next())
    assert.is_nil(b:next())
  end)
end)

describe("listener lifetime", function()
  local N = 20000   -- events pushed, 100 at a time

  -- 500 listeners made on a fresh dispatcher and left to how(l); then N
  -- events.  The heap after a full collection (KiB above what it was before
  -- the listeners), the filter calls, the overflow reports, and a listener
  -- kept referenced all along.
  local function after_500(how)
    local d, reports = new(10000)
    local calls = 0
    local function counting() calls = calls + 1 return true end
    collectgarbage()
    collectgarbage()
    local base = collectgarbage("count")
    for _ = 1, 500 do how(d:listen(counting)) end
    local kept = d:listen("SEQ", nil, N)
    -- A full collection now, not whenever the collector's pace (which
    -- depends on the whole process's heap) would get to them.
    collectgarbage()
    collectgarbage()
    for n = 1, N, 100 do d:push_list(events(n, n + 99), 100) end
    collectgarbage()
    collectgarbage()
    return collectgarbage("count") - base, calls, #reports, kept
  end

  it("forgets a listener nobody references: collected, it stops buffering and filtering, no overflow reported", function()
    local closed_heap, closed_calls = after_500(function(l) l:close() end)
    local heap, calls, reports, kept = after_500(function() end)   -- dropped without close()
    assert.equal(0, closed_calls)
    assert.is_true(heap < 2 * closed_heap + 256, ("%.0f KiB held, %.0f KiB when closed"):format(heap, closed_heap))
    assert.equal(0, calls, calls .. " filter calls")   -- live listeners' would be 500 * N
    assert.equal(0, reports)
    assert.equal(N, kept:size())   -- one still referenced gets every event, collections or not
    assert.equal(0, kept.dropped)
  end)

  it("keeps close() and <close> working on a weakly held listener", function()
    local d = new(10000)
    local l = d:listen("SEQ")
    local outer
    do
      local scoped <close> = d:listen("SEQ")
      outer = scoped
      d:push_list(events(1, 1), 1)
    end
    l:close()
    l:close()   -- idempotent
    d:push_list(events(2, 2), 1)
    for _, listener in ipairs({ l, outer }) do
      assert.is_true(listener.closed)
      assert.equal(1, listener:size())   -- what was buffered stays readable, nothing more comes
      assert.equal(1, listener:next().data.n)
    end
  end)
end)
