--- The end-to-end contenders: a qmp client and the luasocket + lua-cjson
-- client a Lua user would write without it.  Each connects to a peer that
-- greets, answers qmp_capabilities and then blasts events until it closes,
-- and counts the events its handler saw.  Returns count, stats.
-- opts (both optional): ready() runs once negotiated, before any event;
-- every = k with tick(count) runs tick from the handler every k events.
local M = {}

local function counter(opts)
  local n = 0
  local every, tick = opts.every, opts.tick
  local handler
  if tick then
    handler = function()
      n = n + 1
      if n % every == 0 then tick(n) end
    end
  else
    handler = function() n = n + 1 end
  end
  return handler, function() return n end
end

--- qmp: vm:on("*") under vm:run().  opts.events: an interest set (a list);
-- opts.max_queue, opts.clock: the client's (default: the library's).
function M.qmp(path, opts)
  opts = opts or {}
  local qmp = require "qmp"
  local vm = assert(qmp.connect(path, { timeout = 30, events = opts.events, max_queue = opts.max_queue,
                                        clock = opts.clock }))
  local handler, count = counter(opts)
  vm:on("*", handler)
  if opts.ready then opts.ready() end
  local _, err = vm:run()
  assert(err and err.kind == "closed", "run ended with " .. tostring(err))
  vm:close()
  return count(), vm.stats
end

--- luasocket receive("*l") + cjson.decode + setmetatable (a type table per
-- name) + a handler call.  opts.interest: { NAME = true }: the client must
-- decode every line to see the name, then skips the others.
function M.luasocket(path, opts)
  opts = opts or {}
  local unix = require "socket.unix"
  local decode = require("cjson").decode
  local setmetatable, interest = setmetatable, opts.interest
  local c = assert(unix.stream())
  assert(c:connect(path))
  c:settimeout(30)
  local function message()
    local line = assert(c:receive("*l"))
    return decode(line)
  end
  assert(message().QMP, "no greeting")
  assert(c:send('{"execute": "qmp_capabilities"}\n'))
  assert(message()["return"], "negotiation failed")
  local handler, count = counter(opts)
  if opts.ready then opts.ready() end
  local types, skipped = {}, 0
  while true do
    local line = c:receive("*l")
    if not line then break end
    local msg = decode(line)
    local name = msg.event
    if name then
      if interest and not interest[name] then
        skipped = skipped + 1
      else
        local T = types[name]
        if not T then
          T = { name = name }
          T.__index = T
          types[name] = T
        end
        handler(setmetatable(msg, T))
      end
    end
  end
  c:close()
  return count(), { skipped = skipped }
end

return M
