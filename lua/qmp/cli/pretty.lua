--- Values and events for people: what the shell prints.
--
--   pretty.format(vm:execute("query-status"))
--   --> {"running": false, "singlestep": false, "status": "prelaunch"}
--
-- JSON-like: strings quoted, keys sorted, qmp.null as null, qmp.uint64 as its
-- exact digits, [] for an empty array (qmp.array) and {} for an empty object.
-- An array or object of scalars stays on one line when it fits the width;
-- anything else takes one member a line, indented.  Not strict JSON: Lua
-- values JSON lacks show as Lua writes them (nil, functions, inf, tables with
-- non-string keys as [1]), a cycle as <cycle>.  Strings and keys are the
-- peer's: written as qmp.text.quote does, so its control bytes (C0, C1,
-- DEL) show escaped (\u001b) and bytes that are not UTF-8 as \xNN.
-- Colour (ANSI) only when asked: keys, strings, numbers and literals differ.
local core = require "qmp.core"
local errors = require "qmp.errors"
local events = require "qmp.events"
local escaping = require "qmp.text"
local Event, quote, escape = events.Event, escaping.quote, escaping.escape

local type, pairs, tostring, getmetatable, rawlen = type, pairs, tostring, getmetatable, rawlen
local concat, sort, rep = table.concat, table.sort, string.rep
local mathtype, null, array_mt, uint64_mt = math.type, core.null, core.array_mt, core.uint64_mt

local pretty = {}

local PAINT = {
  key = "\27[34m",      -- blue
  string = "\27[32m",   -- green
  number = "\27[36m",   -- cyan
  literal = "\27[35m",  -- magenta: true, false, null, nil
  other = "\27[33m",    -- yellow: functions, <cycle>, ...
  time = "\27[2m",      -- dim
  name = "\27[1m",      -- bold
}
local RESET = "\27[0m"

local function paint(o, what, text)
  if not o.colour then return text end
  return PAINT[what] .. text .. RESET
end

-- The text and colour class of a value that is not a table (or a special one).
local function scalar(v)
  local t = type(v)
  if t == "string" then return quote(v), "string" end
  if t == "number" then
    if mathtype(v) == "integer" then return tostring(v), "number" end
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v), "number" end
    return core.encode(v), "number"  -- reads back the same, never a decimal comma
  end
  if t == "boolean" or t == "nil" then return tostring(v), "literal" end
  if v == null then return "null", "literal" end
  if getmetatable(v) == uint64_mt then return tostring(v), "number" end
  return escape(tostring(v)), "other"   -- a __tostring may say anything
end

-- Keys in a stable order: numbers, then strings (byte order), then the rest.
local RANK = { number = 1, string = 2 }
local function before(a, b)
  local ra, rb = RANK[type(a)] or 3, RANK[type(b)] or 3
  if ra ~= rb then return ra < rb end
  if ra == 3 then return tostring(a) < tostring(b) end
  return a < b
end

-- A table's entries as { key = k or nil (for an array), value = v }, and
-- whether it reads as an array.
local function entries(t)
  local keys, n = {}, 0
  for k in pairs(t) do n = n + 1; keys[n] = k end
  local list = {}
  if getmetatable(t) == array_mt or (n > 0 and n == rawlen(t)) then
    for i = 1, rawlen(t) do list[i] = { value = t[i] } end
    return list, true
  end
  sort(keys, before)
  for i, k in ipairs(keys) do list[i] = { key = k, value = t[k] } end
  return list, false
end

local function is_scalar(v)
  return type(v) ~= "table" or next(v) == nil
end

local render

-- "key": (painted) before a member's value.
local function key_text(o, k)
  local shown = type(k) == "string" and quote(k) or "[" .. escape(tostring(k)) .. "]"
  return paint(o, "key", shown) .. ": ", #shown + 2
end

-- v at nesting depth, starting at column col of its line.
function render(v, o, depth, col, path)
  if type(v) ~= "table" then
    local text, class = scalar(v)
    return paint(o, class, text)
  end
  if path[v] then return paint(o, "other", "<cycle>") end
  local list, array = entries(v)
  local open, close = array and "[" or "{", array and "]" or "}"
  if #list == 0 then return open .. close end

  local flat = true
  for _, e in ipairs(list) do
    if not is_scalar(e.value) then flat = false break end
  end
  if flat then
    local items, length = {}, 2 * #list  -- the brackets, and ", " between items
    for i, e in ipairs(list) do
      local k, klen = "", 0
      if e.key ~= nil then k, klen = key_text(o, e.key) end
      local text, class
      if type(e.value) == "table" then  -- an empty one
        text = getmetatable(e.value) == array_mt and "[]" or "{}"
      else
        text, class = scalar(e.value)
      end
      length = length + klen + #text
      items[i] = k .. (class and paint(o, class, text) or text)
    end
    if col + length <= o.width then return open .. concat(items, ", ") .. close end
  end

  path[v] = true
  local pad = rep(" ", o.indent * (depth + 1))
  local lines = {}
  for i, e in ipairs(list) do
    local k, klen = "", 0
    if e.key ~= nil then k, klen = key_text(o, e.key) end
    lines[i] = pad .. k .. render(e.value, o, depth + 1, #pad + klen, path)
  end
  path[v] = nil
  return open .. "\n" .. concat(lines, ",\n") .. "\n" .. rep(" ", o.indent * depth) .. close
end

local FORMAT_OPTIONS = { colour = true, indent = true, width = true }

--- value as indented, key-sorted, JSON-like text (see the header).
-- opts: colour (false: ANSI colours), indent (2: spaces a level),
-- width (80: the widest line a one-line array or object may make).
function pretty.format(value, opts)
  opts = errors.check_options("pretty.format", opts, FORMAT_OPTIONS)
  local o = { colour = opts.colour == true, indent = opts.indent or 2, width = opts.width or 80 }
  return render(value, o, 0, 0, {})
end

local EVENT_OPTIONS = { colour = true }

--- One readable line for an event, as tostring(ev) writes it:
-- "2026-11-21 18:58:34.450486 BLOCK_IO_ERROR device=ide0-hd1 operation=write action=stop".
-- opts.colour: the time dim, the name bold, the member names coloured.
function pretty.event_line(ev, opts)
  opts = errors.check_options("pretty.event_line", opts, EVENT_OPTIONS)
  local line = Event.__tostring(ev)
  if not opts.colour then return line end
  local o = { colour = true }
  local time, name, rest = line:match("^(%S+ %S+) (%S+)(.*)$")
  if not time then return line end
  -- Colour each member name: a word start outside quotes and JSON, up to "=".
  local out, i, n, depth, in_string = {}, 1, #rest, 0, false
  while i <= n do
    local c = rest:sub(i, i)
    if in_string then
      if c == "\\" then out[#out + 1] = rest:sub(i, i + 1); i = i + 2 goto next end
      if c == '"' then in_string = false end
    elseif c == '"' then in_string = true
    elseif c == "{" or c == "[" then depth = depth + 1
    elseif c == "}" or c == "]" then depth = depth - 1
    elseif c == " " and depth == 0 then
      local key = rest:match("^([^=%s]+)=", i + 1)
      if key then
        out[#out + 1] = " " .. paint(o, "key", key) .. "="
        i = i + 1 + #key + 1
        goto next
      end
    end
    out[#out + 1] = c
    i = i + 1
    ::next::
  end
  return paint(o, "time", time) .. " " .. paint(o, "name", name) .. concat(out)
end

--- "QEMU 7.2.22" from a greeting, whatever its shape: the peer's to send,
-- and a part that is missing or not an integer shows as "?".
function pretty.qemu_version(greeting)
  local qmp = type(greeting) == "table" and greeting.QMP
  local version = type(qmp) == "table" and qmp.version
  local qemu = type(version) == "table" and version.qemu
  local parts = {}
  for i, k in ipairs({ "major", "minor", "micro" }) do
    local n = type(qemu) == "table" and qemu[k]
    parts[i] = mathtype(n) == "integer" and tostring(n) or "?"
  end
  return "QEMU " .. concat(parts, ".")
end

return pretty
