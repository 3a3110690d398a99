--- One poll loop for many monitor connections.
--   local loop = qmp.loop{ vm1, vm2 }
--   loop:on("SHUTDOWN", function(ev, vm) print(vm.name, ev.reason) end)
--   loop:run{ timeout = 60 }
-- Each turn waits once, in a single poll() over every VM's fd (for what it
-- asks: "r", or "w" while connecting), then steps (vm:step: progress the
-- connection, run due timers, dispatch) the VMs that are ready or due.  No
-- step waits, so a dead, slow or reconnecting VM never stalls the others.
-- Handlers run as with vm:run: one at a time, in plain Lua.  A VM that
-- closes for good leaves the loop and is reported through loop.on_close;
-- the others go on.
local core = require "qmp.core"
local errors = require "qmp.errors"

local type, ipairs, pairs, setmetatable = type, ipairs, pairs, setmetatable
local raise = errors.raise
local monotime, min, huge = core.monotime, math.min, math.huge

local Loop = { __name = "qmp.Loop" }
Loop.__index = Loop

local FleetSubscription = { __name = "qmp.FleetSubscription" }
FleetSubscription.__index = FleetSubscription

local function check_vm(vm, method)
  if type(vm) ~= "table" or type(vm.step) ~= "function" or type(vm.pollfd) ~= "function" then
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

--- qmp.loop([vms]) -> loop.  vms: a list of clients (qmp.connect).
local function new(vms)
  if vms ~= nil and type(vms) ~= "table" then raise("qmp.loop: expected a list of clients") end
  local loop = setmetatable({
    on_close = nil,   -- function(vm, err): a VM closed and left the loop
    _vms = {},        -- members, in order of addition
    _member = {},     -- vm -> true
    _fleet = {},      -- fleet subscriptions, in registration order
    _stop = false,
    _current = nil,   -- the VM being stepped, for Loop:stop()
  }, Loop)
  for _, vm in ipairs(vms or {}) do
    check_vm(vm, "new")
    loop:add(vm)
  end
  return loop
end

--- Add a VM; it gets every fleet handler.  Adding a member again does nothing.
-- Returns the loop.
function Loop:add(vm)
  check_vm(vm, "add")
  if self._member[vm] then return self end
  self._member[vm] = true
  self._vms[#self._vms + 1] = vm
  for _, fleet in ipairs(self._fleet) do attach(fleet, vm) end
  return self
end

--- Take a VM out of the loop, with its fleet handlers (its own handlers
-- stay).  The connection stays open.  true if it was a member.
function Loop:remove(vm)
  if not self._member[vm] then return false end
  self._member[vm] = nil
  local list = {}   -- a new list: a run in progress keeps its snapshot
  for _, v in ipairs(self._vms) do
    if v ~= vm then list[#list + 1] = v end
  end
  self._vms = list
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
  local list = {}
  for i, vm in ipairs(self._vms) do list[i] = vm end
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
  for _, vm in ipairs(self._vms) do attach(fleet, vm) end
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

-- Step one VM; a VM that closed leaves the loop and is reported.
local function step(loop, vm)
  loop._current = vm
  local ok, err = vm:step()
  loop._current = nil
  if not ok and loop._member[vm] then
    loop:remove(vm)
    local on_close = loop.on_close
    if on_close then on_close(vm, err) end
  end
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
  local ready = {}   -- vm -> true: its fd was ready at the last poll
  local due = {}     -- vm -> when it has work without its fd (from its timeout())
  self._stop = false
  while true do
    local now = monotime()
    for _, vm in ipairs(self._vms) do   -- a snapshot: add/remove replace the list
      if self._stop then break end
      local t = due[vm]
      if t == nil then t = vm:timeout(); t = t and now + t or huge end  -- new in the loop
      if self._member[vm] and (ready[vm] or t <= now) then step(self, vm) end
    end
    if self._stop or (done and done(self)) then
      self._stop = false
      return true
    end
    local vms = self._vms
    if #vms == 0 then return nil, errors.new("closed", "qmp.loop: no VM left") end
    local wait = deadline - monotime()
    if wait <= 0 then
      return nil, errors.new("timeout", ("loop: %g s passed"):format(timeout))
    end
    local fds, modes = {}, {}
    now = monotime()
    for i, vm in ipairs(vms) do
      fds[i], modes[i] = vm:pollfd(), vm:events()
      local t = vm:timeout()
      if t then wait = min(wait, t) end
      due[vm] = t and now + t or huge
    end
    local list, err = core.poll(fds, wait < huge and wait or nil, modes)
    if not list then return nil, err end
    ready = {}
    for _, i in ipairs(list) do ready[vms[i]] = true end
  end
end

return new
