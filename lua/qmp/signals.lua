--- qmp.signals: SIGINT, SIGTERM and SIGHUP as world events, for a program
-- that blocks in the library and wants to end cleanly.
--   qmp.signals.catch("INT", "TERM")
--   local ok, err = loop:run()          -- nil, err (kind "interrupted") on Ctrl-C
--   if err and err.kind == "interrupted" then ... end
--   local name, signo = qmp.signals.take()  -- "SIGINT", 2
--   os.exit(128 + signo)                      -- 130, as a shell reports it
-- Once a caught signal is pending, every blocking wait of the library
-- (connect, execute, wait, l:wait, run, loop:run) returns nil, err with
-- kind "interrupted" (err.signal = "SIGINT") at once, without waiting,
-- until take() takes the signal: so a handler or a cleanup step cannot
-- hang the way out.  Without catch, nothing changes.  Under a scheduler
-- (opts.waiter) the scheduler's own signal handling applies.
local core = require "qmp.core"
local errors = require "qmp.errors"

local signals = {}

local KNOWN = { INT = true, TERM = true, HUP = true }

--- Catch these signals ("INT", "TERM", "HUP", or "SIGINT"...; default all
-- three): true | nil, err (kind io).
function signals.catch(...)
  local list = table.pack(...)
  if list.n == 0 then list = { "INT", "TERM", "HUP", n = 3 } end
  for i = 1, list.n do
    local name = list[i]
    if type(name) ~= "string" or not KNOWN[name:gsub("^SIG", "")] then
      errors.raise(("qmp.signals.catch: %s is not a signal it catches (INT, TERM, HUP)"):format(tostring(name)))
    end
  end
  list.n = nil
  return core.catch_signals(list)
end

--- Give the caught signals their previous handlers back.
signals.release = core.release_signals

--- The pending signal's name ("SIGINT") and number, or nil.
signals.pending = core.signal_pending

--- The pending signal's name and number, or nil; it is no longer pending.
signals.take = core.take_signal

--- The "interrupted" error for the pending signal, or nil.
function signals.error()
  local name = core.signal_pending()
  if name then return errors.new("interrupted", "interrupted by " .. name, { signal = name }) end
end

return signals
