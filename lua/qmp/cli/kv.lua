--- qmp-shell style command lines: `block-job-cancel device=job0 force=true`.
--
--   local name, args = kv.parse('blockdev-add driver=qcow2 node-name=d0 file.driver=file file.filename=a.qcow2')
--   --> "blockdev-add", { driver = "qcow2", ["node-name"] = "d0", file = { driver = "file", filename = "a.qcow2" } }
--
-- A line is the command name, then either key=value words or one JSON
-- object holding all the arguments (`transaction {"actions": [...]}`).
--
-- Values, as in QEMU's qmp-shell: a value that reads as JSON is JSON, anything
-- else is the text as typed.
--   force=true  size=1048576  speed=0.5  bitmap=null  → JSON: boolean, integer, float, qmp.null
--   device=ide0-hd0  filename=/tmp/a.img             → not JSON: the text
--   key=                                             → the empty string
--   password="1234"  name="two words"                → a JSON string (quote digits meant as text)
--   name='two words'                                 → single quotes: the text inside, taken literally
--   actions=[] props={"a": [1, 2]}                   → JSON arrays and objects (an array, even
--                                                      empty, is sent as an array)
-- A value that starts with `"`, `{` or `[` must be valid JSON: it is an error,
-- never silently sent as text.  JSON literals are lower case (`True` is text).
--
-- Keys: a.b=1 sets { a = { b = 1 } }, up to 1000 parts.  A key given twice, or
-- used both as a value and as an object (a=1 a.b=2), is an error.
--
-- Words are separated by spaces; a double-quoted string, a single-quoted
-- value and a JSON object or array after `=` may contain spaces.
local core = require "qmp.core"

local type, next, ipairs, setmetatable, getmetatable = type, next, ipairs, setmetatable, getmetatable
local concat, format = table.concat, string.format
local array_mt = core.array_mt

local kv = {}

-- A decoded value, an empty array marked so that it reaches QEMU as [].
-- qmp.decode marks empty arrays itself (nested ones too); marking the top
-- level here keeps `actions=[]` right with a core that does not.
local function as_sent(v, text)
  if type(v) == "table" and next(v) == nil and text:match("^%s*%[") then setmetatable(v, array_mt) end
  return v
end

--- The value a key=value word's text stands for (see the header), or nil, err.
function kv.value(text)
  if text == "" then return "" end
  local literal = text:match("^'(.*)'$")
  if literal then return literal end
  local v, err = core.decode(text)
  if v ~= nil then return as_sent(v, text) end
  local first = text:sub(1, 1)
  if first == '"' or first == "{" or first == "[" then
    local what = first == '"' and "a JSON string" or first == "{" and "a JSON object" or "a JSON array"
    return nil, format("%s is not valid JSON (%s); it starts like %s: fix it, or quote the text as '...'",
                       text, err and err.message or "bad JSON", what)
  end
  return text
end

-- A key's parts are nested objects: no more than a JSON value may nest
-- (qmp.encode refuses deeper ones; QMP's arguments nest a few levels).
local MAX_PARTS = 1000

-- The first i parts of a key, as typed.
local function upto(parts, i)
  return concat(parts, ".", 1, i)
end

-- Put value at the dotted key in args; what is already there must not clash.
-- objects holds the tables made here for a key's parts, to tell them from a
-- value that is a table (a={"b": 1} a.c=2 is a clash).  One pass over the
-- key, so a key of any depth costs its length.
local function assign(args, key, value, objects)
  if key == "" then return nil, "a word starts with '=': give key=value" end
  local parts = {}
  for part in (key .. "."):gmatch("(.-)%.") do parts[#parts + 1] = part end
  if #parts > MAX_PARTS then
    return nil, format("%s.…: a key of %d parts; at most %d (JSON nests at most %d deep)",
                       upto(parts, 10):sub(1, 40), #parts, MAX_PARTS, MAX_PARTS)
  end
  local node = args
  for i, part in ipairs(parts) do
    if part == "" then return nil, format("%s: empty name in the key (a.b=1 sets a nested member)", key) end
    local here = node[part]
    if i == #parts then
      if here ~= nil and not objects[here] then return nil, format("%s is given twice", upto(parts, i)) end
      if here ~= nil then
        return nil, format("%s is given both as a value and as an object (%s.…)", upto(parts, i), upto(parts, i))
      end
      node[part] = value
    else
      if here ~= nil and not objects[here] then
        return nil, format("%s is given both as a value and as an object (%s)", upto(parts, i), key)
      end
      if here == nil then
        here = {}
        objects[here] = true
        node[part] = here
      end
      node = here
    end
  end
  return true
end

--- The arguments object from key=value words (argv words, already split:
-- no quoting happens here but the value rules of the header), or nil, err.
function kv.pairs(words)
  local args, objects = {}, {}
  for _, word in ipairs(words) do
    local key, text = word:match("^([^=]*)=(.*)$")
    if not key then
      return nil, format("%s: expected key=value (or one JSON object holding all the arguments)", word)
    end
    local value, err = kv.value(text)
    if value == nil then return nil, key .. ": " .. err end
    local ok, why = assign(args, key, value, objects)
    if not ok then return nil, why end
  end
  return args
end

-- The end of a double-quoted string opening at i (JSON escapes), or nil.
local function string_end(text, i)
  local j = i + 1
  while j <= #text do
    local c = text:sub(j, j)
    if c == "\\" then j = j + 2
    elseif c == '"' then return j
    else j = j + 1 end
  end
  return nil
end

--- Split a line into words (see the header for what may hold spaces), or nil, err.
function kv.split(text)
  local words, i, n = {}, 1, #text
  while true do
    i = text:find("%S", i)
    if not i then return words end
    local start, depth, value_start = i, 0, false
    while i <= n do
      local c = text:sub(i, i)
      if c:match("%s") and depth == 0 then break end
      if c == '"' then
        local j = string_end(text, i)
        if not j then return nil, format("%s: a string is not closed (missing \")", text:sub(start)) end
        i = j
      elseif c == "'" and value_start then
        local j = text:find("'", i + 1, true)
        if not j then return nil, format("%s: a quoted value is not closed (missing ')", text:sub(start)) end
        i = j
      elseif (c == "{" or c == "[") and (value_start or depth > 0 or i == start) then
        depth = depth + 1
      elseif (c == "}" or c == "]") and depth > 0 then
        depth = depth - 1
      end
      value_start = c == "=" and depth == 0
      i = i + 1
    end
    if depth > 0 then
      return nil, format("%s: a JSON object or array is not closed (missing } or ])", text:sub(start))
    end
    words[#words + 1] = text:sub(start, i - 1)
  end
end

--- A qmp-shell line: the command name and its arguments object, or nil, err.
function kv.parse(line)
  local name, rest = line:match("^%s*(%S+)%s*(.-)%s*$")
  if not name then return nil, "empty line: type a command name, then key=value arguments" end
  if name:find("=", 1, true) or name:find("^[{[]") then
    return nil, format("%s: the command name comes first (query-block, block-job-cancel device=job0)", name)
  end
  if rest:sub(1, 1) == "{" then
    local args, err = core.decode(rest)
    if type(args) ~= "table" or getmetatable(args) == array_mt then
      return nil, format("the arguments are not a valid JSON object (%s): give one {...} or key=value words",
                         args == nil and err.message or "not an object")
    end
    return name, args
  end
  local words, err = kv.split(rest)
  if not words then return nil, err end
  local args, why = kv.pairs(words)
  if not args then return nil, why end
  return name, args
end

-- Lua's reserved words: `local x=1` is Lua, not the command `local`.
local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not
            or repeat return then true until while]]):gmatch("%a+") do KEYWORDS[w] = true end

--- Whether word is one of Lua's reserved words.
function kv.is_keyword(word)
  return KEYWORDS[word] == true
end

--- Whether a shell line is a QMP command rather than Lua.  The rule, on the
-- first word of the line (up to a space):
--   1. a command of the live schema (when given): `stop`, `query-block ...`;
--   2. else a name with a dash followed by a letter, as QMP names have and
--      Lua expressions do not (write `a - b` for arithmetic): `query-status`;
--   3. else a name (not a Lua keyword) followed by a key=value word:
--      `device_add driver=e1000`.
-- Everything else is Lua: `vm:execute("query-block")`, `x = 1`, `print(1-2)`, `:help`.
function kv.looks_like_command(line, schema)
  local word, rest = line:match("^%s*(%S+)%s*(.*)$")
  if not word then return false end
  if schema and schema.commands and schema.commands[word] then return true end
  if word:match("^[%a_][%w_]*%-%a[%w_%-]*$") then return true end
  return word:match("^[%a_][%w_]*$") ~= nil and not KEYWORDS[word]
         and rest:match("^[%w_.%-]+=") ~= nil and not rest:match("^[%w_.%-]+==")
end

return kv
