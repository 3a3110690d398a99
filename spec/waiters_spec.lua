-- Schedulers (opts.waiter): qmp.waiters.cqueues, qmp.waiters.luv and a plain
-- function(fd, mode, timeout) built on cqueues.poll.  Each runs the same
-- scenarios against the fake peer, with the client used from coroutines the
-- scheduler drives: other work keeps running while a command waits for its
-- timeout; two commands in flight get their own replies; two coroutines
-- parked on one client (vm:run and a listener) stay idle and vm:stop from
-- one ends the other; a reply that vm:step() reads wakes its coroutine;
-- vm:after timers (and the resume policy built on them) fire inside vm:run;
-- a reconnect moves to a new fd.
local qmp = require "qmp"
local fake = require "support.fake_qmp"
local cqueues = require "cqueues"
local uv = require "luv"
local core = require "qmp.core"

local EV = fake.event
local OK = fake.reply("{}")
local monotime = qmp.monotime
local cleanup = require("support.cleanup")(after_each)

local WATCHDOG = 8      -- seconds any scheduler may run in one test
local BEAT = 0.05       -- heartbeat interval
local MAX_GAP = 0.15    -- the longest a heartbeat may be late

local function status(s, saved)
  return fake.reply(('{"status": "%s", "singlestep": false, "running": %s}'):format(s, tostring(s == "running")), saved)
end

local serve = fake.bound(cleanup)
local opening = fake.opening

-- {==================== schedulers
-- A scheduler S: S.waiter (for opts.waiter); S.spawn(fn) runs fn in a
-- coroutine it drives; S.sleep(seconds) inside one; S.every(interval) starts
-- a heartbeat that records the monotonic time of each tick in beat.ticks;
-- S.run(limit) drives until every spawned coroutine has ended, re-raises the
-- first error raised in one, and fails if the watchdog (limit) fires first.

-- Errors in a coroutine are collected, never left to the scheduler (luv
-- would end the process on an error in a callback).
local function guarded(fn, failures, on_end)
  return function()
    local ok, err = xpcall(fn, debug.traceback)
    if not ok then failures[#failures + 1] = err end
    on_end()
  end
end

local function finish(failures, live, limit)
  if failures[1] then error(failures[1], 0) end
  assert(live == 0, ("%d coroutine(s) still parked when the loop ended (watchdog: %g s)"):format(live, limit))
end

local function cqueues_scheduler(waiter)
  local cq = cqueues.new()
  local live, failures, beats = 0, {}, {}
  local S = { waiter = waiter, sleep = cqueues.sleep }
  function S.spawn(fn)
    live = live + 1
    cq:wrap(guarded(fn, failures, function() live = live - 1 end))
  end
  function S.every(interval)
    local beat = { ticks = {} }
    beats[#beats + 1] = beat
    cq:wrap(function()   -- not counted in live: it runs until run() ends
      while not beat.stopped do
        cqueues.sleep(interval)
        beat.ticks[#beat.ticks + 1] = monotime()
      end
    end)
    return beat
  end
  function S.run(limit)
    local deadline = monotime() + limit
    while live > 0 and monotime() < deadline do
      local ok, err = cq:step(math.min(0.5, deadline - monotime()))
      if not ok then failures[#failures + 1] = "the cqueues loop failed a coroutine: " .. tostring(err) break end
    end
    for _, beat in ipairs(beats) do beat.stopped = true end
    finish(failures, live, limit)
  end
  return S
end

-- The plain-function form on cqueues.  cqueues keeps an fd in its epoll set
-- after a poll returns, and fails the coroutine that polled it once the fd
-- is closed under it; a plain function is not told when the client closes
-- its fd (vm:close, a reconnect), so this one drops the registration after
-- every wait (README, "Schedulers").
local function poll_with_cqueues(fd, mode, timeout)
  if fd then
    cqueues.poll({ pollfd = fd, events = mode }, timeout)
    cqueues.cancel(fd)
  else
    cqueues.sleep(timeout)
  end
end

local function luv_scheduler()
  -- libuv times timers from the loop's cached clock, stale after the
  -- previous test: a coroutine's first timeout would fire early.
  uv.update_time()
  local live, failures, handles = 0, {}, {}
  local S = { waiter = qmp.waiters.luv }
  local function ended()
    live = live - 1
    if live == 0 then uv.stop() end
  end
  function S.spawn(fn)
    live = live + 1
    coroutine.wrap(guarded(fn, failures, ended))()
  end
  function S.sleep(seconds)
    local co, t = coroutine.running(), uv.new_timer()
    t:start(math.ceil(seconds * 1000), 0, function()
      t:close()
      assert(coroutine.resume(co))
    end)
    coroutine.yield()
  end
  function S.every(interval)
    local beat = { ticks = {} }
    local t = uv.new_timer()
    handles[#handles + 1] = t
    t:start(math.ceil(interval * 1000), math.ceil(interval * 1000), function()
      beat.ticks[#beat.ticks + 1] = monotime()
    end)
    return beat
  end
  function S.run(limit)
    if live > 0 then
      -- The watchdog does not keep the loop alive: if the client leaves
      -- nothing to wake a parked coroutine, uv.run returns at once.
      local dog = uv.new_timer()
      dog:start(math.ceil(limit * 1000), 0, function() uv.stop() end)
      dog:unref()
      uv.run()
      dog:close()
    end
    for _, h in ipairs(handles) do h:close() end
    uv.run("nowait")   -- let the closes complete
    finish(failures, live, limit)
  end
  return S
end

local SCHEDULERS = {
  { name = "qmp.waiters.cqueues", make = function() return cqueues_scheduler(qmp.waiters.cqueues) end },
  { name = "qmp.waiters.luv", make = luv_scheduler },
  { name = "a function(fd, mode, timeout) on cqueues.poll",
    make = function() return cqueues_scheduler(poll_with_cqueues) end },
}

-- }==================== schedulers

-- Connect from inside a coroutine (qmp.connect yields to the scheduler).
local function connect(S, path, opts)
  local o = { timeout = 5, waiter = S.waiter }
  for k, v in pairs(opts or {}) do o[k] = v end
  local vm, err = qmp.connect(path, o)
  assert(vm, tostring(err))
  cleanup(function() vm:close() end)
  return vm
end

-- The longest wait between t0, the heartbeat's ticks within [t0, t1], and t1.
local function longest_gap(ticks, t0, t1)
  local last, gap, n = t0, 0, 0
  for _, t in ipairs(ticks) do
    if t > t0 and t <= t1 then
      gap, last, n = math.max(gap, t - last), t, n + 1
    end
  end
  return math.max(gap, t1 - last), n
end

-- Poll until fn() is true, sleeping in the scheduler; false after timeout.
local function until_true(S, fn, timeout)
  local deadline = monotime() + timeout
  while not fn() do
    if monotime() >= deadline then return false end
    S.sleep(0.005)
  end
  return true
end

-- The fake closes the connection and accepts the next one; vm:run in a
-- coroutine sees qmp.disconnected then qmp.reconnected, and a command on the
-- new socket works.  (qmp.waiters.cqueues is told to forget the old fd:
-- the client calls waiter.cancel before it closes a socket.)
local function reconnects(S)
  local srv = serve(opening({
    { close = true }, { accept = true },
    { greet = true }, { expect = "qmp_capabilities", reply = OK },
    { expect = "query-status", reply = status("running") },
    { expect = "query-name", reply = fake.reply('{"name": "again"}') },
    { hold = 5 },
  }))
  local beat = S.every(BEAT)
  local r, seen = {}, {}
  S.spawn(function()
    local vm = connect(S, srv.path, { reconnect = { min = 0.01, max = 0.05 } })
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    r.t0 = monotime()
    r.ok, r.err = vm:run({ timeout = 3, done = function()
      return seen[#seen] ~= nil and seen[#seen].event == "qmp.reconnected"
    end })
    r.t1 = monotime()
    r.ret, r.cerr = vm:execute("query-name", nil, { timeout = 2 })
    r.generation, r.state = vm.generation, vm.state
    vm:close()
  end)
  S.run(WATCHDOG)
  assert(r.ok, tostring(r.err) .. "\n" .. srv:log())
  assert.equal(2, #seen)
  assert.equal("qmp.disconnected", seen[1].event)
  assert.equal(1, seen[1].generation)
  assert.equal("qmp.reconnected", seen[2].event)
  assert.equal(2, seen[2].generation)
  assert.equal("running", seen[2].status)
  assert.equal(2, r.generation)
  assert.equal("ready", r.state)
  assert(r.ret, tostring(r.cerr) .. "\n" .. srv:log())
  assert.same({ name = "again" }, r.ret)
  local gap = longest_gap(beat.ticks, r.t0, r.t1)
  assert.is_true(gap <= MAX_GAP, ("the heartbeat stalled for %.3f s during the reconnect"):format(gap))
end

for _, sched in ipairs(SCHEDULERS) do
  describe("opts.waiter = " .. sched.name, function()
    it("keeps a heartbeat ticking while a command to a frozen peer runs into its 2 s timeout #slow", function()
      local srv = serve(opening({ { expect = "query-status" }, { hold = 5 } }))
      local S = sched.make()
      local beat = S.every(BEAT)
      local r = {}
      S.spawn(function()
        local vm = connect(S, srv.path)
        r.t0 = monotime()
        r.ret, r.err = vm:execute("query-status", nil, { timeout = 2 })
        r.t1 = monotime()
        vm:close()
      end)
      S.run(WATCHDOG)
      assert.is_nil(r.ret)
      assert.equal("timeout", r.err.kind, tostring(r.err))
      assert.matches("no reply to query%-status", r.err.message)
      local elapsed = r.t1 - r.t0
      assert.is_true(elapsed >= 1.8 and elapsed <= 2.2, ("the timeout came after %.3f s"):format(elapsed))
      local gap, n = longest_gap(beat.ticks, r.t0, r.t1)
      assert.is_true(gap <= MAX_GAP, ("the heartbeat stalled for %.3f s (%d ticks)"):format(gap, n))
      assert.is_true(n >= 30, ("only %d heartbeats in %.2f s"):format(n, elapsed))
    end)

    it("gives each of two coroutines with commands in flight on one client its own reply", function()
      -- The fake reads both commands before it answers, the second first:
      -- a client that sent one command at a time would get no reply at all.
      local srv = serve(opening({
        { expect = "query-status", save = "a" },
        { expect = "query-name", save = "b" },
        { send = fake.reply('{"name": "second"}', "b") .. "\r\n" },
        { send = status("running", "a") .. "\r\n" },
        { hold = 5 },
      }))
      local S = sched.make()
      local got = {}
      S.spawn(function()
        local vm = connect(S, srv.path)
        S.spawn(function()
          -- query-status goes out first, so the fake sees the commands in order.
          assert.is_true(until_true(S, function() return vm:commands_sent("query-status") == 1 end, 3))
          got.b, got.b_err = vm:execute("query-name", nil, { timeout = 3 })
        end)
        got.a, got.a_err = vm:execute("query-status", nil, { timeout = 3 })
      end)
      S.run(WATCHDOG)
      assert(got.a, tostring(got.a_err) .. "\n" .. srv:log())
      assert(got.b, tostring(got.b_err) .. "\n" .. srv:log())
      assert.same({ name = "second" }, got.b)
      assert.equal("running", got.a.status)
      assert.is_true(got.a.running)
      local received = srv:received()
      assert.matches('"execute": *"query%-status"', received[#received - 1])
      assert.matches('"execute": *"query%-name"', received[#received])
    end)

    it("stays idle while vm:run and a listener's wait park in two coroutines, and vm:stop from one ends the other",
       function()
      -- The recipe of examples/*_watch.lua: one coroutine runs the dispatch
      -- loop, another waits on a listener and sends a command per event.
      -- After the first event both park again for 0.5 s of silence.
      local srv = serve(opening({
        { sleep = 0.1 }, { send = EV("STOP") },
        { expect = "query-status", reply = status("paused") },
        { sleep = 0.5 }, { send = EV("RESUME") },
        { hold = 5 },
      }))
      local S = sched.make()
      local beat = S.every(BEAT)
      local r = {}
      S.spawn(function()
        local vm = connect(S, srv.path)
        local changes = vm:listen({ "STOP", "RESUME" })
        S.spawn(function()
          r.ev1, r.werr = changes:wait(3)
          if r.ev1 then r.st, r.serr = vm:execute("query-status", nil, { timeout = 2 }) end
          r.ev2, r.werr2 = changes:wait(3)
          r.stopped = monotime()
          vm:stop()
        end)
        r.t0, r.c0 = monotime(), os.clock()
        r.ok, r.err = vm:run({ timeout = 4 })
        r.t1, r.c1 = monotime(), os.clock()
        vm:close()
      end)
      S.run(WATCHDOG)
      assert(r.ev1, tostring(r.werr))
      assert.equal("STOP", r.ev1.event)
      assert(r.st, tostring(r.serr) .. "\n" .. srv:log())
      assert.equal("paused", r.st.status)
      assert(r.ev2, tostring(r.werr2))
      assert.equal("RESUME", r.ev2.event)
      assert(r.ok, tostring(r.err))
      assert.is_true(r.t1 - r.stopped < MAX_GAP, ("vm:run ended %.3f s after vm:stop()"):format(r.t1 - r.stopped))
      local wall, cpu = r.t1 - r.t0, r.c1 - r.c0
      assert.is_true(cpu < 0.25 * wall, ("%.3f s of CPU in %.3f s of mostly waiting: a busy loop"):format(cpu, wall))
      local gap = longest_gap(beat.ticks, r.t0, r.t1)
      assert.is_true(gap <= MAX_GAP, ("the heartbeat stalled for %.3f s"):format(gap))
    end)

    it("wakes a coroutine at once when vm:step() elsewhere reads the reply it waits for", function()
      -- An external loop steps the client from another coroutine; the reply
      -- arrives while that coroutine holds the thread, so the waiting
      -- coroutine's socket is drained before its scheduler polls it again.
      local srv = serve(opening({
        { expect = "query-name" }, { sleep = 0.2 }, { send = fake.reply('{"name": "x"}') .. "\r\n" },
        { hold = 5 },
      }))
      local S = sched.make()
      local vm = assert(qmp.connect(srv.path, { timeout = 5, waiter = S.waiter }))  -- outside a coroutine: blocks
      cleanup(function() vm:close() end)
      local r = {}
      S.spawn(function()
        r.ret, r.err = vm:execute("query-name", nil, { timeout = 2 })
        r.t1 = monotime()
      end)
      S.spawn(function()
        assert.is_true(until_true(S, function() return vm:commands_sent("query-name") == 1 end, 2))
        r.polled = core.poll({ vm:pollfd() }, 2)   -- blocks until the reply is there
        assert(vm:step())
        r.t0 = monotime()
      end)
      S.run(WATCHDOG)
      assert.same({ 1 }, r.polled)
      assert(r.ret, tostring(r.err))
      assert.same({ name = "x" }, r.ret)
      assert.is_true(r.t1 - r.t0 < MAX_GAP, ("the reply, read by vm:step(), reached its coroutine %.3f s later")
                                             :format(r.t1 - r.t0))
    end)

    it("fires vm:after timers and the resume policy's delayed cont while vm:run runs in a coroutine", function()
      local io_error = EV("BLOCK_IO_ERROR", '{"device": "", "node-name": "disk0", "operation": "write", ' ..
                                            '"action": "stop", "reason": "Input/output error", "nospace": false}')
      local srv = serve(opening({
        { send = io_error .. EV("STOP") },
        { expect = "query-status", reply = status("io-error") },
        { expect = "cont", reply = OK },
        { hold = 5 },
      }))
      local S = sched.make()
      local beat = S.every(BEAT)
      local r, fired, lines = {}, {}, {}
      S.spawn(function()
        local vm = connect(S, srv.path)
        local p = qmp.policy.resume_on_io_error(vm, { delay = 0.05, log = function(l) lines[#lines + 1] = l end })
        r.t0 = monotime()
        vm:after(0.2, function() fired[#fired + 1] = { "0.2", monotime() - r.t0 } end)
        vm:after(0.02, function() fired[#fired + 1] = { "0.02", monotime() - r.t0 } end)
        r.ok, r.err = vm:run({ timeout = 3, done = function() return p.resumes == 1 and #fired == 2 end })
        r.t1 = monotime()
        r.resumes = p.resumes
        vm:close()
      end)
      S.run(WATCHDOG)
      assert(r.ok, tostring(r.err) .. "\n" .. table.concat(lines, "\n") .. "\n" .. srv:log())
      assert.equal(1, r.resumes)
      assert.equal(2, #fired)
      assert.equal("0.02", fired[1][1])
      assert.is_true(fired[1][2] >= 0.02 and fired[1][2] < 0.02 + MAX_GAP, tostring(fired[1][2]))
      assert.equal("0.2", fired[2][1])
      assert.is_true(fired[2][2] >= 0.2 and fired[2][2] < 0.2 + MAX_GAP, tostring(fired[2][2]))
      local received = srv:received()
      assert.matches('"execute": *"query%-status"', received[#received - 1])
      assert.matches('"execute": *"cont"', received[#received])
      assert.matches("disk0: cont sent", table.concat(lines, "\n"))
      local gap = longest_gap(beat.ticks, r.t0, r.t1)
      assert.is_true(gap <= MAX_GAP, ("the heartbeat stalled for %.3f s inside vm:run"):format(gap))
    end)

    it("reconnects onto a new socket with vm:run in a coroutine, then runs a command", function()
      reconnects(sched.make())
    end)
  end)
end
