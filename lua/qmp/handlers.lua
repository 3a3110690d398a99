--- Handlers, timers and the dispatch loop of a Client.
-- Dispatch is plain Lua (the C core never calls back), so a handler may call
-- vm:execute (events arriving meanwhile wait their turn in the queue: no
-- recursive dispatch) and may yield when the loop runs inside a coroutine.
-- A handler error is caught with its traceback, counted and reported through
-- vm.on_error; the loop goes on.
local core = require "qmp.core"
local errors = require "qmp.errors"
local filter = require "qmp.filter"

local type, ipairs, xpcall, error, tostring = type, ipairs, xpcall, error, tostring
local traceback, monotime, max, huge = debug.traceback, core.monotime, math.max, math.huge

local Subscription = { __name = "qmp.Subscription" }
Subscription.__index = Subscription

--- Remove the handler; idempotent.  Safe from inside any handler.
function Subscription:off()
  if not self.active then return end
  self.active = false
  local vm = self.vm
  local list = {}  -- copy on write: a dispatch in progress keeps its snapshot
  for _, h in ipairs(vm._handlers) do
    if h ~= self then list[#list + 1] = h end
  end
  vm._handlers = list
end

local Timer = { __name = "qmp.Timer" }
Timer.__index = Timer

--- Cancel the timer if it has not fired yet.
function Timer:cancel()
  self.active = false
end

return function(Client)
  -- Report a failure of user code (handler or timer) with its traceback.
  local function failed(vm, what, err)
    vm.stats.handler_errors = vm.stats.handler_errors + 1
    local text = tostring(err)
    vm:_report(errors.new("handler", what .. " failed: " .. (text:match("^[^\n]*") or text),
                          { traceback = text }))
  end

  local function subscribe(vm, names, data, fn, once)
    if fn == nil and (type(data) == "function") then data, fn = nil, data end
    if type(fn) ~= "function" then error("qmp: handler must be a function", 3) end
    local sub = setmetatable({ vm = vm, match = filter.compile(names, data), fn = fn,
                               once = once, active = true }, Subscription)
    local list = {}
    for i, h in ipairs(vm._handlers) do list[i] = h end
    list[#list + 1] = sub
    vm._handlers = list
    return sub
  end

  --- vm:on(filter [, data_filter], handler) -> subscription; handler(ev, vm).
  function Client:on(names, data, fn)
    return subscribe(self, names, data, fn, false)
  end

  --- Like on, but the handler runs at most once.
  function Client:once(names, data, fn)
    return subscribe(self, names, data, fn, true)
  end

  local function deliver(sub, ev, vm)
    if sub.active and sub.match(ev) then
      if sub.once then sub:off() end
      sub.fn(ev, vm)
    end
  end

  --- Hand queued events to the handlers, in order of arrival and, per event,
  -- in order of registration.  Returns the number of events dispatched.
  -- Not re-entrant: called from a handler it returns 0 at once.
  function Client:dispatch()
    if self._dispatching then return 0 end
    self._dispatching = true
    local n = 0
    while self._qhead <= self._qtail and not self._stop do
      local ev = self._queue[self._qhead]
      self._queue[self._qhead] = nil
      self._qhead = self._qhead + 1
      n = n + 1
      for _, sub in ipairs(self._handlers) do  -- a snapshot: on/off replace the list
        local ok, err = xpcall(deliver, traceback, sub, ev, self)
        if not ok then failed(self, "handler for " .. tostring(ev.event), err) end
      end
    end
    self._dispatching = false
    return n
  end

  --- Call fn(vm) after seconds, from the dispatch loop (run, step, loop).
  function Client:after(seconds, fn)
    if type(seconds) ~= "number" or seconds < 0 then error("qmp: after: seconds must be >= 0", 2) end
    if type(fn) ~= "function" then error("qmp: after: callback must be a function", 2) end
    local t = setmetatable({ due = monotime() + seconds, fn = fn, active = true }, Timer)
    local timers = self._timers
    local i = #timers
    while i > 0 and timers[i].due > t.due do i = i - 1 end  -- keep them sorted by due time
    table.insert(timers, i + 1, t)
    return t
  end

  -- Run the timers that are due.
  function Client:_run_timers()
    local timers = self._timers
    while timers[1] do
      local t = timers[1]
      if not t.active then
        table.remove(timers, 1)
      elseif t.due <= monotime() then
        table.remove(timers, 1)
        t.active = false
        local ok, err = xpcall(t.fn, traceback, self)
        if not ok then failed(self, "timer", err) end
      else
        return
      end
    end
  end

  -- The error to end a loop with: closed, every event dispatched, no reconnect coming.
  function Client:_finished()
    if self._closed and self._qhead > self._qtail and not self._reconnect_timer then
      return self._closed
    end
  end

  --- One non-blocking step for external loops: read what is there, run due
  -- timers, dispatch.  true, or nil, err once closed with nothing left to do.
  function Client:step()
    self:poll(0)
    self:_run_timers()
    self:dispatch()
    local finished = self:_finished()
    if finished then return nil, finished end
    return true
  end

  --- The cqueues polling protocol, also handy for luv and others.
  -- While reconnecting there is no socket: pollfd() is -1, timeout() says when to step.
  function Client:pollfd() return self.conn:fileno() end
  function Client.events() return "r" end
  function Client:timeout()
    if self._qhead <= self._qtail then return 0 end
    local t = self._timers[1]
    if t then return max(0, t.due - monotime()) end
    return nil
  end

  --- Run the dispatch loop until vm:stop(), done() returns true, the timeout
  -- passes or the connection closes.  Returns true for stop/done; nil, err
  -- (kind "timeout" or "closed") otherwise.
  -- opts: timeout (seconds, default forever), done (function(vm) -> boolean).
  function Client:run(opts)
    opts = opts or {}
    local deadline = opts.timeout and monotime() + opts.timeout or huge
    local done = opts.done
    self._stop = false
    while true do
      self:_run_timers()
      self:dispatch()
      if self._stop or (done and done(self)) then
        self._stop = false
        return true
      end
      local finished = self:_finished()
      if finished then return nil, finished end
      local wait = deadline - monotime()
      if wait <= 0 then
        return nil, errors.new("timeout", ("run: %g s passed"):format(opts.timeout))
      end
      local t = self:timeout()  -- the next timer: the queue is empty here
      if t then wait = math.min(wait, t) end
      if not self._closed then
        local msg = self:_receive(wait < huge and wait or nil)
        if msg ~= nil and msg ~= true then self:_stray(msg) end
      elseif wait < huge then
        core.sleep(wait)  -- reconnecting: nothing to read until the timer fires
      end
    end
  end

  --- End vm:run() after the current handler returns.
  function Client:stop()
    self._stop = true
  end
end
