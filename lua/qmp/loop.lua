--- One poll loop for many monitor connections.
--   local loop = qmp.loop{ vm1, vm2 }
--   loop:on("SHUTDOWN", function(ev, vm) print(vm.name, ev.reason) end)
--   loop:run{ timeout = 60 }
-- Each turn waits once, in a single poll() over every VM's fd, then steps
-- (vm:step: read, run due timers, dispatch) the VMs that are ready or due.
-- Handlers run as with vm:run: one at a time, in plain Lua.  A VM whose
-- connection closes leaves the loop and is reported through loop.on_close;
-- the others go on.
local core = require "qmp.core"
local errors = require "qmp.errors"

local type, ipairs, pairs, error, setmetatable = type, ipairs, pairs, error, setmetatable
local monotime, min, huge = core.monotime, math.min, math.huge

local Loop = { __name = "qmp.Loop" }
Loop.__index = Loop

local FleetSubscription = { __name = "qmp.FleetSubscription" }
FleetSubscription.__index = FleetSubscription

local function check_vm(vm, method)
  if type(vm) ~= "table" or type(vm.step) ~= "function" or type(vm.pollfd) ~= "function" then
    error(("qmp.loop: %s: expected a qmp client"):format(method), 3)
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
  if vms ~= nil and type(vms) ~= "table" then error("qmp.loop: expected a list of clients", 2) end
  local loop = setmetatable({
    on_close = nil,   -- function(vm, err): a VM closed and left the loop
    _vms = {},        -- members, in order of addition
    _member = {},     -- vm -> true
    _fresh = {},      -- vm -> true: step once before the first wait
    _fleet = {},      -- fleet subscriptions, in registration order
    _stop = false,
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
  self._fresh[vm] = true   -- it may hold data already read (greeting time)
  self._vms[#self._vms + 1] = vm
  for _, fleet in ipairs(self._fleet) do attach(fleet, vm) end
  return self
end

--- Take a VM out of the loop, with its fleet handlers (its own handlers
-- stay).  The connection stays open.  true if it was a member.
function Loop:remove(vm)
  if not self._member[vm] then return false end
  self._member[vm], self._fresh[vm] = nil, nil
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
  if type(fn) ~= "function" then error("qmp.loop: handler must be a function", 2) end
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
  if vm then vm._stop = true end  -- ends that VM's dispatch, as vm:stop() would
end

-- Step one VM; a VM that closed leaves the loop and is reported.
local function step(loop, vm)
  loop._fresh[vm] = nil
  local replies = vm.stats.replies
  loop._current = vm
  local ok, err = vm:step()
  loop._current = nil
  vm._stop = false
  -- A handler ran a command: bytes read with its reply may wait in the
  -- decoder, where poll() cannot see them.
  if ok and vm.stats.replies ~= replies then loop._fresh[vm] = true end
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
  if opts ~= nil and type(opts) ~= "table" then error("qmp.loop: run: options must be a table", 2) end
  opts = opts or {}
  local timeout, done = opts.timeout, opts.done
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("qmp.loop: run: timeout must be a non-negative number", 2)
  end
  if done ~= nil and type(done) ~= "function" then error("qmp.loop: run: done must be a function", 2) end
  local deadline = timeout and monotime() + timeout or huge
  local ready = {}   -- vm -> true: its fd was ready at the last poll
  self._stop = false
  while true do
    for _, vm in ipairs(self._vms) do   -- a snapshot: add/remove replace the list
      if self._stop then break end
      if self._member[vm] then
        local t = vm:timeout()
        if ready[vm] or self._fresh[vm] or (t and t <= 0)
           or (t == nil and vm:pollfd() < 0) then  -- closed by its owner: let step say so
          step(self, vm)
        end
      end
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
    local fds = {}
    for i, vm in ipairs(vms) do
      fds[i] = vm:pollfd()
      local t = vm:timeout()
      if t then wait = min(wait, t) end
    end
    local list, err = core.poll(fds, wait < huge and wait or nil)
    if not list then return nil, err end
    ready = {}
    for _, i in ipairs(list) do ready[vms[i]] = true end
  end
end

return new
