--- Waiters: how a client waits for its socket without blocking what it does
-- not own.  opts.waiter is one of
--   qmp.waiters.cqueues          cqueues coroutines (Debian's lua-cqueues)
--   qmp.waiters.luv              coroutines resumed by a libuv loop (lua-luv)
--   function(fd, mode, timeout)  your scheduler: park the running coroutine
--                                until fd is ready for mode ("r" | "w" |
--                                "rw") or timeout seconds pass (fd nil: just
--                                sleep; timeout nil: no limit)
-- A waiter is used only where the caller can yield (inside a coroutine);
-- elsewhere the client blocks in poll(), bounded by its deadline.
--
-- The client needs two things from a waiter:
--   w.wait(fd, mode, cond, timeout)  park until fd ready, cond signalled or
--                                    timeout (each of fd, cond may be nil)
--   w.condition() -> cond            cond:signal() wakes all parked on it
--   w.cancel(fd) (optional)          fd is about to be closed
-- Built-ins provide all three.  A plain function cannot watch a condition,
-- so a coroutine that waits for another's read then re-checks every 10 ms,
-- and the reader itself every 100 ms.
local core = require "qmp.core"

local waiters = {}

local SLICE = 0.01         -- plain-function form: how often a coroutine parked on another's read re-checks
local READER_SLICE = 0.1   -- and how often the reader does (a vm:stop() from elsewhere, a reconnect)

local inert = { signal = function() end }

--- The real clock: monotonic seconds; a sleep with no time limit and nothing
-- to wait for returns at once (a client's own clock, opts.clock, may differ).
waiters.clock = { now = core.monotime, sleep = function(seconds) if seconds then core.sleep(seconds) end end }

-- No scheduler: block in poll(), or, with no fd, in the clock's sleep (so a
-- simulated connection, qmp.replay, runs on simulated time).  Conditions
-- are never waited on: one thread of control can only be its own reader.
local on_clock = setmetatable({}, { __mode = "k" })

function waiters.blocking_on(clock)
  local w = on_clock[clock]
  if not w then
    w = {
      wait = function(fd, mode, _, timeout)
        if fd and fd >= 0 then core.wait_fd(fd, mode, timeout) else clock.sleep(timeout) end
      end,
      condition = function() return inert end,
    }
    on_clock[clock] = w
  end
  return w
end

waiters.blocking = waiters.blocking_on(waiters.clock)

local function from_function(fn)
  return {
    wait = function(fd, mode, cond, timeout)
      if cond then  -- no way to watch it: look again soon
        local slice = fd and READER_SLICE or SLICE
        timeout = timeout and math.min(timeout, slice) or slice
      end
      if fd and fd >= 0 then return fn(fd, mode, timeout) end
      return fn(nil, nil, timeout)
    end,
    condition = function() return inert end,
  }
end

local function cqueues_waiter()
  local cqueues = require "cqueues"
  local condition = require "cqueues.condition"
  return {
    wait = function(fd, mode, cond, timeout)
      local pollable = fd and fd >= 0 and { pollfd = fd, events = mode } or nil
      if pollable and cond then cqueues.poll(pollable, cond, timeout)
      elseif pollable or cond then cqueues.poll(pollable or cond, timeout)
      else cqueues.sleep(timeout or 0) end
    end,
    condition = function() return condition.new() end,
    cancel = function(fd) cqueues.cancel(fd) end,
  }
end

-- luv: one uv_poll handle per fd (libuv allows no more), shared by every
-- coroutine parked on it; wake-ups are deferred to a fresh callback so a
-- coroutine is never resumed inside another's code.
local function luv_waiter()
  local uv = require "luv"
  local polls = {}  -- fd -> { handle =, parked = { [wake] = mode } }

  local function defer(fn)
    local t = uv.new_timer()
    t:start(0, 0, function() t:close(); fn() end)
  end

  local function mask(entry)
    local r, w = false, false
    for _, mode in pairs(entry.parked) do
      r = r or mode:find("r", 1, true) ~= nil
      w = w or mode:find("w", 1, true) ~= nil
    end
    return (r and w) and "rw" or (w and "w") or (r and "r") or nil
  end

  local function repoll(fd)
    local entry = polls[fd]
    local events = mask(entry)
    if not events then
      entry.handle:stop()
      return
    end
    entry.handle:start(events, function()
      local list = {}
      for wake in pairs(entry.parked) do list[#list + 1] = wake end
      for _, wake in ipairs(list) do wake() end
    end)
  end

  local Cond = {}
  Cond.__index = Cond
  function Cond:signal()
    local list = {}
    for wake in pairs(self.parked) do list[#list + 1] = wake end
    if #list > 0 then defer(function() for _, wake in ipairs(list) do wake() end end) end
  end

  return {
    wait = function(fd, mode, cond, timeout)
      local co = coroutine.running()
      local timer, entry, done
      local function wake()
        if done then return end
        done = true
        if timer then timer:stop(); timer:close() end
        if entry then
          entry.parked[wake] = nil
          if polls[fd] == entry then repoll(fd) end
        end
        if cond then cond.parked[wake] = nil end
        local ok, err = coroutine.resume(co)
        if not ok then error(err, 0) end   -- luv reports errors of callbacks
      end
      if fd and fd >= 0 then
        entry = polls[fd]
        if not entry then
          entry = { handle = uv.new_poll(fd), parked = {} }
          polls[fd] = entry
        end
        entry.parked[wake] = mode
        repoll(fd)
      end
      if cond then cond.parked[wake] = true end
      if timeout then
        timer = uv.new_timer()
        timer:start(math.max(0, math.ceil(timeout * 1000)), 0, wake)
      end
      coroutine.yield()
    end,
    condition = function() return setmetatable({ parked = {} }, Cond) end,
    cancel = function(fd)
      local entry = polls[fd]
      if entry then
        polls[fd] = nil
        entry.handle:stop()
        entry.handle:close()
        local list = {}
        for wake in pairs(entry.parked) do list[#list + 1] = wake end
        for _, wake in ipairs(list) do defer(wake) end
      end
    end,
  }
end

local builtin = { cqueues = cqueues_waiter, luv = luv_waiter }

-- qmp.waiters.cqueues / .luv are made on first use, so require "qmp"
-- needs neither library.
setmetatable(waiters, {
  __index = function(t, name)
    local make = builtin[name]
    if make then
      local w = make()
      rawset(t, name, w)
      return w
    end
  end,
})

--- Normalise opts.waiter: nil, a built-in, a { wait, condition } table or a function.
function waiters.from(w)
  if w == nil then return waiters.blocking end
  if type(w) == "function" then return from_function(w) end
  if type(w) == "table" and type(w.wait) == "function" and type(w.condition) == "function" then
    return w
  end
  return nil
end

return waiters
