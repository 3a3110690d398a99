--- The end-to-end contenders: a qmp client and the luasocket + lua-cjson
-- clients a Lua user would write without it.  Each connects to a peer that
-- greets, answers qmp_capabilities and then blasts events until it closes,
-- and counts the events its handler saw.  Returns count, stats.
-- opts (all optional): ready() runs once negotiated, before any event;
-- every = k with tick(count) runs tick from the handler every k events;
-- interest = { NAME = true } (and events, the same names as a list): only
-- those events go to the handler, the others are counted in stats.skipped.
-- The luasocket clients:
--   luasocket  receive("*l"), cjson.decode of every line (with an interest
--              set it must decode a line to learn its name);
--   careful    receive("*l") with an interest set (required): a plain
--              string.find of each wanted name, quoted, in the line first;
--              only a line that holds one is decoded (its "event" decides);
--   chunked    receive(64 KiB) chunks split at "\n" with string.find, then
--              cjson.decode of each line (row 3's contender, on a socket).
-- Each gives a delivered event a metatable from a table of types by name
-- and calls the handler, as qmp does.
local M = {}

local CHUNK = 64 * 1024

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

-- A luasocket connection, greeted and negotiated line by line.
local function negotiated(path)
  local unix = require "socket.unix"
  local decode = require("cjson").decode
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
  return c
end

-- The contenders' loops are written out in full, each as a careful
-- script would be, without a helper call per event that qmp does not pay.

--- luasocket receive("*l") + cjson.decode + setmetatable + a handler call;
-- with opts.interest, every line is decoded to see its name.
function M.luasocket(path, opts)
  opts = opts or {}
  local decode = require("cjson").decode
  local setmetatable, interest = setmetatable, opts.interest
  local c = negotiated(path)
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

--- As M.luasocket, but a line with none of the wanted names in it (as a
-- JSON string, '"NAME"', found with a plain string.find) is not decoded.
function M.careful(path, opts)
  opts = opts or {}
  local decode = require("cjson").decode
  local find, setmetatable = string.find, setmetatable
  local interest = assert(opts.interest, "careful: an interest set is its point")
  local quoted = {}
  for name in pairs(interest) do quoted[#quoted + 1] = '"' .. name .. '"' end
  local n_quoted = #quoted
  local c = negotiated(path)
  local handler, count = counter(opts)
  if opts.ready then opts.ready() end
  local types, skipped = {}, 0
  while true do
    local line = c:receive("*l")
    if not line then break end
    local found = false
    for i = 1, n_quoted do
      if find(line, quoted[i], 1, true) then
        found = true
        break
      end
    end
    local name
    local msg = found and decode(line)
    if msg then name = msg.event end
    if name and interest[name] then
      local T = types[name]
      if not T then
        T = { name = name }
        T.__index = T
        types[name] = T
      end
      handler(setmetatable(msg, T))
    else
      skipped = skipped + 1   -- not found, or a wanted name in another event's data
    end
  end
  c:close()
  return count(), { skipped = skipped }
end

--- luasocket receive(64 KiB) chunks, split at "\n" with string.find, each
-- line decoded, typed and handed on; with opts.interest, every line is
-- decoded to see its name.
function M.chunked(path, opts)
  opts = opts or {}
  local decode = require("cjson").decode
  local find, sub, setmetatable, interest = string.find, string.sub, setmetatable, opts.interest
  local c = negotiated(path)
  local handler, count = counter(opts)
  if opts.ready then opts.ready() end
  local types, skipped, rest = {}, 0, ""
  while true do
    local chunk, err, partial = c:receive(CHUNK)
    if not chunk then
      assert(err == "closed", err)
      chunk = partial
    end
    local buf = rest .. chunk
    local pos = 1
    while true do
      local nl = find(buf, "\n", pos, true)
      if not nl then break end
      local msg = decode(sub(buf, pos, nl))
      pos = nl + 1
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
    rest = sub(buf, pos)
    if err then break end
  end
  assert(rest == "", "the stream ended inside a message")
  c:close()
  return count(), { skipped = skipped }
end

return M
