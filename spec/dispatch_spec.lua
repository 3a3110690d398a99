-- Delivery, the dispatch part: on its own (the ring of events that is the
-- handlers' queue and vm:wait's history, fed in batches as the session hands
-- them on; finding a name's handlers once per name; listener lifetime), then
-- every event to every consumer through a client, against the scripted fake
-- peer and, tagged #qemu, a real QEMU.
local Dispatch = require "qmp.dispatch"
local qmp = require "qmp"
local fake = require "support.fake_qmp"
local qemu = require "support.qemu"

local EV = fake.event
local OK = fake.reply("{}")
local REPLY = '{"return": {}, "id": %ID}\r\n'   -- a reply for a send step
local opening = fake.opening
local monotime = qmp.monotime

local cleanup = require("support.cleanup")(after_each)
local serve, connect = fake.bound(cleanup)

local function new(max_queue, now)
  local reports = {}
  local d = Dispatch.new({
    now = now or function() return 0 end, max_queue = max_queue,
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

local vm_stub = {}   -- the client the ring delivers for

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
      if size % 7 == 0 then d:deliver(vm_stub, math.huge) end
    end
    d:deliver(vm_stub, math.huge)
    assert.equal(n, #got)
    for i = 1, n do assert.equal(i, got[i]) end
  end)

  it("keeps every undelivered event, and of the rest the newest 128 to 256, for vm:wait", function()
    local d = new(10000)
    d:on("*", function() end)
    d:mark_command()                      -- a wait may ask for what the handlers had
    d:push_list(events(1, 5000), 5000)
    local all = held(d)                   -- none delivered yet: none goes
    assert.same({ 5000, 1, 5000 }, { #all, all[1], all[5000] })
    d:deliver(vm_stub, math.huge)
    for n = 5001, 20000, 100 do
      d:push_list(events(n, n + 99), 100)
      local kept = held(d)
      assert.equal(n + 99, kept[#kept])
      assert.is_true(#kept >= 128 and #kept <= 256, "held " .. #kept)
      for i = 2, #kept do assert.equal(kept[i - 1] + 1, kept[i]) end
      d:deliver(vm_stub, math.huge)
    end
  end)

  it("lets delivered events go at once when no command was sent for a minute and none waits", function()
    local t = 0
    local d = new(10000, function() return t end)
    d:on("*", function() end)
    d:push_list(events(1, 10), 10)
    assert.equal(10, #held(d))            -- undelivered: kept
    d:deliver(vm_stub, math.huge)
    assert.equal(0, #held(d))             -- no command yet: nothing to answer
    d:mark_command()
    d:push_list(events(11, 20), 10)
    d:deliver(vm_stub, math.huge)
    assert.same({ 11, 20 }, { held(d)[1], held(d)[10] })   -- a wait may come for these
    t = 59.9
    d:push_list(events(21, 30), 10)
    d:deliver(vm_stub, math.huge)
    assert.equal(20, #held(d))
    t = 60
    d:waiting_now(true)                   -- a wait in progress keeps what arrives
    d:push_list(events(31, 40), 10)
    d:deliver(vm_stub, math.huge)
    assert.equal(30, #held(d))
    d:waiting_now(false)
    d:push_list(events(41, 41), 1)
    d:deliver(vm_stub, math.huge)
    assert.equal(0, #held(d))             -- the command is a minute old
  end)

  it("drops the oldest undelivered events when full, counting each: delivered + dropped == pushed", function()
    local d, reports = new(100)
    local got = {}
    d:on("*", function(ev) got[#got + 1] = ev.data.n end)
    d:push_list(events(1, 250), 250)      -- one batch larger than the queue
    d:push_list(events(251, 260), 10)
    d:deliver(vm_stub, math.huge)
    assert.equal(100, #got)
    assert.equal(161, got[1])             -- the newest 100 are left
    assert.equal(260, got[100])
    assert.equal(160, d:counters().overflow)
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

-- One event of each name, in order, numbered from 1 (data.n).
local function named(...)
  local list = {}
  for i, name in ipairs({ ... }) do list[i] = { event = name, data = { n = i } } end
  return list
end

-- Push the events as one batch and hand them all to the handlers.
local function dispatch(d, list)
  d:push_list(list, #list)
  d:deliver(vm_stub, math.huge)
end

-- Lua VM instructions that run(d) takes (a count hook: the same on any
-- machine, under any load).
local function instructions(run)
  local count = 0
  debug.sethook(function() count = count + 1 end, "", 1)
  local ok, err = pcall(run)
  debug.sethook()
  assert(ok, err)
  return count
end

describe("finding a name's handlers", function()
  it("runs every handler whose name, glob, list or function takes the event, in registration order", function()
    local d = new(10000)
    local seen = {}
    local function log(tag) return function(ev) seen[#seen + 1] = tag .. ":" .. ev.event end end
    d:on("STOP", log("name"))
    d:on("ST*", log("glob"))
    d:on({ "RESUME", "BLOCK_?O_*" }, log("list"))
    d:on(function(ev) return ev.data.n % 2 == 1 end, log("odd"))
    d:on("*", log("all"))
    d:on("BLOCK_*", { device = "a" }, log("data"))
    dispatch(d, named("STOP", "RESUME", "BLOCK_IO_ERROR", "STOPPED", "SHUTDOWN"))
    assert.same({ "name:STOP", "glob:STOP", "odd:STOP", "all:STOP",
                  "list:RESUME", "all:RESUME",
                  "list:BLOCK_IO_ERROR", "odd:BLOCK_IO_ERROR", "all:BLOCK_IO_ERROR",
                  "glob:STOPPED", "all:STOPPED",
                  "odd:SHUTDOWN", "all:SHUTDOWN" }, seen)
  end)

  it("asks data filters and function filters about every event, not once per name", function()
    local d = new(10000)
    local got = {}
    d:on("BLOCK_*", { device = "a" }, function(ev) got[#got + 1] = "data:" .. ev.data.n end)
    d:on("BLOCK_*", function(data) return data.n > 2 end, function(ev) got[#got + 1] = "fn:" .. ev.data.n end)
    d:on(function(ev) return ev.data.n % 2 == 0 end, function(ev) got[#got + 1] = "even:" .. ev.data.n end)
    local list = {}
    for i, device in ipairs({ "a", "b", "a", "b" }) do list[i] = { event = "BLOCK_IO_ERROR", data = { n = i, device = device } } end
    dispatch(d, list)
    assert.same({ "data:1", "even:2", "data:3", "fn:3", "fn:4", "even:4" }, got)
  end)

  it("sees a glob handler added, and no longer one removed, between two events of the same name", function()
    local d = new(10000)
    local seen = {}
    d:on("STOP", function(ev) seen[#seen + 1] = "a" .. ev.data.n end)
    dispatch(d, named("STOP"))
    local b = d:on("S*", function(ev) seen[#seen + 1] = "b" .. ev.data.n end)
    dispatch(d, named("STOP"))
    b:off()
    dispatch(d, named("STOP"))
    d:on({ "X", "ST?P" }, nil, function(ev) seen[#seen + 1] = "once" .. ev.data.n end, true)
    dispatch(d, named("STOP", "STOP"))
    dispatch(d, named("STOP"))
    assert.same({ "a1", "a1", "b1", "a1", "a1", "once1", "a2", "a1" }, seen)
    assert.equal(1, d:handlers())
  end)

  it("runs a handler added during a batch from the next event of the same name, never for the current one", function()
    local d = new(10000)
    local seen = {}
    local added = false
    d:on("STOP", function(ev)
      seen[#seen + 1] = "a" .. ev.data.n
      if not added then
        added = true
        d:on("ST*", function(e) seen[#seen + 1] = "new" .. e.data.n end)
      end
    end)
    d:on("*", function(ev) seen[#seen + 1] = "b" .. ev.data.n end)
    dispatch(d, named("STOP", "STOP", "RESUME", "STOP"))
    assert.same({ "a1", "b1", "a2", "b2", "new2", "b3", "a4", "b4", "new4" }, seen)
  end)

  it("never runs a handler once it is removed during a batch, for the current event or a later one", function()
    local d = new(10000)
    local seen = {}
    local before, after
    before = d:on("S*", function(ev) seen[#seen + 1] = "before" .. ev.data.n end)
    d:on("STOP", function(ev)
      seen[#seen + 1] = "remover" .. ev.data.n
      before:off()
      after:off()
    end)
    after = d:on({ "STOP", "R*" }, function(ev) seen[#seen + 1] = "after" .. ev.data.n end)
    d:on("*", function(ev) seen[#seen + 1] = "all" .. ev.data.n end)
    dispatch(d, named("STOP", "STOP", "RESUME"))
    assert.same({ "before1", "remover1", "all1", "remover2", "all2", "all3" }, seen)
    assert.equal(2, d:handlers())
  end)

  it("runs a once handler with a glob for one event of a batch, whatever names it takes", function()
    local d = new(10000)
    local seen = {}
    d:on("BLOCK_JOB_*", nil, function(ev) seen[#seen + 1] = "once:" .. ev.event end, true)
    d:on("BLOCK_JOB_*", function(ev) seen[#seen + 1] = "on:" .. ev.event end)
    dispatch(d, named("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_READY"))
    assert.same({ "once:BLOCK_JOB_READY", "on:BLOCK_JOB_READY", "on:BLOCK_JOB_COMPLETED", "on:BLOCK_JOB_READY" }, seen)
    assert.equal(1, d:handlers())
  end)

  it("reports a data filter that raises as a handler error, and runs the next handler", function()
    local d, reports = new(10000)
    local seen = {}
    d:on("ST*", function() error("bad filter") end, function() seen[#seen + 1] = "never" end)
    d:on("ST*", function(ev) seen[#seen + 1] = ev.data.n end)
    dispatch(d, named("STOP", "STOP"))
    assert.same({ 1, 2 }, seen)
    assert.equal(2, d:counters().handler_errors)
    assert.equal("handler", reports[1].kind)
    assert.matches("bad filter", reports[1].message)
  end)

  it("costs what one handler does per event, with 99 glob handlers that never match", function()
    local names = { "STOP", "RESUME", "BLOCK_IO_ERROR", "JOB_STATUS_CHANGE" }
    local list = {}
    for i = 1, 4000 do list[i] = { event = names[i % #names + 1], data = { n = i } } end
    local function with_handlers(globs)
      local d = new(10000)
      local strays, seen = 0, 0
      for i = 1, globs do
        local globbed = ({ "NO_SUCH_%d_*", "*_NO_SUCH_%d", "NO?SUCH_%d*" })[i % 3 + 1]:format(i)
        d:on(i % 2 == 0 and globbed or { "NOPE_" .. i, globbed }, function() strays = strays + 1 end)
      end
      d:on("*", function() seen = seen + 1 end)
      local cost = instructions(function() dispatch(d, list) end)
      assert.same({ #list, 0 }, { seen, strays })
      return cost
    end
    local one, many = with_handlers(0), with_handlers(99)
    -- The 99 filters cost a few instructions per name (4 names), where
    -- testing them per event would cost about 10 per event (4000) each.
    local per_name = (many - one) / (#names * 99)
    assert.is_true(per_name < 100, ("%.0f more instructions per name and filter (%d with one handler, %d with 100)")
                                     :format(per_name, one, many))
  end)

  it("keeps a bounded cache of names, however many different names the peer invents", function()
    local d = new(10000)
    local seen = 0
    d:on("E*", function() seen = seen + 1 end)
    local n = 0
    local function invent(count)
      for _ = 1, count // 100 do
        local list = {}
        for i = 1, 100 do list[i] = { event = "E" .. (n + i), data = {} } end
        n = n + 100
        dispatch(d, list)
      end
      collectgarbage()
      collectgarbage()
      return collectgarbage("count")
    end
    local early = invent(5000)
    local late = invent(100000)
    assert.equal(105000, seen)
    -- 100,000 names more, each cached, would hold well over 5 MiB.
    assert.is_true(late - early < 1024, ("%.0f KiB more after 100,000 more names"):format(late - early))
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

local function event_names(list)
  local out = {}
  for i, ev in ipairs(list) do out[i] = ev.event end
  return out
end

describe("delivery to every consumer", function()
  it("hands the same BLOCK_JOB_READY to a handler, a listener and a wait, in arrival order", function()
    local srv = serve(opening({
      { expect = "x", reply = OK },
      { send = EV("BLOCK_JOB_PENDING", '{"type": "mirror", "id": "job0"}') ..
               EV("BLOCK_JOB_READY", '{"device": "job0", "len": 10, "offset": 10, "speed": 0, "type": "mirror"}') ..
               EV("STOP") },
      { hold = 5 },
    }))
    local vm = connect(srv)
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    local l <close> = vm:listen("BLOCK_JOB_*")
    assert(vm:execute("x"))
    local ready = assert(vm:wait("BLOCK_JOB_READY", nil, 2))
    assert.equal("job0", ready.device)
    assert(vm:run({ timeout = 2, done = function() return #seen >= 3 end }))
    assert.same({ "BLOCK_JOB_PENDING", "BLOCK_JOB_READY", "STOP" }, event_names(seen))
    assert.is_true(rawequal(ready, seen[2]), "the handler got another event")
    assert.equal(2, l:size())
    assert.equal("BLOCK_JOB_PENDING", l:next().event)
    assert.is_true(rawequal(ready, l:next()), "the listener got another event")
    assert.is_nil(l:next())
  end)

  it("lets vm:wait find the STOP read with the reply to stop, never one from before an earlier command", function()
    local srv = serve(opening({
      { expect = "ping", reply = OK },
      { send = EV("STOP", '{"n": 1}') },
      { expect = "stop" },
      { send = EV("STOP", '{"n": 2}') .. REPLY },   -- the event before the reply, in one write
      { expect = "query-status", reply = fake.reply('{"status": "paused", "running": false}') },
      { hold = 5 },
    }))
    local vm = connect(srv)
    local early <close> = vm:listen("STOP")
    assert(vm:execute("ping"))
    assert.equal(1, assert(early:wait(2)).data.n)   -- STOP #1 is in before the next command
    assert(vm:execute("stop"))
    assert.equal(2, assert(vm:wait("STOP", nil, 1)).data.n)
    local again, err = vm:wait("STOP", nil, 0.1)    -- not STOP #1, though nobody took it
    assert.is_nil(again)
    assert.equal("timeout", err.kind)
    assert(vm:execute("query-status"))
    local t0 = monotime()
    again, err = vm:wait("STOP", nil, 0.2)
    assert.is_nil(again)
    assert.equal("timeout", err.kind)
    assert.is_true(monotime() - t0 >= 0.19)
    assert.matches("no STOP event within 0.2 s", err.message)
    assert.matches("a matching event came before the last command", err.message)
  end)

  it("never returns the same event to two vm:wait calls with the same filter", function()
    local srv = serve(opening({
      { expect = "x" },
      { send = REPLY .. EV("STOP", '{"n": 1}') .. EV("STOP", '{"n": 2}') },
      { hold = 5 },
    }))
    local vm = connect(srv)
    assert(vm:execute("x"))
    local a = assert(vm:wait("STOP", nil, 2))
    local b = assert(vm:wait("STOP", nil, 2))
    assert.is_false(rawequal(a, b))
    assert.same({ 1, 2 }, { a.data.n, b.data.n })
    local c, err = vm:wait("STOP", nil, 0.1)
    assert.is_nil(c)
    assert.equal("timeout", err.kind)
  end)

  it("keeps a full listener's newest events, counts the drops and reports them as overflow", function()
    local burst = {}
    for i = 1, 5 do burst[i] = EV("RTC_CHANGE", '{"offset": ' .. i .. '}') end
    local srv = serve(opening({ { expect = "x", reply = OK }, { send = table.concat(burst) }, { hold = 5 } }))
    local vm = connect(srv)
    local reported = {}
    vm.on_error = function(err) reported[#reported + 1] = err end
    local l <close> = vm:listen("RTC_CHANGE", nil, { max_queue = 2 })
    assert(vm:execute("x"))
    assert(vm:wait("RTC_CHANGE", { offset = 5 }, 2))
    assert.equal(3, l.dropped)
    assert.equal(2, l:size())
    assert.equal(4, l:next().offset)
    assert.equal(5, l:next().offset)
    assert.equal(2, #reported)   -- the 1st and 2nd drop; the next report is at the 4th
    for _, err in ipairs(reported) do
      assert.equal("overflow", err.kind)
      assert.matches("listener", err.message)
    end
    assert.equal(0, vm.stats.overflow)   -- the handlers' queue lost nothing
  end)

  it("closes a listener held in a <close> variable at the end of its block", function()
    local srv = serve(opening({ { expect = "x" }, { send = REPLY .. EV("STOP") }, { hold = 5 } }))
    local vm = connect(srv)
    local outer
    do
      local l <close> = vm:listen("*")
      outer = l
      assert.is_false(l.closed)
    end
    assert.is_true(outer.closed)
    assert(vm:execute("x"))
    assert(vm:wait("STOP", nil, 2))
    assert.equal(0, outer:size())
    assert.is_nil(outer:next())
    local ev, err = outer:wait(0.05)
    assert.is_nil(ev)
    assert.equal("closed", err.kind)
  end)
end)

-- The events of list whose name is in names, in order.
local function only(list, names)
  local set, out = {}, {}
  for _, n in ipairs(names) do set[n] = true end
  for _, ev in ipairs(list) do
    if set[ev.event] then out[#out + 1] = ev end
  end
  return out
end

describe("every consumer sees every event, on a real QEMU #qemu", function()
  it("hands RESUME and STOP to vm:wait, a '*' handler and a listener alike, in order", function()
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local vm = connect(machine.sock, { timeout = 5, name = "deliver" })
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    local l <close> = vm:listen({ "STOP", "RESUME" })
    local waited = {}
    for _ = 1, 2 do
      assert(vm:execute("cont"))
      waited[#waited + 1] = assert(vm:wait("RESUME", nil, 5))
      assert(vm:execute("stop"))
      waited[#waited + 1] = assert(vm:wait("STOP", nil, 5))
    end
    assert(vm:run({ timeout = 5, done = function() return #only(seen, { "STOP", "RESUME" }) >= 4 end }))
    -- The very same event objects, in the order QEMU sent them.
    assert.same({ "RESUME", "STOP", "RESUME", "STOP" },
                { waited[1].event, waited[2].event, waited[3].event, waited[4].event })
    local handled = only(seen, { "STOP", "RESUME" })
    assert.equal(4, #handled)
    for i = 1, 4 do
      assert.equal(waited[i], handled[i])
      assert.equal(waited[i], l:next())
    end
    assert.is_nil(l:next())
    assert.equal(0, l.dropped)
    assert.equal(0, vm.stats.overflow)
  end)

  it("does not return, after a later command, a STOP that came before it", function()
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local vm = connect(machine.sock, { timeout = 5, name = "window" })
    local l <close> = vm:listen({ "STOP", "RESUME" })
    -- A STOP already returned by a wait.
    assert(vm:execute("cont"))
    assert(vm:wait("RESUME", nil, 5))
    assert(vm:execute("stop"))
    assert(vm:wait("STOP", nil, 5))
    assert.equal("paused", assert(vm:execute("query-status")).status)
    local t0 = qmp.monotime()
    local ev, err = vm:wait("STOP", nil, 0.2)
    assert.is_nil(ev)
    assert.equal("timeout", err.kind)
    assert.matches("no STOP event within 0.2 s; a matching event came before the last command", err.message, 1, true)
    assert.is_true(qmp.monotime() - t0 < 1.5)
    -- A RESUME and a STOP nobody waited for, then an unrelated command:
    -- they belong to the commands before it, not to a wait after it.
    assert(vm:execute("cont"))
    assert(vm:execute("stop"))
    assert.equal("paused", assert(vm:execute("query-status")).status)
    ev, err = vm:wait("STOP", nil, 0.2)
    assert.is_nil(ev)
    assert.matches("a matching event came before the last command", err.message, 1, true)
    ev = vm:wait("RESUME", nil, 0.2)
    assert.is_nil(ev)
    -- The listener, opened before all that, has all of it.
    local names = {}
    for e in function() return l:next() end do names[#names + 1] = e.event end
    assert.same({ "RESUME", "STOP", "RESUME", "STOP" }, names)
  end)
end)
