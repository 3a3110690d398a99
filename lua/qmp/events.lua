--- Event types: one metatable per event name.
-- qmp.events[name] is the type (and metatable) of every event of that name;
-- types for names the library has never seen are created on first sight,
-- so every event, known or not, gets a type.  A type is open for extension:
--   function qmp.events.BLOCK_IO_ERROR:is_fatal() ... end
-- Reading ev.member returns a method of the type if there is one, else
-- ev.data.member, else a field of the type (doc, fields, ...).
-- The types of the events in the catalogue (qmp.catalogue) exist from the
-- start, with known = true and the catalogue's doc, since, fields, first,
-- throttled; the others get known = false.
-- Memory: the table holds types weakly.  Catalogue types, and any type a
-- script extends (assigns a method or field to), are pinned; any other type
-- lives as long as one of its events does, so a peer inventing new names
-- cannot grow the heap for good.
local core = require "qmp.core"
local errors = require "qmp.errors"
local text = require "qmp.text"

local type, rawget, rawset, pairs, ipairs, tostring = type, rawget, rawset, pairs, ipairs, tostring
local concat, sort, format, date = table.concat, table.sort, string.format, os.date

local events = core.events  -- shared with the C decoder, which looks types up here

--- Methods every event has (types inherit them).
local Event = {}

--- Seconds since the epoch as a float, or nil when QEMU had no clock (-1)
-- or the timestamp is not two numbers.
function Event:time()
  local ts = rawget(self, "timestamp")
  if type(ts) ~= "table" then return nil end
  local s, us = ts.seconds, ts.microseconds or 0
  if type(s) ~= "number" or type(us) ~= "number" or s < 0 then return nil end
  return s + us / 1e6
end

--- true when this event is named name.
function Event:is(name)
  return rawget(self, "event") == name
end

-- Members an operator looks at first, in this order; the rest follow sorted.
local FIRST = { "device", "id", "node-name", "qom-path", "action", "operation", "status",
                "reason", "guest", "type", "tray-open", "offset", "len" }

--- s as a JSON string for people to read (qmp.text.quote): quotes and
-- backslashes escaped, and every byte a terminal would act on (C0 and C1
-- controls, DEL, bytes that are not UTF-8), so it stays on one line and the
-- peer's control bytes reach no terminal.
local json_string = text.quote

-- A string as tostring(ev) shows it: a plain word as it is, anything else
-- as a JSON string.
local function word(s)
  if s ~= "" and not s:find('[%s="\\%c\128-\255]') then return s end
  return json_string(s)
end

local function scalar(v)
  local t = type(v)
  if t == "string" then return word(v) end
  if t == "table" then
    local ok, json = pcall(core.encode, v)
    return ok and text.json(json) or tostring(v)
  end
  if v == core.null then return "null" end
  return tostring(v)
end

--- "12:00:01.234567 BLOCK_IO_ERROR device=ide0-hd1 operation=write action=stop"
function Event:__tostring()
  local parts, seen = {}, {}
  local t = Event.time(self)
  local secs = t and math.tointeger(t // 1)
  local ok, day = false, nil
  if secs then ok, day = pcall(date, "%Y-%m-%d %H:%M:%S", secs) end   -- a clock far off cannot be shown
  parts[1] = ok and (day .. format(".%06d", math.tointeger(self.timestamp.microseconds or 0) or 0))
             or "(no time)"
  parts[2] = word(tostring(rawget(self, "event")))
  local data = rawget(self, "data")
  if type(data) == "table" then
    local mt = getmetatable(self)
    local first = mt and rawget(mt, "first") or FIRST
    for _, k in ipairs(first) do
      if data[k] ~= nil then parts[#parts + 1] = k .. "=" .. scalar(data[k]); seen[k] = true end
    end
    local rest = {}
    for k in pairs(data) do
      if not seen[k] then rest[#rest + 1] = tostring(k) end
    end
    sort(rest)
    for _, k in ipairs(rest) do parts[#parts + 1] = word(k) .. "=" .. scalar(data[k]) end
  end
  return concat(parts, " ")
end

local pinned = {}  -- name -> type: the types that must never be collected

-- A type a script writes to is pinned: its methods must outlive its events.
local base = { __index = Event }
function base.__newindex(T, k, v)
  pinned[rawget(T, "name")] = T
  rawset(T, k, v)
end

--- Create (or complete) the type for name.  known: part of the catalogue.
local function new_type(name, known)
  local T = rawget(events, name)
  if T then return T end
  T = { name = name, known = known or false, __name = "qmp.event." .. name,
        __tostring = Event.__tostring }
  T.__index = function(ev, k)
    local v = T[k]                     -- the type's methods and fields, then Event's
    if type(v) == "function" then return v end
    local data = rawget(ev, "data")
    if type(data) == "table" then
      local d = data[k]
      if d ~= nil then return d end
    end
    -- A documented member the event lacks reads as nil, not as a field of
    -- the type (NIC_RX_FILTER_CHANGED without "name" must not give T.name).
    local fields = rawget(T, "fields")
    if type(fields) == "table" and fields[k] ~= nil then return nil end
    return v
  end
  rawset(events, name, setmetatable(T, base))
  return T
end

-- A copy of a catalogue value, so that completing a type (vm:schema() adds
-- members and enum values) never alters the catalogue itself.
local function copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy(x) end
  return c
end

-- The catalogue: every event this library documents gets its type now, so
-- pairs(qmp.events) lists them all before any event arrives.
for _, e in ipairs(require "qmp.catalogue") do
  local T = new_type(e.name, true)
  pinned[e.name] = T
  for _, k in ipairs({ "doc", "since", "removed", "fields", "first", "throttled", "throttle" }) do
    T[k] = copy(e[k])
  end
end

-- The decoder asks for events[name]; unknown names get a type on first sight.
setmetatable(events, {
  __mode = "v",
  __index = function(_, name)
    if type(name) == "string" then return new_type(name, false) end
  end,
})

--- true when the catalogue documents an event of this name.
local function known(name)
  local T = pinned[name]
  return T ~= nil and rawget(T, "known") == true
end

--- The names the catalogue documents, sorted.
local function known_names()
  local list = {}
  for name, T in pairs(pinned) do
    if rawget(T, "known") then list[#list + 1] = name end
  end
  sort(list)
  return list
end

--- The lifecycle events the client makes itself, lower case and dotted so
-- that they never meet one of QEMU's names; and the same as a set.  All
-- begin "qmp.": the session (and the core's drain) drop a peer's event
-- named so as malformed, so a peer cannot pass for the client.
local synthetic_names = { "qmp.connected", "qmp.disconnected", "qmp.reconnected" }
local is_synthetic = {}
for _, name in ipairs(synthetic_names) do is_synthetic[name] = true end

-- Timestamps of synthetic events: wall clock, never earlier than the last one.
local last_s, last_us = 0, 0

--- An event made by the library itself (one of synthetic_names), typed,
-- stamped with the wall clock at the moment of the call.
local function synthetic(name, data)
  local s, us = core.walltime()
  if s < last_s or (s == last_s and us < last_us) then s, us = last_s, last_us end
  last_s, last_us = s, us
  return setmetatable({ event = name, data = data or {},
                        timestamp = { seconds = s, microseconds = us } }, events[name])
end

--- Why an event name looks wrong, or nil when the catalogue, the client's
-- own names or live (a connection's parsed schema, optional) know it:
-- "no event is named SHUTDWN in the catalogue; did you mean SHUTDOWN?".
local function unknown_name(name, live)
  if is_synthetic[name] or known(name) then return nil end
  if live and live.events[name] then return nil end
  local candidates = known_names()
  if live then for n in pairs(live.events) do candidates[#candidates + 1] = n end end
  for _, n in ipairs(synthetic_names) do candidates[#candidates + 1] = n end
  local guess = errors.closest(name, candidates)
  guess = guess and text.escape(guess)   -- live names are the peer's
  return format("no event is named %s in the catalogue%s%s", name,
    live and " or in this QEMU's schema" or "", guess and format("; did you mean %s?", guess) or "")
end

-- Helpers of particular types (ev:progress(), ev:by_guest(), ...).
require("qmp.event_methods")(events)

return {
  types = events,
  Event = Event,
  new_type = new_type,
  known = known,
  known_names = known_names,
  unknown_name = unknown_name,
  synthetic = synthetic,
  synthetic_names = synthetic_names,
  is_synthetic = is_synthetic,
  json_string = json_string,
}
