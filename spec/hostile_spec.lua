-- Bounded resources under a hostile peer: each describe is one way a peer
-- can try to make the client hold memory or time without end, and each
-- asserts the bound (docs/security.md "Memory per client").  Memory is Lua's
-- heap after a full collection, and the peak resident set (VmHWM, reset
-- through /proc/self/clear_refs) of a client run in a process of its own
-- (support/measure_child.lua): in this one, memory freed by earlier specs
-- would be reused and hide growth.
local qmp = require "qmp"
local cqueues = require "cqueues"
local fake = require "support.fake_qmp"
local proc = require "support.proc"
local tmp = require "support.tmp"
local memory = require "support.memory"

local cleanup = require("support.cleanup")(after_each)
local monotime = qmp.monotime

local KiB, MiB, GiB = 1024, 1 << 20, 1 << 30
local MAX_MESSAGE = 10 * MiB   -- the default max_message

local serve, connect = fake.bound(cleanup)
local opening = fake.opening
local OK = fake.reply("{}")

-- {==================== memory

local heap = memory.heap

local function mib(bytes) return ("%.1f MiB"):format(bytes / MiB) end

-- Run a client connected to srv in a fresh process (support/measure_child.lua):
-- opts_src is the Lua source of its connect options, body_src of a
-- function(vm, qmp) returning a table of results.  Returns that table with
-- took, peak (the child's resident set's rise above its level once
-- connected) and heap (its Lua heap's growth), all from the child.
local function in_child(srv, opts_src, body_src)
  local cmd = table.concat({ fake.lua, tmp.quote("spec/support/measure_child.lua"), tmp.quote(srv.path),
                             tmp.quote(opts_src), tmp.quote(body_src) }, " ")
  local p = assert(io.popen(cmd .. " 2>&1"))
  local text = p:read("a")
  local ok = p:close()
  local out = {}
  for k, v in text:gmatch("([%w_]+)\t([^\n]*)") do
    if v == "true" or v == "false" then out[k] = v == "true" else out[k] = tonumber(v) or v end
  end
  assert(ok and out.peak, "the measuring client failed:\n" .. text .. "\n" .. srv:log())
  return out
end

-- }==================== memory

-- Seconds fn() took, then its results.
local function timed(fn)
  local t0 = monotime()
  local results = table.pack(fn())
  return monotime() - t0, table.unpack(results, 1, results.n)
end

-- The number of event types alive (qmp.events holds them weakly).
local function live_types()
  collectgarbage()
  collectgarbage()
  local n = 0
  for _ in pairs(qmp.events) do n = n + 1 end
  return n
end

-- The bytes the fake peer's stream step managed to send (from its log,
-- waiting for the line a little: the peer writes it after its last send).
local function streamed(srv)
  local n
  proc.wait_until(function()
    local log = srv:log()
    n = tonumber(log:match("stream: sent (%d+) bytes") or log:match("stream: send stopped after (%d+) bytes"))
    return n ~= nil
  end, TEST_TIMEOUT)
  return assert(n, "the peer did not say what it streamed:\n" .. srv:log())
end

-- A timeout took between t and t + 10 %.
local function on_time(took, t, what)
  assert.is_true(took >= t and took <= 1.1 * t, ("%s took %.3f s for a %g s timeout"):format(what, took, t))
end

describe("unique event names", function()
  -- The catalogue's types live for good; a type made for a name seen on the
  -- wire lives as long as one of its events: the names go with the client,
  -- and while it lives and reads on, they go with its events.

  -- Audit defect: a client's unknown event names stayed in memory after it was gone.
  it("forgets 200,000 distinct unknown event names once the client is gone #timing", function()
    local N = 200000
    local srv = serve(opening({ { expect = "go", reply = OK }, { flood = { count = N, name = "X_AUDIT_%d" } },
                                { hold = 30 } }))
    local holder = {}
    cleanup(function() if holder.vm then holder.vm:close() end end)
    -- In a function of its own, so that no stack slot keeps the client.
    local function consume()
      local vm = assert(qmp.connect(srv.path, { timeout = 5 }))
      holder.vm = vm
      local seen = 0
      vm:on("*", function() seen = seen + 1 end)
      assert(vm:execute("go"))
      -- On a loaded machine the flood can outrun the handler: drops count.
      assert(vm:run({ timeout = 15, done = function() return seen + vm.stats.overflow >= N end }))
      local dropped = vm.stats.overflow
      vm:close()
      holder.vm = nil
      return seen + dropped
    end
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    local t0 = monotime()
    assert.equal(N, consume())
    local took = monotime() - t0
    collectgarbage()
    collectgarbage()
    local grown = collectgarbage("count") - before
    assert.is_true(grown < 8 * 1024, ("the heap grew by %.0f KiB"):format(grown))
    assert.is_true(took < 10, took)
  end)

  local N = 100000
  local UNIT = '{"event": "X_HOSTILE_%d", "data": {}, "timestamp": {"seconds": 1700000000, "microseconds": 1}}\r\n'

  it("keeps the types, the handler index and the heap bounded while a live client takes 100,000 names #timing", function()
    local srv = serve(opening({ { expect = "go", reply = OK }, { stream = { unit = UNIT, count = N } }, { hold = 30 } }))
    local MAX_QUEUE = 2500
    local vm = connect(srv, { timeout = 5, max_queue = MAX_QUEUE })
    local types, heap0 = live_types(), heap()
    local seen = 0
    vm:on("*", function() seen = seen + 1 end)
    vm.on_error = function() end   -- overflow reports, when the handler falls behind
    assert(vm:execute("go"))
    -- A handler that falls behind the flood (a busy machine) loses the oldest
    -- events, counted: every name is either handled or counted.
    assert(vm:run({ timeout = 20, done = function() return seen + vm.stats.overflow >= N end }))
    assert.equal(N, seen + vm.stats.overflow)
    assert.equal("ready", vm.state)
    -- Alive: the client's ring (the events the handlers have not had, and
    -- vm:wait's history of those they had) holds at most max_queue events,
    -- each with its type; nothing else keeps a name.
    local grown = live_types() - types
    assert.is_true(grown <= MAX_QUEUE, ("%d types alive for %d names"):format(grown, N))
    assert.is_true(vm._dispatch._named <= 512, vm._dispatch._named)   -- the handler index by name
    local heap_grown = heap() - heap0
    assert.is_true(heap_grown < MAX_QUEUE * 2 * KiB, "the heap grew by " .. mib(heap_grown))   -- an event and its type
  end)

  it("makes no type at all for 100,000 names outside opts.events: skipped undecoded", function()
    local tail = fake.event("STOP")
    local srv = serve(opening({ { expect = "go", reply = OK }, { stream = { unit = UNIT, count = N, tail = tail } },
                                { hold = 30 } }))
    local vm = connect(srv, { timeout = 5, events = { "STOP" } })
    local types = live_types()
    local heap0 = heap()
    assert(vm:execute("go"))
    assert(vm:wait("STOP", nil, 20))
    assert.equal(N, vm.stats.skipped)
    assert.equal(N + 1, vm.stats.events)
    assert.equal(types, live_types())
    local heap_grown = heap() - heap0
    assert.is_true(heap_grown < 256 * KiB, "the heap grew by " .. mib(heap_grown))
  end)
end)

describe("unknown reply ids", function()
  it("drops and counts 200,000 replies that are not ours, in flat memory #memory", function()
    local N = 200000
    local odd = '{"return": 1, "id": {"a": [1, 2]}}\r\n{"return": 2, "id": null}\r\n'
             .. '{"return": 3, "id": 12}\r\n{"return": 4}\r\n{"error": {"class": "GenericError", "desc": "x"}, "id": "qmp#999"}\r\n'
    local srv = serve(opening({ { expect = "x" },
      { stream = { head = odd, unit = '{"return": {"n": %d}, "id": "foreign"}\r\n', count = N,
                   tail = fake.reply('"mine"') .. "\r\n" } },
      { hold = 30 } }))
    local r = in_child(srv, "{ timeout = 5 }", [[function(vm)
      local ret, err = vm:execute("x", nil, { timeout = 20 })
      return { ret = ret or tostring(err), unknown = vm.stats.unknown, stale = vm.stats.stale,
               replies = vm.stats.replies }
    end]])
    assert.equal("mine", r.ret)
    assert.equal(N + 5, r.unknown)
    assert.equal(0, r.stale)
    assert.equal(2, r.replies)   -- qmp_capabilities, then ours
    assert.is_true(r.heap < 64 * KiB, "the heap grew by " .. mib(r.heap))
    assert.is_true(r.peak < 8 * MiB, "the peak resident set grew by " .. mib(r.peak))
    assert.is_true(r.took < 10, r.took)
  end)

  it("remembers at most 1024 timed-out ids; a late reply to an older one counts as unknown", function()
    local N, BATCH = 1100, 100
    local steps = opening()
    local late = {}
    for i = 1, N do
      steps[#steps + 1] = { expect = "late" }
      late[i] = ('{"return": %d, "id": "qmp#%d"}\r\n'):format(i, i + 1 + (i - 1) // BATCH)
      if i % BATCH == 0 then steps[#steps + 1] = { expect = "ping", reply = OK } end
    end
    steps[#steps + 1] = { expect = "go" }
    steps[#steps + 1] = { send = table.concat(late) .. fake.reply('"go"') .. "\r\n" }
    steps[#steps + 1] = { hold = 10 }
    local srv = serve(steps)
    local vm = connect(srv)
    for i = 1, N do
      local ret, err = vm:execute("late", nil, { timeout = 0 })   -- sent, given up at once
      assert.is_nil(ret)
      assert.equal("timeout", err.kind)
      if i % BATCH == 0 then assert(vm:execute("ping")) end     -- the peer has read them all
    end
    assert.equal("go", assert(vm:execute("go")))
    assert.equal(N, vm.stats.stale + vm.stats.unknown)
    assert.is_true(vm.stats.stale > 0 and vm.stats.stale <= 1024, vm.stats.stale)
    assert.equal(0, vm._session._npending)
    assert.is_true(vm._session._nstale <= 1024)
  end)
end)

describe("a reply of max_message - 1 bytes", function()
  -- {"id": "qmp#2", "return": "aaa...a"}: exactly `size` bytes on the wire
  -- (the CR LF after it is whitespace between messages).
  local HEAD = '{"id": %ID, "return": "'
  local EMPTY = #'{"id": "qmp#2", "return": ""}'
  local function reply_of(size)
    local head = HEAD:gsub("%%ID", '"qmp#2"')
    local srv = serve(opening({ { expect = "big" },
                                { stream = { head = HEAD, unit = "a", count = size - #head - 2, tail = '"}\r\n' } },
                                { expect = "after", reply = OK }, { hold = 10 } }))
    local r = in_child(srv, "{ timeout = 5 }", [[function(vm)
      local ret, err = vm:execute("big", nil, { timeout = 10 })
      local after, aerr = vm:execute("after")
      return { len = ret and #ret, kind = err and err.kind, cause = err and err.cause and err.cause.kind,
               why = err and err.cause and err.cause.message, closed = vm:closed(),
               after = after and "ok" or aerr.kind }
    end]])
    assert.equal(size, streamed(srv) - 2)
    return r
  end

  for _, size in ipairs({ MAX_MESSAGE - 1, MAX_MESSAGE }) do
    it(("accepts %d bytes (the default max_message is %d) and goes on #memory"):format(size, MAX_MESSAGE), function()
      local r = reply_of(size)
      assert.equal(size - EMPTY, r.len, r.why)
      assert.equal("ok", r.after)
      -- the read buffer, cJSON's copy of the string and the Lua string
      assert.is_true(r.peak < 4 * MAX_MESSAGE, "the peak resident set grew by " .. mib(r.peak))
    end)
  end

  it("refuses max_message + 1 bytes with toolarge, closing the stream #memory", function()
    local r = reply_of(MAX_MESSAGE + 1)
    assert.is_nil(r.len)
    assert.equal("closed", r.kind)
    assert.equal("toolarge", r.cause)
    assert.equal("message exceeds max_message (10485760 bytes)", r.why)
    assert.is_true(r.closed)
    assert.equal("closed", r.after)
    -- the read buffer only: max_message and a read
    assert.is_true(r.peak < MAX_MESSAGE + 2 * MiB, "the peak resident set grew by " .. mib(r.peak))
  end)

  it("decodes the most amplifying reply under max_message, [0,0,...], within 64 times its size #memory", function()
    local M = MiB   -- max_message; the 10 MiB default would take 500 MiB at the peak
    local head = HEAD:gsub("%%ID", '"qmp#2"'):gsub('"$', "[")
    local srv = serve(opening({ { expect = "big" },
                                { stream = { head = HEAD:gsub('"$', "["), unit = "0,", count = (M - #head - 2) // 2,
                                             tail = '0]}\r\n' } },
                                { hold = 10 } }))
    local r = in_child(srv, ("{ timeout = 5, max_message = %d }"):format(M), [[function(vm)
      local ret, err = vm:execute("big", nil, { timeout = 10 })
      return { n = ret and #ret, why = err and tostring(err) }
    end]])
    assert.equal((M - #head - 2) // 2 + 1, r.n, r.why)
    assert.is_true(streamed(srv) - 2 <= M)
    -- cJSON's tree (a node of 64 bytes and its malloc header per element)
    -- is whole before the Lua table grows; each node is freed once it is in
    assert.is_true(r.peak < 64 * M, "the peak resident set grew by " .. mib(r.peak))
    assert.is_true(r.heap < 64 * KiB, "the heap kept " .. mib(r.heap))
  end)

  it("applies a smaller max_message to the byte: 1000 accepted, 1001 refused", function()
    for _, case in ipairs({ { 1000, true }, { 1001, false } }) do
      local size, accepted = case[1], case[2]
      local head = HEAD:gsub("%%ID", '"qmp#2"')
      local srv = serve(opening({ { expect = "big" },
                                  { stream = { head = HEAD, unit = "a", count = size - #head - 2, tail = '"}\r\n' } },
                                  { hold = 10 } }))
      local vm = connect(srv, { timeout = 5, max_message = 1000 })
      local ret, err = vm:execute("big")
      if accepted then
        assert.equal(size - EMPTY, #assert(ret, tostring(err)))
      else
        assert.equal("toolarge", err.cause.kind)
      end
      vm:close()
      srv:stop()
    end
  end)
end)

describe("1 GiB of whitespace", function()
  -- 1 GiB over a unix socket takes about 1.3 s here: part of every run.

  it("skips 1 GiB between messages in flat memory; the reply after it arrives #memory", function()
    local srv = serve(opening({ { expect = "x" },
                                { stream = { unit = " \r\n\t", count = GiB // 4, tail = fake.reply("42") .. "\r\n" } },
                                { hold = 10 } }), { watchdog = 120 })
    local r = in_child(srv, "{ timeout = 5 }", [[function(vm)
      local ret, err = vm:execute("x", nil, { timeout = 60 })
      return { ret = ret or tostring(err) }
    end]])
    assert.equal(42, r.ret)
    assert.equal(GiB + #fake.reply("42") + 2 - 3 + #'"qmp#2"', streamed(srv))
    assert.is_true(r.peak < 2 * MiB, "the peak resident set grew by " .. mib(r.peak))
    assert.is_true(r.heap < 64 * KiB, "the heap grew by " .. mib(r.heap))
    assert.is_true(r.took < 15, ("1 GiB took %.1f s"):format(r.took))
  end)

  it("refuses 1 GiB inside a message at max_message, having read at most a chunk more #memory", function()
    local srv = serve(opening({ { expect = "x" }, { stream = { head = '{"return": ', unit = " ", count = GiB } } }),
                      { watchdog = 120 })
    local r = in_child(srv, "{ timeout = 5 }", [[function(vm)
      local ret, err = vm:execute("x", nil, { timeout = 30 })
      return { cause = err and err.cause and err.cause.kind }
    end]])   -- then the child exits: the peer's next send fails
    assert.equal("toolarge", r.cause)
    assert.is_true(r.peak < MAX_MESSAGE + 2 * MiB, "the peak resident set grew by " .. mib(r.peak))
    assert.is_true(r.took < 5, r.took)
    assert.is_true(srv:wait(10))
    local sent = streamed(srv)
    assert.is_true(sent < MAX_MESSAGE + 16 * MiB, ("the peer sent %s"):format(mib(sent)))
  end)
end)

describe("a peer that never reads", function()
  -- Audit defect: a send that timed out closed the fd behind an external poller's back.
  it("bounds a send the peer never reads by its timeout, keeping the fd until close #timing", function()
    local srv = serve(opening({ { sleep = 20 } }))   -- reads nothing more
    local vm = connect(srv)
    local fd = vm:pollfd()
    assert.is_true(fd >= 0)
    local function open(n) -- in this process: /proc/self/fdinfo/N exists while fd N is open
      local f = io.open("/proc/self/fdinfo/" .. n, "r")
      if f then f:close() end
      return f ~= nil
    end
    assert.is_true(open(fd))
    local big = ("x"):rep(8 << 20)   -- far more than the socket buffer takes
    local t0 = monotime()
    local ret, err = vm:execute("blob", { data = big }, { timeout = 0.5 })
    local took = monotime() - t0
    assert.is_nil(ret)
    assert.is_true(err.kind == "timeout" or err.kind == "closed", tostring(err))
    assert.is_true(took < 0.55, took)
    assert.is_true(open(fd), "the fd was closed behind an external poller's back")
    local after = vm:pollfd()
    vm:close()
    assert.is_false(open(fd))
    assert.equal(fd, after)   -- an external loop still polls the fd it was given
  end)


  it("returns from an 8 MiB command within its timeout + 10 %, closing the half-sent stream, and lets the text go #memory", function()
    local srv = serve(opening({ { sleep = 20 } }))   -- reads nothing more
    local T = 1   -- 10 % of it leaves room for encoding 8 MiB (about 20 ms) on a busy machine
    local r = in_child(srv, "{ timeout = 5 }", [[function(vm, qmp)
      local big = ("x"):rep(8 << 20)   -- far more than the socket buffers take
      local t0 = qmp.monotime()
      local ret, err = vm:execute("blob", { data = big }, { timeout = 1 })
      return { took = qmp.monotime() - t0, ret = ret and "a reply", kind = err.kind, why = err.message,
               closed = vm:closed() }
    end]])
    assert.is_nil(r.ret)
    on_time(r.took, T, "the command")
    assert.equal("closed", r.kind)
    assert.matches("sending blob timed out after %d+ of %d+ bytes", r.why)
    assert.is_true(r.closed)
    -- the argument, the encoder's buffer (up to twice the text), the text
    -- and the text with its newline; none of it stays
    assert.is_true(r.peak < 6 * 8 * MiB, "the peak resident set grew by " .. mib(r.peak))
    assert.is_true(r.heap < 256 * KiB, "the heap kept " .. mib(r.heap))
  end)

  it("fails a command queued behind the stuck one when the stream dies, long before its own deadline #timing", function()
    local srv = serve(opening({ { sleep = 20 } }))
    local vm = connect(srv, { timeout = 5, waiter = qmp.waiters.cqueues })
    local cq = cqueues.new()
    local big, small = {}, {}
    local data = ("x"):rep(8 * MiB)
    local encoding = timed(function() return qmp.encode({ execute = "blob", arguments = { data = data } }) end)
    local t0 = monotime()
    cq:wrap(function()
      big = { vm:execute("blob", { data = data }, { timeout = 0.4 }) }
      big.at = monotime() - t0
    end)
    assert(cq:step(0))
    cq:wrap(function()
      small = { vm:execute("query-status", nil, { timeout = 10 }) }   -- waits behind blob's bytes
      small.at = monotime() - t0
    end)
    local deadline = monotime() + 5
    while not (big.at and small.at) and monotime() < deadline do assert(cq:step(0.05)) end
    assert.equal("closed", big[2].kind)
    assert.equal("closed", small[2].kind)
    -- the timeout counts from the command's first bytes: encoding comes
    -- before (the test above holds a timeout to 10 %; here what matters is
    -- that the queued command ends with the stream, not at its own 10 s)
    assert.is_true(big.at >= 0.4 and big.at <= 0.5 + encoding, ("%.3f s (encoding %.3f s)"):format(big.at, encoding))
    assert.is_true(small.at <= big.at + 0.05, small.at)
  end)
end)

describe("a flood with no reply", function()
  -- Every way of waiting times out on time under a flood of events or of
  -- whitespace; and the memory a flood may hold.
  local T = 0.8

  -- Audit defect: a flood of events held up a command's timeout and step().
  it("times a command out on time under a flood of events, and keeps step() short #timing", function()
    local srv = serve(opening({ { expect = "x" }, { flood = { seconds = 3, name = "RTC_CHANGE" } }, { hold = 5 } }))
    local vm = connect(srv)
    local t0 = monotime()
    local ret, err = vm:execute("x", nil, { timeout = 1 })
    local took = monotime() - t0
    assert.is_nil(ret)
    assert.equal("timeout", err.kind)
    assert.is_true(took >= 1.0 and took <= 1.1, took)
    assert.is_true(vm.stats.events > 1000, vm.stats.events)   -- the flood was on
    t0 = monotime()
    assert(vm:step())
    took = monotime() - t0
    assert.is_true(took < 0.05, took)
  end)

  it("times out vm:wait, a listener's wait, vm:run and qmp.loop within 10 %, holding at most max_queue events #timing", function()
    local srv = serve(opening({ { expect = "x", reply = OK }, { flood = { seconds = 8, name = "RTC_CHANGE" } }, { hold = 5 } }))
    local vm = connect(srv, { timeout = 5, max_queue = 1000 })
    local reports = {}
    vm.on_error = function(e) reports[#reports + 1] = e end
    local heap0 = heap()
    local l <close> = vm:listen("SHUTDOWN")
    assert(vm:execute("x"))
    local took, ev, err = timed(function() return vm:wait("SHUTDOWN", nil, T) end)
    assert.is_nil(ev)
    assert.equal("timeout", err.kind)
    on_time(took, T, "vm:wait")
    took, ev, err = timed(function() return l:wait(T) end)
    assert.is_nil(ev)
    assert.equal("timeout", err.kind)
    on_time(took, T, "listener:wait")
    local handled = 0
    vm:on("RTC_CHANGE", function() handled = handled + 1 end)
    local ok
    took, ok, err = timed(function() return vm:run({ timeout = T }) end)
    assert.is_nil(ok)
    assert.equal("timeout", err.kind)
    on_time(took, T, "vm:run")
    assert.is_true(handled > 1000, handled)
    local loop = qmp.loop({ vm })
    took, ok, err = timed(function() return loop:run({ timeout = T }) end)
    assert.is_nil(ok)
    assert.equal("timeout", err.kind)
    on_time(took, T, "qmp.loop:run")
    assert.is_true(vm.stats.events > 10000, vm.stats.events)   -- the flood was on all along
    -- when the handler fell behind, each drop was counted and the 1st, 2nd,
    -- 4th ... reported: never a report per event
    local drops = vm.stats.overflow
    assert.equal(drops > 0 and math.floor(math.log(drops, 2)) + 1 or 0, #reports)
    for _, e in ipairs(reports) do assert.equal("overflow", e.kind) end
    local heap_grown = heap() - heap0
    -- at most max_queue events of about 300 bytes each (the handlers' queue
    -- and the wait history share one ring)
    assert.is_true(heap_grown < 1000 * 1024, "the heap holds " .. mib(heap_grown))
  end)

  it("times out vm:execute within 10 % while the peer streams whitespace #timing", function()
    local srv = serve(opening({ { expect = "x" }, { stream = { unit = " ", count = 8 * GiB } } }), { watchdog = 60 })
    local vm = connect(srv)
    local took, ret, err = timed(function() return vm:execute("x", nil, { timeout = T }) end)
    assert.is_nil(ret)
    assert.equal("timeout", err.kind)
    on_time(took, T, "vm:execute")
    vm:close()
    assert.is_true(streamed(srv) > 10 * MiB)   -- the stream was on
  end)
end)

describe("deep nesting", function()
  local function nested(levels) return ("["):rep(levels) .. ("]"):rep(levels) end
  local function depth(v)
    local n = 0
    while type(v) == "table" do n, v = n + 1, v[1] end
    return n
  end

  it("accepts 1000 levels in a reply and in an event, and goes on", function()
    local srv = serve(opening({
      { expect = "deep", reply = '{"return": ' .. nested(999) .. ', "id": %ID}' },   -- the object is level 1
      { send = fake.event("DEVICE_DELETED", '{"device": ' .. nested(998) .. '}') },  -- object, data, 998 arrays
      { expect = "after", reply = OK },
      { hold = 10 },
    }))
    local vm = connect(srv)
    local l <close> = vm:listen("DEVICE_DELETED")
    assert.equal(999, depth(assert(vm:execute("deep"))))
    assert.same({}, assert(vm:execute("after")))
    assert.equal(998, depth(assert(l:wait(2)).device))
    assert.equal("ready", vm.state)
  end)

  it("refuses 1001 levels with a clean protocol error, ending the stream after the events before it", function()
    local srv = serve(opening({ { expect = "deep" },
                                { send = fake.event("STOP") .. '{"return": ' .. nested(1000) .. ', "id": %ID}\r\n' },
                                { hold = 10 } }))
    local vm = connect(srv)
    local ret, err = vm:execute("deep")
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    assert.equal("protocol", err.cause.kind)
    assert.equal("nesting too deep (byte 1010 of a message)", err.cause.message)
    assert.is_true(vm:closed())
    assert.equal("STOP", assert(vm:wait("STOP", nil, 1)).event)
  end)

  it("stops reading 1,000,000 levels at level 1001: no stack overflow, flat memory", function()
    local srv = serve(opening({ { expect = "deep" }, { stream = { head = '{"return": ', unit = "[", count = 1000000 } } }))
    local r = in_child(srv, "{ timeout = 5 }", [[function(vm)
      local ret, err = vm:execute("deep")
      return { ret = ret and "a reply", why = err.cause.message }
    end]])
    assert.is_nil(r.ret)
    assert.matches("^nesting too deep", r.why)
    assert.is_true(r.peak < 1 * MiB, "the peak resident set grew by " .. mib(r.peak))
  end)
end)
