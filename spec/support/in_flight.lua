-- Several commands in flight at once on one connection, without a scheduler:
-- connect with { waiter = in_flight.waiter }, then in_flight.execute(vm, names).
local core = require "qmp.core"

local M = {}

-- A plain-function waiter: a command parks by yielding its coroutine, and
-- execute() below resumes it.
function M.waiter() coroutine.yield() end

-- vm:execute(name) for each name, each in a coroutine of its own, resumed
-- in the order of names and polling vm's fd between rounds, until all have
-- returned or seconds (default 5) have passed.  name -> { vm:execute(name) }
function M.execute(vm, names, seconds)
  local results, cos = {}, {}
  for i, name in ipairs(names) do
    cos[i] = coroutine.create(function() results[name] = { vm:execute(name) } end)
  end
  local deadline = core.monotime() + (seconds or 5)
  repeat
    local alive = false
    for _, co in ipairs(cos) do
      if coroutine.status(co) == "suspended" then
        local ok, err = coroutine.resume(co)
        assert(ok, err)
        alive = alive or coroutine.status(co) == "suspended"
      end
    end
    if alive then core.poll({ vm:pollfd() }, 0.01) end
  until not alive or core.monotime() > deadline
  return results
end

return M
