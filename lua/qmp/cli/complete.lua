--- Tab completion for the shell, from the live schema.
--
--   local list, start = complete.candidates(schema, "blockdev-add driver=qc")
--   --> { "driver=qcow", "driver=qcow2" }, 14
--
-- candidates(schema, line) completes the word before the cursor (line is
-- the text up to the cursor) and returns whole words: each replaces
-- line:sub(start).  It completes:
--   query-bl                      command names          query-block, query-block-jobs, ...
--   block-job-cancel f            argument names         force=  (not those given already)
--   blockdev-add ca               object members         cache.
--   blockdev-add driver=qcow2 f   union branch members   file. file= force-share=
--   ... file.driver=file file.f   nested members         file.filename=  (with their branch)
--   blockdev-add driver=          enum values, booleans  driver=qcow2 ...
--   :h   :help BLOCK_             shell commands; after :help, commands and events (the
--                                 catalogue's too); after :events, on, off and the live events
-- An argument completes to `name=` (a value follows) or `name.` (members
-- follow); one that may be either (`file`: a node name or an object) to both.
-- Nothing for Lua, for JSON arguments or for a command the schema lacks.
--
-- GNU readline splits words at `=` (and a few more characters), so its word
-- may start after ours: complete.clip(list, start, from) cuts the candidates
-- to the word readline replaces, and complete.for_readline does it all for
-- a lua-readline completer (a candidate ending in `=` or `.` wants no space
-- after it).
local kv = require "qmp.cli.kv"
local help = require "qmp.cli.help"
local events = require "qmp.events"
local errors = require "qmp.errors"
local is_safe = require("qmp.text").is_safe

local type, ipairs, pairs = type, ipairs, pairs
local sort = table.sort

local complete = {}

--- The shell's own commands, completed after `:`.
complete.shell_commands = { ":events", ":help", ":hmp", ":quit" }

-- The words of list that start with prefix, sorted, without duplicates.
-- A word holding a byte a terminal would act on (a name from the peer's
-- schema: see qmp.text) is left out: readline would put it on the line as
-- it is, and escaped it would name nothing.
local function prefixed(list, prefix)
  local out, seen = {}, {}
  for _, w in ipairs(list) do
    if w:sub(1, #prefix) == prefix and not seen[w] and is_safe(w) then out[#out + 1] = w; seen[w] = true end
  end
  sort(out)
  return out
end

local function keys(t)
  local list = {}
  for k in pairs(t or {}) do list[#list + 1] = k end
  return list
end

-- Event names: the live schema's, and the catalogue's unless only_live.
local function event_names(schema, only_live)
  local list = (only_live and schema) and {} or events.known_names()
  for name in pairs(schema and schema.events or {}) do list[#list + 1] = name end
  return list
end

-- Merge src into dst: tables member by member, anything else replaces.
local function merge(dst, src)
  for k, v in pairs(src) do
    if type(v) == "table" and type(dst[k]) == "table" then merge(dst[k], v) else dst[k] = v end
  end
end

-- The arguments typed before the current word, as far as they parse (a
-- half-typed line is normal here), and the set of their keys.
local function given_arguments(text)
  local given, typed = {}, {}
  for _, w in ipairs(kv.split(text) or {}) do
    local key = w:match("^([^=]+)=")
    if key then
      typed[key] = true
      local one = kv.pairs({ w })
      if one then merge(given, one) end
    end
  end
  return given, typed
end

-- `key=value` for a value, quoted when it would otherwise read as JSON
-- (an enum value "1" must stay a string) -- except true, false and null
-- offered for a bool or null member.
local function value_word(key, v, literal)
  if not literal and kv.value(v) ~= v then v = '"' .. v .. '"' end
  return key .. "=" .. v
end

-- Completions of the word after a command's name.
local function arguments(schema, cmd, before, word)
  local given, typed = given_arguments(before)
  local key, prefix = word:match("^([^=]*)=(.*)$")
  if key then
    local m = help.member_at(schema, cmd, key, given)
    if not m then return {} end
    local t = schema.types[m.type]
    local enum_only = t and t["meta-type"] == "enum"
    local list = {}
    for _, v in ipairs(help.values(schema, m.type)) do
      local literal = not enum_only and (v == "true" or v == "false" or v == "null")
      list[#list + 1] = value_word(key, v, literal)
    end
    return prefixed(list, key .. "=" .. prefix)
  end

  -- The object whose members complete: the arguments, or the one at parent.
  local parent = word:match("^(.*)%.[^.]*$")
  local tname, level = schema.commands[cmd]["arg-type"], given
  if parent then
    local m, at = help.member_at(schema, cmd, parent, given)
    if not m then return {} end
    tname = help.object_type(schema, m.type)
    level = type(at[m.name]) == "table" and at[m.name] or {}
  end
  if not tname then return {} end
  local path = parent and parent .. "." or ""
  local list = {}
  for _, m in ipairs((help.members(schema, tname, level))) do
    local full = path .. m.name
    local nested_given = false
    for k in pairs(typed) do
      if k:sub(1, #full + 1) == full .. "." then nested_given = true break end
    end
    if not typed[full] then
      local t = schema.types[m.type]
      local object = help.object_type(schema, m.type) ~= nil
      local value = not (t and t["meta-type"] == "object")
      if value and not nested_given then list[#list + 1] = full .. "=" end
      if object then list[#list + 1] = full .. "." end
    end
  end
  return prefixed(list, word)
end

-- Completions of the word after a shell command (`:help BLOCK_`).
local function shell_arguments(schema, command, word)
  if command == ":help" then
    local list = event_names(schema)
    for _, name in ipairs(keys(schema and schema.commands)) do list[#list + 1] = name end
    return prefixed(list, word)
  end
  if command == ":events" then  -- a filter: the events this QEMU can send
    local list = event_names(schema, true)
    list[#list + 1] = "on"
    list[#list + 1] = "off"
    return prefixed(list, word)
  end
  return {}
end

--- Completions of the word that ends line (the text before the cursor):
-- a sorted list of whole words, each replacing line:sub(start), and start.
-- schema: schema.parse(...) of the live schema, or nil (then only the
-- shell's commands and the catalogue's events complete).
-- opts.shell_commands: the `:` commands (default complete.shell_commands).
function complete.candidates(schema, line, opts)
  -- after the last space (anchored: "()%S*$" tries every position, and
  -- costs the square of a long word's length)
  local start = line:match("^.*%s()") or 1
  local word, before = line:sub(start), line:sub(1, start - 1)
  opts = errors.check_options("complete.candidates", opts, { shell_commands = true })
  local shell = opts.shell_commands or complete.shell_commands
  local first, rest = before:match("^%s*(%S+)%s+(.*)$")
  if not first then  -- the first word
    if word:sub(1, 1) == ":" then return prefixed(shell, word), start end
    return prefixed(keys(schema and schema.commands), word), start
  end
  if first:sub(1, 1) == ":" then
    if rest ~= "" then return {}, start end  -- only the first argument completes
    return shell_arguments(schema, first, word), start
  end
  if not (schema and schema.commands[first]) or rest:match("^{") then return {}, start end
  return arguments(schema, first, rest, word), start
end

--- The candidates cut to the word readline replaces, which starts at from
-- (readline splits words at `=`, quotes and brackets, so it may start
-- after start).
function complete.clip(list, start, from)
  if from <= start then return list end
  local out = {}
  for i, w in ipairs(list) do out[i] = w:sub(from - start + 1) end
  return out
end

--- All a lua-readline completer needs:
--   readline.set_complete_function(function(text, from, to)
--     local list, append = complete.for_readline(schema, text, from, to)
--     readline.set_completion_append_character(append)
--     return list
--   end)
-- text is the whole line, text:sub(from, to) the word readline replaces.
-- append is "" when the one candidate ends in `=` or `.`, else " ".
function complete.for_readline(schema, text, from, to, opts)
  errors.check_options("complete.for_readline", opts, { shell_commands = true })
  local list, start = complete.candidates(schema, text:sub(1, to), opts)
  local append = (#list == 1 and list[1]:match("[=.]$")) and "" or " "
  return complete.clip(list, start, from), append
end

return complete
