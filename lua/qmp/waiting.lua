--- Waiting: how a client waits for its connection, the one place it blocks
-- or yields.  Only one coroutine at a time reads the socket (the reader);
-- the others park on a condition and look again after each read, so a
-- reply read by one coroutine wakes the one waiting for it.  Inside a
-- coroutine with a scheduler (opts.waiter) a wait yields to it; elsewhere
-- it blocks in poll(), or in the clock's sleep when there is no fd (a
-- simulated connection, qmp.replay).  A caught signal (qmp.signals) ends
-- every wait at once.  waiters.lua holds the schedulers' adapters.
local waiters = require "qmp.waiters"
local signals = require "qmp.signals"

local pcall, error, setmetatable = pcall, error, setmetatable
local min, huge = math.min, math.huge
local isyieldable, running, costatus = coroutine.isyieldable, coroutine.running, coroutine.status

local Waiting = {}
Waiting.__index = Waiting

--- new(p): what the client hands its waiting part:
--   p.waiter      the scheduler's waiter (waiters.from(opts.waiter))
--   p.clock       the client's clock { now =, sleep = }
--   p.io()        -> fd (-1: none), mode ("r" | "w" | "rw"), and the seconds
--                 until there is work without the fd (0: there is now; nil:
--                 only the fd can bring any)
--   p.progress()  do what can be done now; true when anything changed
--   p.ended()     the error that closed the client for good, or nil
function Waiting.new(p)
  return setmetatable({
    _p = p,
    _waiter = p.waiter,
    _blocking = waiters.blocking_on(p.clock),   -- outside a scheduler
    _cond = p.waiter.condition(),               -- where the others park
    _reader = nil,                              -- the coroutine reading now
  }, Waiting)
end

-- The waiter for the running code: the scheduler's inside a coroutine,
-- else blocking on the client's clock.
function Waiting:_current()
  if self._waiter ~= waiters.blocking and isyieldable() then return self._waiter end
  return self._blocking
end

--- Wake the coroutines parked on this client: something they wait for
-- may have happened (a read, a new state, vm:stop()).
function Waiting:signal()
  self._cond:signal()
end

--- Let other coroutines run (a scheduler's wait of 0 s); nothing outside
-- a scheduler.
function Waiting:pass()
  local w = self:_current()
  if w ~= self._blocking then w.wait(nil, nil, nil, 0) end
end

--- fd is about to be closed: the scheduler forgets it (waiters' cancel).
function Waiting:cancel(fd)
  if fd >= 0 and self._waiter.cancel then self._waiter.cancel(fd) end
end

--- Wait (at most until deadline; nil = no limit) for the fd or the work
-- p.io() says is due; then progress, and wake the coroutines parked here
-- when anything changed.
function Waiting:wait(deadline)
  local p = self._p
  local now = p.clock.now()
  local t = deadline and deadline - now or huge
  local fd, mode, due = p.io()
  if due then t = min(t, due) end
  if t > 0 then
    local w = self:_current()
    local timeout = t < huge and t or nil
    local reader = self._reader
    if reader and w ~= self._blocking and costatus(reader) ~= "dead" then
      w.wait(nil, nil, self._cond, timeout)        -- another coroutine reads
    else
      self._reader = running()
      local ok, why = pcall(w.wait, fd >= 0 and fd or nil, mode, self._cond, timeout)
      self._reader = nil
      if not ok then error(why, 0) end
    end
  end
  if p.progress() then self._cond:signal() end
end

--- Wait until ready() returns a true value (returned), the client closes
-- (nil, err), a caught signal is pending (nil, err) or the deadline passes
-- (nil, nil).
function Waiting:await(ready, deadline)
  local p = self._p
  while true do
    local v = ready()
    if v then return v end
    local ended = p.ended()
    if ended then return nil, ended end
    local interrupted = signals.error()
    if interrupted then return nil, interrupted end
    if p.clock.now() >= deadline then return nil, nil end
    self:wait(deadline)
  end
end

return Waiting
