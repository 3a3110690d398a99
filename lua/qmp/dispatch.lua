--- Delivery of events to every consumer of one client: handlers (vm:on,
-- vm:once), listeners (vm:listen), waits (vm:wait), and the vm:after timers.
-- Every event goes to EVERY consumer that matches it; none takes it from
-- another.  Each consumer's queue is bounded: an overflow drops that
-- consumer's oldest event, counted and reported once per power of two.
--
-- Handlers do not run here when an event arrives (it may arrive inside a
-- command's wait): the event is queued, and deliver() hands it to every
-- handler registered by then, from the dispatch loop (run, step,
-- qmp.loop).  So `connect; on; run` also sees the events QEMU sent while
-- the client connected.
local errors = require "qmp.errors"
local filter = require "qmp.filter"

local type, ipairs, next, xpcall, tostring, setmetatable = type, ipairs, next, xpcall, tostring, setmetatable
local traceback, running = debug.traceback, coroutine.running

local Dispatch = {}
Dispatch.__index = Dispatch

-- Report the 1st, 2nd, 4th, 8th ... drop: never silent, never a flood.
local function overflowed(report, n, what, max)
  if n & (n - 1) == 0 then
    report(errors.new("overflow", ("%s full (max_queue %d): dropped its oldest event, %d so far")
                                  :format(what, max, n)))
  end
end

--- A bounded FIFO.
local Queue = {}
Queue.__index = Queue

local function new_queue(max)
  return setmetatable({ head = 1, tail = 0, max = max }, Queue)
end

-- Append; returns true when the oldest item was dropped to make room.
function Queue:push(v)
  local tail = self.tail + 1
  self[tail], self.tail = v, tail
  if tail - self.head + 1 > self.max then
    self[self.head] = nil
    self.head = self.head + 1
    return true
  end
  return false
end

function Queue:pop()
  local head = self.head
  if head > self.tail then return nil end
  local v = self[head]
  self[head], self.head = nil, head + 1
  return v
end

function Queue:size()
  return self.tail - self.head + 1
end

-- Listeners are held weakly: one its script dropped without close() is
-- collected, and stops buffering and filtering then, as a closed one does.
-- weak_set(from, add, remove): a new set of from's listeners, with add and
-- without remove (copy on write: a set being walked never changes).
local WEAK_KEYS = { __mode = "k" }
local function weak_set(from, add, remove)
  local set = setmetatable({}, WEAK_KEYS)
  if from then
    for k in next, from do
      if k ~= remove then set[k] = true end
    end
  end
  if add then set[add] = true end
  return set
end

--- new(p): p.now (the clock), p.max_queue, p.report(err), p.await(ready, deadline),
-- p.unknown_name(name) -> why the name is suspicious, or nil, p.pump() (optional): read
-- what the socket has now, without waiting (called between handlers, see PUMP_EVERY).
function Dispatch.new(p)
  return setmetatable({
    _p = p,
    _stats = { overflow = 0, handler_errors = 0 },   -- its part of vm.stats
    _handlers = {},                 -- subscriptions in registration order (copy on write)
    _by_name = {}, _named = 0,      -- event name -> the handlers whose names take it (a cache)
    _epoch = 0,                     -- bumped when the handlers change or vm:stop() asks (see stop)
    _stopped = false,               -- vm:stop() asked: delivery ends after the running handler
    _listeners = weak_set(),        -- open listeners, as keys (copy on write)
    -- The last max_queue events by sequence number, in a ring (slot
    -- seq % max_queue + 1; a slot let go holds false, never nil, so the
    -- table stays a dense array): the handlers' queue is the part from
    -- _next on, vm:wait's history the whole of it.
    _log = {}, _cap = p.max_queue, _first = 1, _last = 0,
    _next = 1,                      -- the next event for the handlers
    _taken = {},                    -- seq -> true: returned by a vm:wait
    _window = 0,                    -- seq of the last event before the last command
    _hold_until = -math.huge,       -- history is kept for waits until then (see HOLD)
    _waits = setmetatable({}, { __mode = "k" }),  -- coroutines in a vm:wait now
    _windows = setmetatable({}, { __mode = "k" }),  -- the same per coroutine
    _timers = {},                   -- vm:after timers, sorted by due time
    _delivering = false,
    _held = nil,                    -- an event vm:stop() left half-delivered: where it is
    _warned = {},                   -- unknown names already reported
  }, Dispatch)
end

local function without(list, item)
  local copy = {}
  for _, v in ipairs(list) do
    if v ~= item then copy[#copy + 1] = v end
  end
  return copy
end

local function with(list, item)
  local copy = { table.unpack(list) }
  copy[#copy + 1] = item
  return copy
end

-- Events the handlers have had stay for vm:wait's history while a wait can
-- ask for them: during a wait, and for HOLD seconds after a command.  Then
-- the history spans at least HISTORY events, at most twice as many (they go
-- in bulk, HISTORY at a time).  A script's wait answers a command just sent,
-- and every event kept alive costs the garbage collector on a busy stream:
-- kept longer than a young collection, an event grows old, and only a full
-- collection (a walk of the whole heap) frees it.  With no command for HOLD
-- seconds and no wait, an event goes once the handlers have had it, so a
-- fleet of quiet clients holds no history at all.
local HISTORY = 128
local HOLD = 60

--- Hand an arriving event to every consumer.
function Dispatch:push(ev)
  self:push_list({ ev }, 1)
end

--- Hand n arriving events (list[1..n], in order) to every consumer.
function Dispatch:push_list(list, n)
  local log, cap, seq = self._log, self._cap, self._last
  local first, nxt = self._first, self._next
  local room = math.min(cap, 2 * HISTORY)  -- the log may span this many before any goes
  for i = 1, n do
    seq = seq + 1
    local span = seq - first
    -- Room is made when the log is full, or when HISTORY or more events the
    -- handlers have had can go at once; not while they only lag behind.
    if span >= room and (span >= cap or nxt - first >= HISTORY) then
      self:_make_room(seq)
      first, nxt = self._first, self._next
    end
    log[seq % cap + 1] = list[i]
  end
  self._last = seq
  for listener in next, self._listeners do   -- a snapshot: listen and close make a new set
    for i = 1, n do listener:_offer(list[i]) end
  end
end

-- Before event seq goes in: let old history go, down to HISTORY events; if
-- the log is still full, its oldest event goes, lost to the handlers if they
-- had not had it.
function Dispatch:_make_room(seq)
  local first, nxt, cap = self._first, self._next, self._cap
  local keep = math.max(first, math.min(nxt, seq - HISTORY))  -- the first to keep
  if seq - keep >= cap then keep = seq - cap + 1 end
  self:_let_go(keep)
  if keep > nxt then  -- the handlers had not had these
    self._next = keep
    if #self._handlers > 0 then  -- with no handler, nobody lost them
      local stats = self._stats
      for _ = nxt, keep - 1 do
        stats.overflow = stats.overflow + 1
        overflowed(self._p.report, stats.overflow, "the handlers' event queue", self._p.max_queue)
      end
    end
  end
end

-- Drop the log's events before seq keep.
function Dispatch:_let_go(keep)
  local log, cap, taken, first = self._log, self._cap, self._taken, self._first
  for old = first, keep - 1 do log[old % cap + 1] = false end  -- false: the ring stays an array
  if next(taken) ~= nil then
    for old = first, keep - 1 do taken[old] = nil end
  end
  self._first = keep
end

-- After a delivery: no wait can ask for what the handlers had (see HOLD).
function Dispatch:_forget_delivered()
  if self._next > self._first and next(self._waits) == nil and self._p.now() >= self._hold_until then
    self:_let_go(self._next)
  end
end

--- vm:stop() was called: delivery ends after the handler that runs now,
-- and the dispatch loop (vm:run) looks at stopped().
function Dispatch:stop()
  self._stopped = true
  self._epoch = self._epoch + 1
end

--- true when a stop was asked and not cleared since.
function Dispatch:stopped()
  return self._stopped
end

--- The dispatch loop has seen the stop (or starts afresh): delivery goes on.
function Dispatch:clear_stop()
  self._stopped = false
end

--- Its counters, read-only for others: overflow (events the handlers'
-- full queue dropped) and handler_errors.
function Dispatch:counters()
  return self._stats
end

--- true while events wait for their handlers.
function Dispatch:pending()
  return self._next <= self._last or self._held ~= nil
end

--- How many events wait for their handlers.
function Dispatch:waiting()
  return self._last - self._next + 1
end

-- Names cached by _for_name: the peer names the events, and one inventing
-- names must not grow the cache without bound; when full, it starts afresh.
local MAX_NAMED = 512

-- The handlers that may want events named name, in registration order:
-- those whose name filter takes the name (a name, a glob, a list: tested
-- here once per name, not per event) and those with a function filter.
-- Data filters and function filters are still asked per event (wants).
-- The list is a snapshot: on/off drop the cache instead of changing it.
function Dispatch:_for_name(name)
  local list = {}
  for _, sub in ipairs(self._handlers) do
    local accepts = sub.accepts
    if not accepts or accepts(name) then list[#list + 1] = sub end
  end
  if type(name) == "string" then
    if self._named >= MAX_NAMED then self._by_name, self._named = {}, 0 end
    self._by_name[name], self._named = list, self._named + 1
  end
  return list
end

-- While handlers run, the socket is read again (p.pump, "reading ahead")
-- once they have run this many seconds since the last read ended: a slow
-- handler must not stop the client draining the socket, or the flood piles
-- up in the peer (QEMU's monitor output buffer has no bound) instead of in
-- the bounded queues here, where an overflow is counted.  The time counted
-- starts when a read has returned, never before: decoding a batch can take
-- longer than PUMP_EVERY, and a clock started before it had a quick handler
-- read again after every event, until max_queue overflowed.  A stopped or
-- descheduled process still makes a quick handler look slow now and then;
-- what it read ahead then is handed out before the dispatch loop reads again
-- (the client's loop reads only while fewer than a batch are waiting()), so
-- it never piles up to max_queue.
local PUMP_EVERY = 0.001
local function nothing() end
-- Reading the clock costs more than a quick handler: it is read after every
-- handler while they are slow (PUMP_EVERY passed since the last read), and
-- every 2, 4 ... up to MAX_STRIDE handlers while they are quick.
local MAX_STRIDE = 16

-- The delivery cursor: the event being delivered (cursor[EV]), its
-- handlers (cursor[LIST]) and the one to run next (cursor[NEXT]), with
-- where this call stops (.stop) and when it reads ahead (.pump).  It is a
-- table, not locals, so that after a handler raised, delivery goes on with
-- the next handler; array slots, as they are the cheapest to write.
local EV <const>, LIST <const>, NEXT <const> = 1, 2, 3

-- Hand queued events to their handlers until the one numbered cursor.stop.
-- A filter is user code too: it runs under the same protection.
local function run_handlers(self, vm, cursor)
  local log, cap, by_name, stop = self._log, self._cap, self._by_name, cursor.stop
  local now, pump = self._p.now, self._p.pump or nothing
  local countdown, stride = 1, 1   -- handlers until the clock is read; the next countdown
  local ev, list, from = cursor[EV], cursor[LIST], cursor[NEXT]
  local epoch = self._epoch
  if self._stopped then return end
  while true do
    if not ev then
      local seq = self._next
      if seq > self._last or seq >= stop then return end
      ev, self._next, from = log[seq % cap + 1], seq + 1, 1
      local name = ev.event
      list = by_name[name]
      if not list then list, by_name = self:_for_name(name), self._by_name end
      cursor[EV], cursor[LIST] = ev, list
    end
    for i = from, #list do
      local sub = list[i]
      cursor[NEXT] = i + 1   -- before any user code runs
      if sub.direct or sub:wants(ev) then
        sub.fn(ev, vm)
        if self._epoch ~= epoch then       -- the handler changed the handlers, or stopped
          if self._stopped then return end
          by_name, epoch = self._by_name, self._epoch
        end
        countdown = countdown - 1
        if countdown == 0 then             -- keep reading: see PUMP_EVERY
          local t = now()
          if t >= cursor.pump then
            pump()
            cursor.pump, stride = now() + PUMP_EVERY, 1   -- after the read: see PUMP_EVERY
          elseif stride < MAX_STRIDE then
            stride = stride * 2
          end
          countdown = stride
        end
      end
    end
    ev = nil
  end
end

--- Run the handlers of up to `limit` queued events, in order of arrival and,
-- per event, of registration.  Not re-entrant: from a handler it does nothing.
-- One protected call serves the whole batch; a failing handler is
-- reported and the next one runs.
function Dispatch:deliver(vm, limit)
  if self._delivering or not self:pending() then return end
  self._delivering = true
  -- An event whose handlers a vm:stop() cut short goes on with the next of
  -- them: every handler registered when its delivery began still gets it.
  local cursor = self._held or {}
  cursor.stop, cursor.pump, self._held = self._next + limit, self._p.now() + PUMP_EVERY, nil
  while true do
    local ok, err = xpcall(run_handlers, traceback, self, vm, cursor)
    if ok then break end
    self:_failed("handler for " .. errors.quote(cursor[EV] and cursor[EV].event, 64), err)
  end
  if cursor[EV] and (cursor[NEXT] or 1) <= #cursor[LIST] then self._held = cursor end  -- handlers left for it
  self._delivering = false
  self:_forget_delivered()
end

function Dispatch:_failed(what, err)
  local stats = self._stats
  stats.handler_errors = stats.handler_errors + 1
  local text = tostring(err)
  self._p.report(errors.new("handler", what .. " failed: " .. (text:match("^[^\n]*") or text),
                            { traceback = text }))
end

--- Warn (once per name) about event names nobody knows: a typo waits forever.
function Dispatch:check_names(names)
  for _, name in ipairs(filter.exact_names(names)) do
    local why = not self._warned[name] and self._p.unknown_name(name)
    if why then
      self._warned[name] = true
      self._p.report(errors.new("usage", why, { event = name }))
    end
  end
end

--- " (why)" for the first suspicious name in a filter, for timeout messages.
function Dispatch:hint(names)
  for _, name in ipairs(filter.exact_names(names)) do
    local why = self._p.unknown_name(name)
    if why then return " (" .. why .. ")" end
  end
  return ""
end

-- {==================== handlers

local Subscription = { __name = "qmp.Subscription" }
Subscription.__index = Subscription

-- Whether the handler runs for ev, one of the events its name filter takes
-- (see _for_name): active, and its per-event check, if any, takes it; a once
-- handler goes as it is chosen.  (sub.direct: active, no check, not once.)
function Subscription:wants(ev)
  local check = self.check
  if not (self.active and (check == nil or check(ev))) then return false end
  if self.once then self:off() end
  return true
end

--- Remove the handler; idempotent, safe from inside any handler.
function Subscription:off()
  if not self.active then return end
  self.active, self.direct = false, false
  local d = self._dispatch
  d._handlers = without(d._handlers, self)
  d._by_name, d._named, d._epoch = {}, 0, d._epoch + 1
end

--- on(filter, data_filter, fn, once) -> subscription; fn(ev, vm).
function Dispatch:on(names, data, fn, once)
  if fn == nil and type(data) == "function" then data, fn = nil, data end
  if type(fn) ~= "function" then errors.raise("qmp: handler must be a function") end
  -- accepts(name): the name filter, asked once per name (nil: a function
  -- filter); check(ev): what is asked per event (the data filter; with a
  -- function filter, the whole filter), nil when nothing is.
  local accepts = filter.name_test(names)
  local check
  if accepts then check = filter.data(data) else check = filter.compile(names, data) end
  local sub = setmetatable({ _dispatch = self, accepts = accepts, check = check, fn = fn,
                             once = once, active = true, direct = check == nil and not once },
                           Subscription)
  self._handlers = with(self._handlers, sub)
  self._by_name, self._named, self._epoch = {}, 0, self._epoch + 1
  return sub
end

--- How many handlers are registered.
function Dispatch:handlers()
  return #self._handlers
end

-- }==================== handlers

-- {==================== listeners

local Listener = { __name = "qmp.Listener" }
Listener.__index = Listener

function Listener:_offer(ev)
  local ok, matched = pcall(self.match, ev)
  if not ok then return self._d:_failed("listener filter (" .. self.filter .. ")", matched) end
  if matched and self._queue:push(ev) then
    self.dropped = self.dropped + 1
    overflowed(self._d._p.report, self.dropped, "a listener's queue (" .. self.filter .. ")", self._queue.max)
  end
end

--- The next buffered event, or nil when there is none now.
function Listener:next()
  return self._queue:pop()
end

--- The next buffered event, waiting up to timeout seconds (default: the
-- client's timeout) for one: ev | nil, err.
function Listener:wait(timeout)
  errors.check_duration("qmp: listener:wait", "timeout", timeout, { optional = true, infinite = true })
  local q = self._queue
  if q.head <= q.tail then return q:pop() end
  if self.closed then return nil, errors.new("closed", "the listener is closed") end
  timeout = timeout or self._timeout
  local ok, err = self._d._p.await(function() return q.head <= q.tail end, self._d._p.now() + timeout)
  if ok then return q:pop() end
  return nil, err or errors.new("timeout", ("no %s within %g s%s"):format(self.filter, timeout,
                                                                        self._d:hint(self.names)))
end

--- Buffered events not yet taken.
function Listener:size()
  return self._queue:size()
end

--- Stop buffering; idempotent.  Events already buffered stay readable.
function Listener:close()
  if self.closed then return end
  self.closed = true
  local d = self._d
  d._listeners = weak_set(d._listeners, nil, self)
end
Listener.__close = Listener.close

function Listener:__tostring()
  return ("qmp.Listener (%s, %d buffered%s)"):format(self.filter, self._queue:size(),
                                                     self.closed and ", closed" or "")
end

--- listen(filter, data_filter, max_queue, timeout) -> listener
function Dispatch:listen(names, data, max, timeout)
  local l = setmetatable({ _d = self, match = filter.compile(names, data), names = names,
                           filter = filter.describe(names, data), dropped = 0, closed = false,
                           _queue = new_queue(max or self._p.max_queue), _timeout = timeout },
                         Listener)
  self:check_names(names)
  self._listeners = weak_set(self._listeners, l)
  return l
end

-- }==================== listeners

-- {==================== waits

local function window_of(self)
  return self._windows[running()] or self._window
end

--- A command is being sent (by the running coroutine): vm:wait looks only
-- at events that arrive from now on.
function Dispatch:mark_command()
  self._window = self._last
  self._windows[running()] = self._last
  self._hold_until = self._p.now() + HOLD
end

--- The running coroutine starts (true) or ends (false) a vm:wait: what
-- arrives meanwhile stays for it.
function Dispatch:waiting_now(on)
  self._waits[running()] = on or nil
end

--- The first event matching since the running coroutine's last command that
-- no wait returned yet; it is marked returned.  nil when there is none.
function Dispatch:take(match)
  local log, taken = self._log, self._taken
  for seq = math.max(window_of(self) + 1, self._first), self._last do
    local ev = log[seq % self._cap + 1]
    if not taken[seq] and match(ev) then
      taken[seq] = true
      return ev
    end
  end
end

--- true when an event matching came before the running coroutine's last command.
function Dispatch:matched_before(match)
  local log = self._log
  for seq = self._first, math.min(window_of(self), self._last) do
    if match(log[seq % self._cap + 1]) then return true end
  end
  return false
end

-- }==================== waits

-- {==================== timers

local Timer = { __name = "qmp.Timer" }
Timer.__index = Timer

--- Cancel the timer if it has not fired yet.
function Timer:cancel()
  self.active = false
end

--- Call fn(vm) after seconds, from the dispatch loop.
function Dispatch:after(seconds, fn)
  errors.check_duration("qmp: after", "seconds", seconds)   -- math.huge would never fire
  if type(fn) ~= "function" then errors.raise("qmp: after: callback must be a function") end
  local t = setmetatable({ due = self._p.now() + seconds, fn = fn, active = true }, Timer)
  local timers = self._timers
  local i = #timers
  while i > 0 and timers[i].due > t.due do i = i - 1 end  -- keep them sorted by due time
  table.insert(timers, i + 1, t)
  return t
end

--- Run the timers that are due.
function Dispatch:run_timers(vm)
  local timers = self._timers
  while timers[1] do
    local t = timers[1]
    if not t.active then
      table.remove(timers, 1)
    elseif t.due <= self._p.now() then
      table.remove(timers, 1)
      t.active = false
      local ok, err = xpcall(t.fn, traceback, vm)
      if not ok then self:_failed("timer", err) end
    else
      return
    end
  end
end

--- Seconds until the next active timer, or nil.
function Dispatch:next_due()
  for _, t in ipairs(self._timers) do
    if t.active then return math.max(0, t.due - self._p.now()) end
  end
end

-- }==================== timers

return Dispatch
