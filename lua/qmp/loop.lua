--- One loop for many monitor connections.
--   local loop = qmp.loop{ vm1, vm2 }
--   loop:on("SHUTDOWN", function(ev, vm) print(vm.name, ev.reason) end)
--   loop:run{ timeout = 60 }
-- The loop keeps every client's socket registered in a poller of the core
-- (epoll on Linux, else poll()) and its next timer in a heap, and changes
-- a registration only when that client's fd, interest ("r", "w", "rw") or
-- timer changes: after a step, or when the client tells (vm:watch) that a
-- command, a timer or a close changed it.  A turn waits once, then steps
-- (vm:step: progress the connection, run due timers, dispatch) only the
-- clients that are ready or due, so an event costs the same in a loop of
-- one client as in a loop of ten thousand idle ones, and a client waiting
-- to reconnect holds no fd in the poller.  No step waits, so a dead, slow
-- or reconnecting VM never stalls the others.  Handlers run as with
-- vm:run: one at a time, in plain Lua.  A VM that closes for good leaves
-- the loop and is reported through loop.on_close; the others go on.
local core = require "qmp.core"
local errors = require "qmp.errors"
local heap = require "qmp.heap"

local type, ipairs, pairs, setmetatable = type, ipairs, pairs, setmetatable
local raise = errors.raise
local monotime, min, max, huge = core.monotime, math.min, math.max, math.huge

local Loop = { __name = "qmp.Loop" }
Loop.__index = Loop

local FleetSubscription = { __name = "qmp.FleetSubscription" }
FleetSubscription.__index = FleetSubscription

local function check_vm(vm, method)
  if type(vm) ~= "table" or type(vm.step) ~= "function" or type(vm.pollfd) ~= "function"
      or type(vm.watch) ~= "function" then
    raise(("qmp.loop: %s: expected a qmp client"):format(method))
  end
end

--- Remove the handler from every VM of the loop; idempotent.  Safe from
-- inside any handler.
function FleetSubscription:off()
  if not self.active then return end
  self.active = false
  for _, sub in pairs(self.subs) do sub:off() end
  self.subs = {}
  local loop, list = self.loop, {}
  for _, f in ipairs(loop._fleet) do
    if f ~= self then list[#list + 1] = f end
  end
  loop._fleet = list
end

-- Subscribe one fleet handler on one VM.
local function attach(fleet, vm)
  fleet.subs[vm] = vm:on(fleet.names, fleet.data, fleet.fn)
end

-- {==================== registration
-- Each member has a record: the fd and interest registered for it, the
-- time of its entry in the timer heap (due) and that entry's tag (seq: an
-- entry whose tag is not the record's is stale), its place in _order and
-- whether it waits in _dirty.

-- Look at a client again: its registration and its timer.
local function refresh(loop, vm, rec, now)
  rec.dirty = false
  local poller, owner = loop._poller, loop._owner
  local fd = vm:pollfd()
  if fd ~= rec.fd then
    local old = rec.fd
    if old >= 0 and owner[old] == vm then   -- a closed fd may already serve another client
      poller:unset(old)
      owner[old] = nil
    end
    rec.fd, rec.interest = fd, nil
  end
  local t = vm:timeout()
  if fd >= 0 then
    local interest = vm:events()
    if interest ~= rec.interest or owner[fd] ~= vm then
      if poller:set(fd, interest) then
        owner[fd], rec.interest = vm, interest
      else
        t = 0   -- a closed fd: the step finds out and tells
      end
    end
  end
  if t == nil then
    if rec.due then rec.seq, rec.due = rec.seq + 1, nil end
    return
  end
  local at = now + max(t, 0)
  if rec.due == nil or at < rec.due then   -- an earlier entry stays: it only wakes the client early
    rec.seq, rec.due = rec.seq + 1, at
    loop._timers:push(at, vm, rec.seq)
  end
end

local function refresh_dirty(loop)
  local dirty = loop._dirty
  if #dirty == 0 then return end
  loop._dirty = {}
  local member, now = loop._member, monotime()
  for _, vm in ipairs(dirty) do
    local rec = member[vm]
    if rec and rec.dirty then refresh(loop, vm, rec, now) end
  end
end

-- Stale timer entries (a client that moved its timer, or left) are
-- dropped as they come out; when they outnumber the live ones, at once.
local function prune_timers(loop)
  local timers, member = loop._timers, loop._member
  if timers:size() <= 2 * loop._count + 64 then return end
  timers:filter(function(vm, seq)
    local rec = member[vm]
    return rec ~= nil and rec.seq == seq
  end)
end

-- The time of the earliest live timer, or nil.
local function next_due(loop)
  local timers, member = loop._timers, loop._member
  while true do
    local at, vm, seq = timers:peek()
    if not at then return nil end
    local rec = member[vm]
    if rec and rec.seq == seq then return at end
    timers:pop()
  end
end

-- A member's fd, interest or timer may have changed: look at it again
-- before the next wait.
local function notice(loop, vm)
  local rec = loop._member[vm]
  if rec and not rec.dirty then
    rec.dirty = true
    local dirty = loop._dirty
    dirty[#dirty + 1] = vm
  end
end

-- }====================

--- qmp.loop([vms [, opts]]) -> loop.  vms: a list of clients (qmp.connect).
-- opts.backend: "epoll" (the default on Linux) or "poll".
local function new(vms, opts)
  if vms ~= nil and type(vms) ~= "table" then raise("qmp.loop: expected a list of clients") end
  opts = errors.check_options("qmp.loop", opts, { backend = true })
  if opts.backend ~= nil and opts.backend ~= "epoll" and opts.backend ~= "poll" then
    raise("qmp.loop: backend must be \"epoll\" or \"poll\"")
  end
  local poller, err = core.poller(opts.backend)
  if not poller then raise("qmp.loop: " .. tostring(err)) end  -- no fd left for epoll: as socket() would say
  local loop
  loop = setmetatable({
    on_close = nil,   -- function(vm, err): a VM closed and left the loop
    _poller = poller,
    _member = {},     -- vm -> its record (see refresh)
    _order = {},      -- members in order of addition; a place whose record says otherwise is a hole
    _count = 0,       -- members
    _owner = {},      -- fd -> the member registered with it
    _timers = heap.new(),
    _dirty = {},      -- members to look at again before the next wait
    _ready = {},      -- the poller's ready fds (reused)
    _fleet = {},      -- fleet subscriptions, in registration order
    _stop = false,
    _closed = false,
    _current = nil,   -- the VM being stepped, for Loop:stop()
    _notice = function(vm) notice(loop, vm) end,   -- each member's watcher (vm:watch)
  }, Loop)
  for _, vm in ipairs(vms or {}) do
    check_vm(vm, "new")
    loop:add(vm)
  end
  return loop
end

--- Add a VM; it gets every fleet handler.  Adding a member again does
-- nothing.  Returns the loop.
function Loop:add(vm)
  check_vm(vm, "add")
  if self._closed then raise("qmp.loop: add: the loop is closed") end
  if self._member[vm] then return self end
  vm:watch(self._notice)
  local order = self._order
  local rec = { fd = -1, interest = nil, due = nil, seq = 0, dirty = false, place = #order + 1 }
  order[rec.place] = vm
  self._member[vm] = rec
  self._count = self._count + 1
  notice(self, vm)
  for _, fleet in ipairs(self._fleet) do attach(fleet, vm) end
  return self
end

-- Close the holes _order has when more than half of it are holes.
local function compact(loop)
  local order, member = loop._order, loop._member
  if #order <= 2 * loop._count + 16 then return end
  local list = {}
  for i, vm in ipairs(order) do
    local rec = member[vm]
    if rec and rec.place == i then
      list[#list + 1] = vm
      rec.place = #list
    end
  end
  loop._order = list
end

--- Take a VM out of the loop, with its fleet handlers (its own handlers
-- stay).  The connection stays open.  true if it was a member.
function Loop:remove(vm)
  local rec = self._member[vm]
  if not rec then return false end
  if rec.fd >= 0 and self._owner[rec.fd] == vm then
    self._poller:unset(rec.fd)
    self._owner[rec.fd] = nil
  end
  self._member[vm] = nil   -- its timer entries are stale from now on
  self._count = self._count - 1
  vm:unwatch(self._notice)
  compact(self)
  for _, fleet in ipairs(self._fleet) do
    local sub = fleet.subs[vm]
    if sub then
      sub:off()
      fleet.subs[vm] = nil
    end
  end
  return true
end

--- The VMs in the loop, in order of addition (a copy).
function Loop:vms()
  local list, member = {}, self._member
  for i, vm in ipairs(self._order) do
    local rec = member[vm]
    if rec and rec.place == i then list[#list + 1] = vm end
  end
  return list
end

--- loop:on(filter [, data_filter], handler) -> subscription; handler(ev, vm).
-- A fleet handler: registered on every VM in the loop, present and added
-- later.  subscription:off() removes it from all of them.
function Loop:on(names, data, fn)
  if fn == nil and type(data) == "function" then data, fn = nil, data end
  if type(fn) ~= "function" then raise("qmp.loop: handler must be a function") end
  local fleet = setmetatable({ loop = self, names = names, data = data, fn = fn,
                               subs = {}, active = true }, FleetSubscription)
  for _, vm in ipairs(self:vms()) do attach(fleet, vm) end
  local list = {}
  for i, f in ipairs(self._fleet) do list[i] = f end
  list[#list + 1] = fleet
  self._fleet = list
  return fleet
end

--- End loop:run() after the current handler returns; events still queued
-- wait for the next run.
function Loop:stop()
  self._stop = true
  local vm = self._current
  if vm then vm:stop() end  -- ends that VM's dispatch
end

-- Step one VM, to be looked at again before the next wait; a VM that
-- closed leaves the loop and is reported.
local function step(loop, vm)
  loop._current = vm
  local ok, err = vm:step()
  loop._current = nil
  if not ok and loop._member[vm] then
    loop:remove(vm)
    local on_close = loop.on_close
    if on_close then on_close(vm, err) end
  else
    notice(loop, vm)
  end
end

-- Add vm to this turn's list of clients to step, unless it is there already.
local function schedule(due, vm, rec)
  if rec.stepped ~= due then
    rec.stepped = due
    due[#due + 1] = vm
  end
end

-- Wait at most `wait` seconds, then step the clients that are ready or
-- due, each once.  true, or nil, err (interrupted, io).
local function turn(loop, wait)
  local ready = loop._ready
  local n, err = loop._poller:wait(wait, ready)
  if not n then return nil, err end
  local member, owner, now = loop._member, loop._owner, monotime()
  local due = {}   -- the clients to step, each once
  for i = 1, n do
    local vm = owner[ready[i]]
    local rec = vm and member[vm]
    if rec then schedule(due, vm, rec) end
  end
  local timers = loop._timers
  while true do
    local at, vm, seq = timers:peek()
    if not at or at > now then break end
    timers:pop()
    local rec = member[vm]
    if rec and rec.seq == seq then
      rec.due = nil
      schedule(due, vm, rec)
    end
  end
  for _, vm in ipairs(due) do
    if loop._stop then
      notice(loop, vm)   -- its timer entry is gone: look at it again next run
    elseif member[vm] then
      step(loop, vm)
    end
  end
  return true
end

--- Run until loop:stop(), done() returns true, the timeout passes or no VM
-- is left.  Returns true for stop/done; nil, err otherwise (kind "timeout",
-- or "closed" when the last VM left).
-- opts: timeout (seconds, default forever), done (function(loop) -> boolean).
function Loop:run(opts)
  opts = errors.check_options("qmp.loop: run", opts, { timeout = true, done = true })
  local timeout, done = opts.timeout, opts.done
  errors.check_duration("qmp.loop: run", "timeout", timeout, { optional = true, infinite = true })
  if done ~= nil and type(done) ~= "function" then raise("qmp.loop: run: done must be a function") end
  local deadline = timeout and monotime() + timeout or huge
  local turned = false   -- at least one turn before a timeout, as with vm:run
  self._stop = false
  while true do
    refresh_dirty(self)
    if self._stop or (done and done(self)) then
      self._stop = false
      return true
    end
    if self._count == 0 then return nil, errors.new("closed", "qmp.loop: no VM left") end
    local now = monotime()
    if turned and now >= deadline then
      return nil, errors.new("timeout", ("loop: %g s passed"):format(timeout))
    end
    prune_timers(self)
    local wait = min(deadline, next_due(self) or huge) - now
    local ok, err = turn(self, wait < huge and max(wait, 0) or nil)
    if not ok then return nil, err end
    turned = true
  end
end

--- Close the loop's poller; the clients stay open.  A loop is also closed
-- when it is collected.
function Loop:close()
  for _, vm in ipairs(self:vms()) do self:remove(vm) end
  self._poller:close()
  self._closed = true
end
Loop.__close = Loop.close

return new
