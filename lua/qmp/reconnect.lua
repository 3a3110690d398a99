--- Reconnecting (opts.reconnect): when to try again.
-- A Backoff owns the retry schedule of one client: capped exponential
-- back-off with jitter (a fleet must not retry in lockstep).  It never
-- waits: the client's loop asks due() and left() and starts the attempt.
-- The client emits "qmp.disconnected" / "qmp.reconnected" around it and
-- resyncs with query-status, since events sent while the link was down are
-- lost for good.
local core = require "qmp.core"
local errors = require "qmp.errors"

local min, max, random = math.min, math.max, math.random

local Backoff = {}
Backoff.__index = Backoff

--- Validate opts.reconnect: nil/false, true, or { min = seconds, max = seconds }.
function Backoff.check(r)
  if r == nil or r == false then return nil end
  if r == true then r = {} end
  if type(r) ~= "table" then errors.raise("qmp.connect: reconnect must be true or a table { min =, max = }") end
  errors.check_options("qmp.connect: reconnect", r, { min = true, max = true })
  -- finite: an attempt math.huge seconds away never comes
  local lo = errors.check_duration("qmp.connect", "reconnect.min", r.min or 0.1, { positive = true })
  local hi = errors.check_duration("qmp.connect", "reconnect.max", r.max or 30, { positive = true })
  if hi < lo then errors.raise("qmp.connect: reconnect needs min <= max (seconds)") end
  return { min = lo, max = hi }
end

-- now: the client's clock.
function Backoff.new(spec, now)
  return setmetatable({ min = spec.min, max = spec.max, attempts = 0, next_try = nil,
                        last_error = nil, now = now or core.monotime }, Backoff)
end

--- An attempt failed (or the connection was lost): plan the next one.
function Backoff:failed(err)
  self.last_error = err
  local delay = min(self.max, self.min * 2 ^ self.attempts)
  self.next_try = self.now() + delay * (0.5 + random() * 0.5)
end

--- true when the next attempt should start now.
function Backoff:due()
  return self.next_try ~= nil and self.now() >= self.next_try
end

--- Seconds until the next attempt (0 when due), or nil when none is planned.
function Backoff:left()
  return self.next_try and max(0, self.next_try - self.now())
end

--- An attempt starts now.
function Backoff:started()
  self.next_try = nil
  self.attempts = self.attempts + 1
end

--- The attempt succeeded: returns how many it took, and starts afresh.
function Backoff:succeeded()
  local n = self.attempts
  self.attempts, self.last_error = 0, nil
  return n
end

--- "attempt 3 in 1.2 s; last error: refused: ..." for messages.
function Backoff:describe()
  local left = self:left()
  local text = left and ("next attempt (#%d) in %.1f s"):format(self.attempts + 1, left)
               or ("attempt #%d in progress"):format(self.attempts)
  if self.last_error then text = text .. "; last error: " .. tostring(self.last_error) end
  return text
end

return Backoff
