--- Policies: ready-made reactions to events, built on vm:on and vm:after.
--   local p = qmp.policy.resume_on_io_error(vm, { retries = 3, window = 60 })
--   vm:run()
--   p:off()
-- See README "Policies: resume after I/O error".
local errors = require "qmp.errors"

local type, tostring, format = type, tostring, string.format
local min = math.min

local policy = {}

local Policy = { __name = "qmp.Policy" }
Policy.__index = Policy

--- Stop the policy: remove its subscriptions and cancel pending resumes.
-- Idempotent.
function Policy:off()
  if not self.active then return end
  self.active = false
  for _, sub in ipairs(self._subs) do sub:off() end
  for t in pairs(self._timers) do t:cancel() end
  self._timers = {}
  for _, st in pairs(self.state) do st.pending = nil end
end

local function present(v)
  return type(v) == "string" and v ~= "" and v or nil
end

-- The device an error is about: qom-path, else node-name, else device.
-- (QEMU sends device = "" for -blockdev nodes.)
local function device_key(ev)
  return present(ev["qom-path"]) or present(ev["node-name"]) or present(ev.device) or "?"
end

-- The peer's text in a log line: one plain line, 64 bytes at most.
local function shown(v)
  return errors.quote(v, 64)
end

local OPTIONS = { retries = true, window = true, delay = true, backoff = true, max_delay = true,
                  on_give_up = true, on_resume = true, log = true }

local WHERE = "qmp.policy.resume_on_io_error"

local function check_number(opts, name, default, lowest, integer)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or not (v >= lowest and v < math.huge)   -- NaN fails both
     or (integer and math.type(v) ~= "integer") then
    errors.raise(("%s: %s must be %s >= %s"):format(WHERE, name, integer and "an integer" or "a finite number",
                                                    tostring(lowest)))
  end
  return v
end

-- Seconds: math.huge is taken as "for ever" for the window only; a delay
-- that never ends would never resume.
local function check_seconds(opts, name, default, infinite)
  local v = opts[name]
  if v == nil then v = default end
  return errors.check_duration(WHERE, name, v, { infinite = infinite })
end

local function check_function(opts, name)
  local v = opts[name]
  if v ~= nil and type(v) ~= "function" then
    errors.raise(("qmp.policy.resume_on_io_error: %s must be a function"):format(name))
  end
  return v
end

-- Report a failed command through vm.on_error; never raise.  The message
-- is kept to one short line (QEMU's error text could be megabytes); the
-- whole error is err.cause.  A QEMU error's message already starts with
-- the command's name: it is not said twice.
local function report(vm, what, err)
  local text = tostring(err and err.message or err)
  if text:sub(1, #what + 2) ~= what .. ": " then text = what .. ": " .. text end
  local message = "resume_on_io_error: " .. text
  message = errors.quote(message, 200)
  vm:report(errors.new(err and err.kind or "io", message, { cause = err }))
end

--- Resume a VM that an I/O error paused, a bounded number of times.
-- On BLOCK_IO_ERROR with action "stop", wait delay * backoff^(n-1) seconds
-- (n = resumes of that device within the last `window` seconds, this one
-- included; at most max_delay), check that the pause is still the I/O
-- error's and send cont.  The pause is someone else's (and the VM is left
-- alone) when, during the delay, the VM was resumed (RESUME), stopped again
-- (a STOP after the error's own), `stop` was sent through this client, or
-- query-status no longer says "io-error".  After `retries` resumes of one device within the window, give
-- up: call on_give_up(ev, vm) once and leave the VM paused.
-- opts: retries (3), window (60), delay (1), backoff (2), max_delay (300),
--       on_give_up(ev, vm), on_resume(ev, vm, attempt), log(line).
-- Returns a handle: p:off(); p.resumes, p.give_ups, p.errors_seen; p.state.
function policy.resume_on_io_error(vm, opts)
  if type(vm) ~= "table" or type(vm.on) ~= "function" then
    errors.raise("qmp.policy.resume_on_io_error: expected a client")
  end
  opts = errors.check_options("qmp.policy.resume_on_io_error", opts, OPTIONS)
  local retries = check_number(opts, "retries", 3, 0, true)
  local window = check_seconds(opts, "window", 60, true)
  local delay = check_seconds(opts, "delay", 1)
  local backoff = check_number(opts, "backoff", 2, 1)
  local max_delay = check_seconds(opts, "max_delay", 300)
  local on_give_up = check_function(opts, "on_give_up")
  local on_resume = check_function(opts, "on_resume")
  local log = check_function(opts, "log") or function() end

  local p = setmetatable({
    active = true,
    resumes = 0,      -- cont commands sent and accepted
    give_ups = 0,     -- give-up episodes
    errors_seen = 0,  -- BLOCK_IO_ERROR events with action "stop"
    state = {},       -- per device key: { times = {...}, pending = timer, gave_up = bool, errors = n }
    _timers = {},
    _subs = {},
  }, Policy)

  local function state_of(key)
    local st = p.state[key]
    if not st then
      st = { times = {}, pending = nil, gave_up = false, errors = 0 }
      p.state[key] = st
    end
    return st
  end

  -- Drop resume times older than the window; returns how many remain.
  local function recent(st, now)
    local kept = {}
    for _, t in ipairs(st.times) do
      if now - t < window then kept[#kept + 1] = t end
    end
    st.times = kept
    return #kept
  end

  -- Forget a scheduled resume: the pause is no longer the error's.
  local function cancel(key, st, why)
    if not st.pending then return end
    st.pending:cancel()
    p._timers[st.pending] = nil
    st.pending = nil
    log(format("%s: not resuming: %s", shown(key), why))
  end

  -- An operator's stop went out through this client since the error.
  local function stops_sent()
    return vm:commands_sent("stop") + vm:commands_sent("hmp stop")
  end

  local function stopped_here(key, st)
    if stops_sent() == st.stops then return false end
    log(format("%s: not resuming: stop was sent through this client during the delay", shown(key)))
    return true
  end

  local function resume(key, st, ev, attempt, timer)
    p._timers[timer] = nil
    st.pending = nil
    if not p.active then return end
    if stopped_here(key, st) then return end
    local status, err = vm:execute("query-status")
    if not status then report(vm, "query-status", err); return end
    local now = type(status) == "table" and status.status or nil   -- the reply is the peer's
    if now ~= "io-error" then
      now = type(now) == "string" and '"' .. shown(now) .. '"' or "unknown (query-status gave none)"
      log(format("%s: not resuming: VM status is %s, not \"io-error\"", shown(key), now))
      return
    end
    if stopped_here(key, st) then return end  -- sent while query-status was in flight
    local ok, cerr = vm:execute("cont")
    if not ok then report(vm, "cont", cerr); return end
    st.times[#st.times + 1] = vm:now()
    p.resumes = p.resumes + 1
    log(format("%s: cont sent (attempt %d of %d)", shown(key), attempt, retries))
    if on_resume then on_resume(ev, vm, attempt) end
  end

  local function on_error(ev)
    if ev.action ~= "stop" then return end
    p.errors_seen = p.errors_seen + 1
    local key = device_key(ev)
    local st = state_of(key)
    st.errors = st.errors + 1
    local what = shown(ev.operation or "?") .. (ev.nospace == true and ", no space" or "")
    if st.pending then return end            -- one resume already scheduled for this pause
    local n = recent(st, vm:now()) + 1
    if n > retries then
      if not st.gave_up then
        st.gave_up = true
        p.give_ups = p.give_ups + 1
        log(format("giving up: %s: I/O error (%s) after %d resume%s within %g s; VM left paused",
                   shown(key), what, retries, retries == 1 and "" or "s", window))
        if on_give_up then on_give_up(ev, vm) end
      end
      return
    end
    local wait = delay > 0 and min(delay * backoff ^ (n - 1), max_delay) or 0   -- never 0 * inf
    log(format("%s: I/O error (%s), VM paused; resuming in %s s (attempt %d of %d)",
               shown(key), what, format(wait < 1 and "%.2f" or "%.1f", wait), n, retries))
    local timer
    timer = vm:after(wait, function() resume(key, st, ev, n, timer) end)
    st.pending = timer
    st.stopped = false                   -- the error's own STOP is still to come
    st.stops = stops_sent()
    p._timers[timer] = true
  end

  p._subs[1] = vm:on("BLOCK_IO_ERROR", on_error)
  -- The first STOP after the error is the error's pause; another is someone else's.
  p._subs[2] = vm:on("STOP", function()
    for key, st in pairs(p.state) do
      if st.pending then
        if st.stopped then cancel(key, st, "the VM was stopped again during the delay") end
        st.stopped = true
      end
    end
  end)
  -- Someone resumed the VM: not ours to resume any more; after a give-up,
  -- a new error starts a new episode.
  p._subs[3] = vm:on("RESUME", function()
    for key, st in pairs(p.state) do
      cancel(key, st, "the VM was resumed by someone else")
      st.gave_up = false
    end
  end)
  return p
end

return policy
