-- The waiting part (qmp.waiting) on its own, with a stand-in for the
-- client: one coroutine reads while the others park and are woken by what
-- it read; outside a scheduler a wait blocks in poll() on the fd, or on the
-- clock without one; a deadline ends a wait; so does a caught signal.
local Waiting = require "qmp.waiting"
local waiters = require "qmp.waiters"
local core = require "qmp.core"
local qmp = require "qmp"

local cleanup = require("support.cleanup")(after_each)

-- A scheduler of the spec's own: wait() parks the running coroutine and
-- notes what it waits for; a condition's signal() marks those parked on it.
local function scheduler()
  local s = { parked = {} }   -- coroutine -> { fd, mode, cond, timeout, signalled }
  local Cond = {}
  Cond.__index = Cond
  function Cond:signal()
    for _, how in pairs(s.parked) do
      if how.cond == self then how.signalled = true end
    end
  end
  s.waiter = {
    wait = function(fd, mode, cond, timeout)
      s.parked[coroutine.running()] = { fd = fd, mode = mode, cond = cond, timeout = timeout }
      coroutine.yield()
      s.parked[coroutine.running()] = nil
    end,
    condition = function() return setmetatable({}, Cond) end,
  }
  return s
end

-- A clock that moves only when slept on.
local function fake_clock()
  local c = { t = 0, slept = {} }
  c.now = function() return c.t end
  c.sleep = function(seconds)
    c.slept[#c.slept + 1] = seconds or "for ever"
    if seconds then c.t = c.t + seconds end
  end
  return c
end

-- A stand-in for the client: io() says what to wait on; progress() runs
-- arrive() (which says whether anything changed); ended is the error of a
-- closed client.
local function client(p)
  local c = { fd = p.fd or -1, due = p.due, arrive = p.arrive or function() return false end, reads = 0 }
  c.waiting = Waiting.new({
    waiter = p.waiter or waiters.blocking, clock = p.clock,   -- as waiters.from(nil) gives
    io = function() return c.fd, "r", c.due end,
    progress = function()
      c.reads = c.reads + 1
      return c.arrive()
    end,
    ended = function() return c.ended end,
  })
  return c
end

local function socket_pair() return require("support.conn").unix_pair(cleanup) end

-- true when fd has something to read now.
local function readable(fd)
  return #assert(core.poll({ fd }, 0)) > 0
end

describe("qmp.waiting", function()
  it("wakes a coroutine parked while another reads, with what that read brought", function()
    local s = scheduler()
    local replies = {}
    local c = client({ waiter = s.waiter, clock = fake_clock(), fd = 7 })
    local a = coroutine.create(function() return c.waiting:await(function() return replies.a end, 10) end)
    local b = coroutine.create(function() return c.waiting:await(function() return replies.b end, 10) end)
    assert(coroutine.resume(a))
    assert(coroutine.resume(b))
    -- a reads: it waits on the fd; b parks on the condition, without the fd.
    assert.same({ fd = 7, mode = "r", cond = s.parked[a].cond, timeout = 10 }, s.parked[a])
    assert.is_nil(s.parked[b].fd)
    assert.equal(s.parked[a].cond, s.parked[b].cond)
    assert.is_nil(s.parked[b].signalled)
    -- The fd is ready: a's read brings both replies, and wakes b.
    c.arrive = function()
      replies.a, replies.b = "for a", "for b"
      return true
    end
    local _, got = assert(coroutine.resume(a))
    assert.equal("for a", got)
    assert.equal("dead", coroutine.status(a))
    assert.is_true(s.parked[b].signalled)
    c.arrive = function() return false end
    _, got = assert(coroutine.resume(b))
    assert.equal("for b", got)
  end)

  it("makes another coroutine the reader once the reader is dead", function()
    local s = scheduler()
    local c = client({ waiter = s.waiter, clock = fake_clock(), fd = 7 })
    local function waits() return c.waiting:await(function() end, 10) end
    local a = coroutine.create(waits)
    assert(coroutine.resume(a))
    assert.equal(7, s.parked[a].fd)
    assert(coroutine.close(a))   -- killed while it read (its scheduler dropped it)
    local b = coroutine.create(waits)
    assert(coroutine.resume(b))
    assert.equal(7, s.parked[b].fd)   -- b reads: nobody else will
  end)

  it("blocks on the clock until the work due, when there is no fd", function()
    local clock = fake_clock()
    local c = client({ clock = clock, due = 5 })
    c.arrive = function() return clock.t >= 5 end
    assert.equal("here", c.waiting:await(function() return clock.t >= 5 and "here" end, 100))
    assert.same({ 5 }, clock.slept)   -- one sleep, to the work due: not to the deadline
  end)

  it("blocks in poll() on the fd until it is readable", function()
    local conn, peer = socket_pair()
    local c = client({ clock = waiters.clock, fd = conn:fileno() })
    assert(peer:send("x"))
    local t0 = core.monotime()
    assert.is_true(c.waiting:await(function() return readable(conn:fileno()) end, core.monotime() + 10))
    assert.is_true(core.monotime() - t0 < 5)
  end)

  it("ends at the deadline with nil, nil: blocking, and in a scheduler", function()
    local conn = socket_pair()
    local c = client({ clock = waiters.clock, fd = conn:fileno() })
    local t0 = core.monotime()
    local v, err = c.waiting:await(function() return false end, t0 + 0.2)
    local took = core.monotime() - t0
    assert.is_nil(v)
    assert.is_nil(err)
    assert.is_true(took >= 0.2 and took < 5, took)
    local s, clock = scheduler(), fake_clock()
    local cs = client({ waiter = s.waiter, clock = clock, fd = 7 })
    local co = coroutine.create(function() return cs.waiting:await(function() return false end, 3) end)
    assert(coroutine.resume(co))
    assert.equal(3, s.parked[co].timeout)   -- the scheduler is told the time left
    clock.t = 3
    local ok, rv, rerr = coroutine.resume(co)
    assert.is_true(ok)
    assert.is_nil(rv)
    assert.is_nil(rerr)
    assert.equal("dead", coroutine.status(co))
  end)

  it("ends with the client's error once it is closed", function()
    local c = client({ clock = fake_clock(), due = 1 })
    c.arrive = function()
      c.ended = require("qmp.errors").new("closed", "gone")
      return true
    end
    local v, err = c.waiting:await(function() return false end, 100)
    assert.is_nil(v)
    assert.equal("closed", err.kind)
  end)

  describe("with a caught signal", function()
    local PID = tonumber(io.open("/proc/self/stat"):read("l"):match("^(%d+)"))
    before_each(function() assert(qmp.signals.catch("INT")) end)
    after_each(function()
      qmp.signals.take()
      qmp.signals.release()
    end)

    it("ends a wait blocked in poll() with kind interrupted, at once", function()
      local conn = socket_pair()
      local c = client({ clock = waiters.clock, fd = conn:fileno() })
      os.execute(("(sleep 0.1; kill -INT %d) >/dev/null 2>&1 &"):format(PID))
      local t0 = core.monotime()
      local v, err = c.waiting:await(function() return false end, t0 + 10)
      assert.is_nil(v)
      assert.equal("interrupted", err.kind)
      assert.equal("SIGINT", err.signal)
      assert.is_true(core.monotime() - t0 < 5)
      -- Still pending: the next wait does not wait at all.
      local reads = c.reads
      v, err = c.waiting:await(function() return false end, core.monotime() + 10)
      assert.is_nil(v)
      assert.equal("interrupted", err.kind)
      assert.equal(reads, c.reads)
    end)
  end)
end)
