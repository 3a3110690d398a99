--- `:help NAME` in the shell: a command's arguments and return type from the
-- live schema, an event's doc and fields from the catalogue.
--
--   print(help.command(schema, "block-job-cancel"))
--   block-job-cancel
--     arguments:
--       device: str
--       force: bool, optional
--     returns: nothing ({})
--
-- QEMU masks type names in query-qmp-schema, so types are shown by shape: an
-- enum with its values, an object with its members (nested ones indented, a
-- few levels deep), arrays, alternates (`object or str`).  A type's detail
-- is on a page once: met again, a line says where (`(see file above)`).  A
-- union's members depend on its discriminator:
-- `help.command(schema, "blockdev-add driver=qcow2")` adds those of the
-- qcow2 branch.  QEMU's introspection tells which members are optional but
-- not their defaults, and has no doc text for commands.
--
-- It also holds the walk over the schema that completion shares:
-- help.members, help.object_type, help.values, help.member_at.  The schema
-- is the peer's: schema.parse gives its fields their documented shapes;
-- each walk here visits a type once (so a type that holds itself, or many
-- ways down to one type, cannot run it away) and loops along a chain of
-- types instead of recursing (a chain may be as long as the schema).
local kv = require "qmp.cli.kv"
local errors = require "qmp.errors"
local events = require "qmp.events"
local escape = require("qmp.text").escape   -- the peer's names, values and docs

local type, ipairs, pairs, tostring = type, ipairs, pairs, tostring
local concat, sort, format = table.concat, table.sort, string.format

local help = {}

local WIDTH = 78      -- lines are wrapped to this
local MAX_DEPTH = 3   -- nested objects deeper than this show their member names only
local SHAPE, SHAPE_DEPTH = 60, 16  -- a longer one-line shape (`array of object or str`) is its kind alone
local NEST = 80       -- detail indented deeper than this is not shown

-- Schema walking --------------------------------------------------------

--- The members of object type tname: its own, then those of the union
-- branch that given (the arguments typed so far, at this level) selects.
-- Also returns the unions whose branch given does not select, as
-- { tag =, cases = { ... } }, so a reader can say what a discriminator adds.
function help.members(schema, tname, given)
  local list, open, seen = {}, {}, {}
  local todo = { tname }  -- depth first, in a loop: a chain of unions may be as long as the schema
  while #todo > 0 do
    local name = table.remove(todo)
    local t = schema.types[name]
    if t and t["meta-type"] == "object" and not seen[name] then
      seen[name] = true
      for _, m in ipairs(t.members) do list[#list + 1] = m end
      if t.tag and t.variants then
        local chosen = type(given) == "table" and given[t.tag] or nil
        local branches = {}
        for _, v in ipairs(t.variants) do
          if v.case == chosen then branches[#branches + 1] = v.type end
        end
        if #branches == 0 then
          local cases = {}
          for i, v in ipairs(t.variants) do cases[i] = v.case end
          open[#open + 1] = { tag = t.tag, cases = cases, chosen = chosen }
        end
        for i = #branches, 1, -1 do todo[#todo + 1] = branches[i] end
      end
    end
  end
  return list, open
end

--- The object type a member of type tname holds members of: tname itself
-- for an object, the object branch of an alternate (`file` of blockdev-add
-- is a node name or an object), else nil.
function help.object_type(schema, tname)
  local t = schema.types[tname]
  if not t then return nil end
  if t["meta-type"] == "object" then return tname end
  if t["meta-type"] == "alternate" then
    for _, m in ipairs(t.members) do
      local b = schema.types[m.type]
      if b and b["meta-type"] == "object" then return m.type end
    end
  end
  return nil
end

--- The values a member of type tname can take, when they are few and known:
-- an enum's values, true and false for a bool, null; an alternate's
-- branches together.  {} for the rest.
function help.values(schema, tname)
  local out, seen = {}, {}
  local todo = { tname }  -- depth first, in a loop: alternates may nest as deep as the schema
  while #todo > 0 do
    local name = table.remove(todo)
    local t = schema.types[name]
    if t and not seen[name] then
      seen[name] = true
      local meta = t["meta-type"]
      if meta == "enum" then
        for _, v in ipairs(t.values) do out[#out + 1] = v end
      elseif meta == "builtin" and t["json-type"] == "boolean" then
        out[#out + 1] = "true"; out[#out + 1] = "false"
      elseif meta == "builtin" and t["json-type"] == "null" then
        out[#out + 1] = "null"
      elseif meta == "alternate" then
        for i = #t.members, 1, -1 do todo[#todo + 1] = t.members[i].type end
      end
    end
  end
  return out
end

--- The member at a dotted key ("file.driver") of command cmd's arguments,
-- following objects, alternates and the union branches given selects.
-- Returns the member and the given table at its level, or nil.
function help.member_at(schema, cmd, key, given)
  local c = schema.commands[cmd]
  local tname = c and c["arg-type"]
  given = type(given) == "table" and given or {}
  local parts = {}
  for part in (key .. "."):gmatch("(.-)%.") do parts[#parts + 1] = part end
  for i, part in ipairs(parts) do
    if not tname then return nil end
    local found
    for _, m in ipairs((help.members(schema, tname, given))) do
      if m.name == part then found = m break end
    end
    if not found or i == #parts then return found, given end
    tname = help.object_type(schema, found.type)
    given = type(given[part]) == "table" and given[part] or {}
  end
end

-- Describing types ------------------------------------------------------

-- One-line shape of type tname: str, int, enum, object, array of str,
-- object or str, ...  Each type's is worked out once per page (ctx.shapes:
-- alternates may share branches, and a shape spelled out as a tree doubles
-- with each level); one longer than SHAPE bytes, nested deeper than
-- SHAPE_DEPTH, or met again inside itself, is its kind alone.
local function shape(schema, tname, ctx, depth)
  local t = schema.types[tname]
  if not t then return tname or "?" end
  local meta = t["meta-type"]
  if meta == "builtin" then return t.name end
  if meta ~= "array" and meta ~= "alternate" then return meta end
  if ctx.shapes[tname] then return ctx.shapes[tname] end
  depth = (depth or 0) + 1
  if depth > SHAPE_DEPTH then return meta end
  ctx.shapes[tname] = meta  -- while worked out
  local text
  if meta == "array" then
    text = "array of " .. shape(schema, t["element-type"], ctx, depth)
  else
    local branches, size = {}, 0
    for i, m in ipairs(t.members) do
      branches[i] = shape(schema, m.type, ctx, depth)
      size = size + #branches[i] + 4
      if size > SHAPE then break end
    end
    text = concat(branches, " or ")
  end
  if #text > SHAPE then text = meta end
  ctx.shapes[tname] = text
  return text
end

-- head, then words joined by sep, wrapped into lines of WIDTH starting with
-- indent (under the first word; on lines of their own after a long head).
local function wrap(out, indent, head, words, sep)
  if #head > 24 then
    out[#out + 1] = indent .. head:gsub("%s+$", "")
    indent, head = indent .. "  ", ""
  end
  local line = indent .. head
  for i, w in ipairs(words) do
    local piece = w .. (i < #words and sep or "")
    if #line + #piece > WIDTH and #line > #indent + #head then
      out[#out + 1] = line:gsub("%s+$", "")
      line = indent .. (" "):rep(#head)
    end
    line = line .. piece
  end
  out[#out + 1] = line
end

local function features(x)
  local f = x.features
  if not f or #f == 0 then return "" end
  return " [" .. concat(f, ", ") .. "]"
end

-- ctx: onpath, the object types on the way down (type -> where it began);
-- shown, where each type's detail is on the page (see detail_note);
-- shapes (see shape); leads (see lead); root, what the page's key "" is;
-- line, the :help line, if any.
local expand  -- (out, schema, tname, given, indent, depth, ctx, key)

local NO_WORDS = {}  -- the given of a level the line has no key=value words for

-- What the page holds of the detail of type tname for given (the key=value
-- words at its level): a table to read and note it in, and the key there.
-- Its note is nil (not yet), true (being written), false (it has none) or
-- where it is.  Each type is detailed once per page and given: a schema
-- whose alternates share branches has exponentially many ways down to a
-- type, and a page that followed each of them would never end.
local function detail_note(ctx, tname, given)
  local notes = ctx.shown[tname]
  if not notes then notes = {}; ctx.shown[tname] = notes end
  return notes, type(given) == "table" and next(given) ~= nil and given or NO_WORDS
end

-- Whether enum values fit on one line at indent: shown each time (a "see
-- above" would take a line too).
local function one_line(values, indent)
  local size = #indent + #"one of: " - 2
  for _, v in ipairs(values) do
    size = size + #v + 2
    if size > WIDTH then return false end
  end
  return true
end

-- What the discriminators of the unions in open (see help.members) add.
local function union_hints(out, open, indent, ctx, key)
  for _, u in ipairs(open) do
    local tag = key .. u.tag
    if u.chosen ~= nil then
      wrap(out, indent, format("%s=%s is none of the cases: ", tag, tostring(u.chosen)), u.cases, ", ")
    elseif ctx.line then
      out[#out + 1] = format("%s(%s selects more members: see :help %s %s=VALUE)", indent, tag, ctx.line, tag)
    else
      wrap(out, indent, format("(%s selects more members) for each of: ", tag), u.cases, ", ")
    end
  end
end

-- The member lines of object type tname, nested detail below each.
local function member_lines(out, schema, tname, given, indent, depth, ctx, key)
  local outer = ctx.onpath[tname]
  ctx.onpath[tname] = key == "" and ctx.root or key:sub(1, -2)
  local list, open = help.members(schema, tname, given)
  for _, m in ipairs(list) do
    out[#out + 1] = format("%s%s: %s%s%s", indent, m.name, shape(schema, m.type, ctx),
                           m.default ~= nil and ", optional" or "", features(m))
    local sub = type(given) == "table" and type(given[m.name]) == "table" and given[m.name] or nil
    expand(out, schema, m.type, sub, indent .. "  ", depth + 1, ctx, key .. m.name .. ".")
  end
  union_hints(out, open, indent, ctx, key)
  ctx.onpath[tname] = outer
end

-- Write the detail of type tname for given with write(), once per page
-- (see detail_note); met again, a line says where it is (and what a
-- union's discriminator adds, as that names the key).
local function once(out, schema, ctx, tname, given, indent, key, write)
  local notes, words = detail_note(ctx, tname, given)
  local note = notes[words]
  if note == true or note == false then return end  -- met again inside itself, or nothing to show
  if note then
    out[#out + 1] = format("%s(see %s above)", indent, note)
    if schema.types[tname]["meta-type"] == "object" then
      union_hints(out, select(2, help.members(schema, tname, given)), indent, ctx, key)
    end
    return
  end
  notes[words] = true
  local lines = #out
  write()
  notes[words] = #out > lines and (key == "" and ctx.root or key:sub(1, -2))
end

-- The branches of alternate t with a detail of their own.
local function detailed_branches(schema, t)
  local detailed = {}
  for _, m in ipairs(t.members) do
    local b = schema.types[m.type]
    if b and (b["meta-type"] == "enum" or b["meta-type"] == "object" or b["meta-type"] == "array") then
      detailed[#detailed + 1] = m.type
    end
  end
  return detailed
end

-- The type whose detail shows for tname: an array's elements', an
-- alternate's one detailed branch's, followed to an object, an enum or an
-- alternate of several detailed branches; false for none (a builtin, or a
-- chain back into itself).  Followed once per page (ctx.leads), in a loop:
-- a chain may be as long as the schema.
local function lead(schema, ctx, tname)
  local chain, to = {}, false
  while tname ~= nil do
    local known = ctx.leads[tname]
    if known ~= nil then to = known break end
    ctx.leads[tname] = false  -- met again on this chain: it leads nowhere
    chain[#chain + 1] = tname
    local t = schema.types[tname]
    local meta = t and t["meta-type"]
    if meta == "array" then
      -- its key.tag=VALUE words pick the branch of the elements (help only:
      -- a command takes an array as JSON)
      tname = t["element-type"]
    elseif meta == "alternate" then
      local detailed = detailed_branches(schema, t)
      if #detailed ~= 1 then to = #detailed > 1 and tname break end
      tname = detailed[1]
    else
      to = (meta == "object" or meta == "enum") and tname
      break
    end
  end
  for _, name in ipairs(chain) do ctx.leads[name] = to end
  return to
end

-- The detail of type tname under a member: enum values, object members, ...
-- An array or an alternate with one detailed branch shows the detail it
-- leads to; objects, long enums and alternates of several detailed
-- branches are detailed once (see once).
function expand(out, schema, tname, given, indent, depth, ctx, key)
  tname = lead(schema, ctx, tname)
  if not tname then return end
  if #indent > NEST then
    out[#out + 1] = indent .. "(nested too deep to show)"
    return
  end
  local t = schema.types[tname]
  local meta = t["meta-type"]
  if meta == "enum" then
    if #t.values == 0 then return end
    if one_line(t.values, indent) then
      wrap(out, indent, "one of: ", t.values, ", ")
    else
      once(out, schema, ctx, tname, given, indent, key, function() wrap(out, indent, "one of: ", t.values, ", ") end)
    end
  elseif meta == "alternate" then
    once(out, schema, ctx, tname, given, indent, key, function()
      local detailed = detailed_branches(schema, t)
      for _, b in ipairs(detailed) do  -- each branch's detail under its own head
        out[#out + 1] = format("%sas %s:", indent, shape(schema, b, ctx))
        expand(out, schema, b, given, indent .. "  ", depth, ctx, key)
      end
    end)
  else
    -- A type met again on the way down (BlockdevRef holds BlockdevOptions)
    -- is shown once, unless the line gives members of it to follow.
    if ctx.onpath[tname] and not (type(given) == "table" and next(given) ~= nil) then
      out[#out + 1] = format("%s(the members of %s, again)", indent, ctx.onpath[tname])
      union_hints(out, select(2, help.members(schema, tname, given)), indent, ctx, key)
      return
    end
    once(out, schema, ctx, tname, given, indent, key, function()
      if depth > MAX_DEPTH then
        local names = {}
        for i, m in ipairs((help.members(schema, tname, given))) do names[i] = m.name end
        if #names > 0 then wrap(out, indent, "members: ", names, ", ") end
      else
        member_lines(out, schema, tname, given, indent, depth, ctx, key)
      end
    end)
  end
end

-- The lines of a help page as one text.  Names, enum values and docs are
-- the peer's: each line escaped (qmp.text), so none of them reaches the
-- terminal raw or breaks a line.
local function page(out)
  for i, line in ipairs(out) do out[i] = escape(line) end
  return concat(out, "\n")
end

-- Did-you-mean for an unknown name.
local function unknown(what, name, candidates)
  local guess = errors.closest(name, candidates)
  return nil, errors.new("usage", escape(format("no %s %s%s", what, name,   -- guess: the peer's
                         guess and format(" — did you mean %s?", guess) or "")),
                         { name = name, suggestion = guess })
end

local function sorted_keys(t)
  local list = {}
  for k in pairs(t or {}) do list[#list + 1] = k end
  sort(list)
  return list
end

--- A command's arguments and return type, or nil, err (kind usage, with a
-- did-you-mean).  line is the name, optionally followed by key=value words
-- that pick union branches ("blockdev-add driver=qcow2 file.driver=file").
function help.command(schema, line)
  local name, given = kv.parse(line)
  if not name then return nil, errors.new("usage", given) end
  local c = schema.commands[name]
  if not c then return unknown("command", name, sorted_keys(schema.commands)) end
  local ctx = { onpath = {}, shown = {}, shapes = {}, leads = {}, root = "the arguments",
                line = line:match("^%s*(.-)%s*$") }
  local out = { name .. features(c) .. (c["allow-oob"] and " (can run out-of-band)" or "") }
  local args = schema.types[c["arg-type"]]
  if not args or (#args.members == 0 and not args.variants) then
    out[#out + 1] = "  arguments: none"
  else
    out[#out + 1] = "  arguments:"
    local notes, words = detail_note(ctx, c["arg-type"], given)
    notes[words] = ctx.root
    member_lines(out, schema, c["arg-type"], given, "    ", 0, ctx, "")
  end
  local ret = schema.types[c["ret-type"]]
  if ret and ret["meta-type"] == "object" and #ret.members == 0 and not ret.variants then
    out[#out + 1] = "  returns: nothing ({})"
  else
    out[#out + 1] = "  returns: " .. shape(schema, c["ret-type"], ctx)
    ctx.line, ctx.root = nil, "the result"  -- a result takes no key=value words: no :help hint
    expand(out, schema, c["ret-type"], nil, "    ", 0, ctx, "")
  end
  return page(out)
end

-- "rate-limited (since 9.2): at most one a second per qom-path, not when action=stop; ..."
local function throttle_note(T)
  if not rawget(T, "throttled") then return nil end
  local t = rawget(T, "throttle") or {}
  local unless = {}
  for k, v in pairs(t.unless or {}) do unless[#unless + 1] = ", not when " .. k .. "=" .. tostring(v) end
  sort(unless)
  return format("rate-limited%s: at most one a second%s%s; the last of a burst arrives late",
                t.since and " (since " .. t.since .. ")" or "", t.key and " per " .. t.key or "",
                concat(unless))
end

--- An event's doc, history and fields from the catalogue, completed with
-- what the live schema says when one is given (members the catalogue lacks,
-- enum values, members this QEMU does not send).  nil, err (kind usage, with
-- a did-you-mean) for a name neither knows.
function help.event(schema, name)
  local in_schema = schema ~= nil and schema.events[name] ~= nil
  if not events.known(name) and not in_schema then
    local names = events.known_names()
    for n in pairs(schema and schema.events or {}) do names[#names + 1] = n end
    return unknown("event", name, names)
  end
  local T = events.types[name]
  local info = schema and schema:event_info(name)
           or { doc = rawget(T, "doc"), fields = rawget(T, "fields") or {} }
  local head = { "event" }
  if rawget(T, "since") then head[#head + 1] = "since " .. rawget(T, "since") end
  if rawget(T, "removed") then head[#head + 1] = "removed in " .. rawget(T, "removed") end
  local out = { format("%s (%s)", name, concat(head, ", ")) }
  if info.doc then out[#out + 1] = "  " .. info.doc end
  local note = throttle_note(T)
  if note then out[#out + 1] = "  " .. note end
  if schema and not in_schema then out[#out + 1] = "  (this QEMU does not have this event)" end

  -- Members this QEMU sends, to mark the others.
  local live
  if in_schema then
    live = {}
    local e = schema.events[name]
    for _, m in ipairs(e["arg-type"] and (help.members(schema, e["arg-type"])) or {}) do live[m.name] = true end
  end
  local order, seen = {}, {}
  for _, k in ipairs(rawget(T, "first") or {}) do
    if info.fields[k] then order[#order + 1] = k; seen[k] = true end
  end
  for _, k in ipairs(sorted_keys(info.fields)) do
    if not seen[k] then order[#order + 1] = k end
  end
  if #order == 0 then
    out[#out + 1] = "  fields: none"
    return page(out)
  end
  out[#out + 1] = "  fields:"
  for _, k in ipairs(order) do
    local f = info.fields[k]
    local line = format("    %s: %s%s%s", k, f.type or "?", f.optional and ", optional" or "",
                        f.since and ", since " .. f.since or "")
    if live and not live[k] then line = line .. " (not sent by this QEMU)" end
    if f.doc then line = line .. " — " .. f.doc end
    out[#out + 1] = line
    if f.values and #f.values > 0 then wrap(out, "      ", "one of: ", f.values, ", ") end
  end
  return page(out)
end

--- `:help TEXT`: a command (with key=value words, see help.command) or an
-- event, upper case or not; nil, err with a did-you-mean over both.
function help.topic(schema, text)
  local word = text:match("^%s*(%S+)")
  if not word then return nil, errors.new("usage", "help: name a command or an event") end
  if schema and schema.commands[word] then return help.command(schema, text) end
  for _, name in ipairs({ word, word:upper() }) do
    if events.known(name) or (schema and schema.events[name]) then return help.event(schema, name) end
  end
  local names = events.known_names()
  for n in pairs(schema and schema.commands or {}) do names[#names + 1] = n end
  for n in pairs(schema and schema.events or {}) do names[#names + 1] = n end
  local guess = errors.closest(word, names) or errors.closest(word:upper(), names)
  return nil, errors.new("usage", escape(format("no command or event %s%s", word,   -- guess: the peer's
                         guess and format(" — did you mean %s?", guess) or "")),
                         { name = word, suggestion = guess })
end

return help
