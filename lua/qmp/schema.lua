--- The live QAPI schema of a monitor (query-qmp-schema).
-- vm:schema() reads it once per connection; schema:event_info(name)
-- describes an event with the members and enum values this QEMU adds to the
-- catalogue's; schema:validate(ev) checks an event against it
-- (opts.validate = true reports mismatches through vm.on_error, never
-- dropping the event).  QEMU masks type names (they are numbers), so
-- types are described by shape: "str", "int", "enum", "object", "array of str".
local core = require "qmp.core"
local quote = require("qmp.errors").quote

local type, ipairs, pairs = type, ipairs, pairs
local mathtype, null, uint64_mt = math.type, core.null, core.uint64_mt

local Schema = { __name = "qmp.Schema" }
Schema.__index = Schema

local schema = {}
local events  -- qmp.events' types, loaded on first use (events.lua loads the catalogue)

-- A report stays one short line whatever the peer sends (validate reports
-- go to vm.on_error, by default a line on stderr): a name or value from an
-- event is quoted up to QUOTED bytes, a problem up to PROBLEM bytes, and a
-- report lists at most PROBLEMS of them.
local QUOTED, PROBLEM, PROBLEMS = 64, 200, 20
-- The schema comes from the peer too: schema.parse puts every field the
-- library reads into its documented shape, but types may still refer to
-- themselves, so a check follows types at most this deep (then: no
-- judgement), reaches each verdict once (see "Checking a value"), and no
-- schema can make a check raise or run away.
local DEPTH = 100

--- A name or value from the wire as a report quotes it: at most 64 bytes.
function schema.quote(v)
  return quote(v, QUOTED)
end

-- The strings of list v ({} when v is not a list).
local function strings(v)
  local out = {}
  if type(v) == "table" then
    for _, x in ipairs(v) do if type(x) == "string" then out[#out + 1] = x end end
  end
  return out
end

-- The entries of list v that are tables whose fields named in need are
-- strings, with their features as a list of strings.
local function entries(v, need)
  local out = {}
  if type(v) ~= "table" then return out end
  for _, x in ipairs(v) do
    local ok = type(x) == "table"
    for _, k in ipairs(need) do ok = ok and type(x[k]) == "string" end
    if ok then
      if x.features ~= nil then x.features = strings(x.features) end
      out[#out + 1] = x
    end
  end
  return out
end

-- What the members of each kind of entity must hold (QAPI's SchemaInfo).
local MEMBER_FIELDS = { object = { "name", "type" }, alternate = { "type" }, enum = { "name" } }
local NAME_FIELDS = { "json-type", "element-type", "tag", "arg-type", "ret-type" }

-- Entity e, in place, as QAPI's introspection documents it: each field the
-- library reads is of its type or absent, lists hold only well-formed
-- entries; an enum without values gets its members' names.
local function normalise(e)
  for _, k in ipairs(NAME_FIELDS) do
    if type(e[k]) ~= "string" then e[k] = nil end
  end
  local meta = e["meta-type"]
  e.features = strings(e.features)
  e.members = entries(e.members, MEMBER_FIELDS[meta] or {})
  if e.variants ~= nil then e.variants = entries(e.variants, { "case", "type" }) end
  if meta == "enum" then
    if type(e.values) == "table" then
      e.values = strings(e.values)
    else
      e.values = {}
      for i, m in ipairs(e.members) do e.values[i] = m.name end
    end
  end
  if e["allow-oob"] ~= nil then e["allow-oob"] = e["allow-oob"] == true end
  return e
end

--- Index the entities of a query-qmp-schema reply: a schema, or nil when
-- the reply is not a list.  Entities that are not tables with a string
-- name and meta-type are left out; the others are normalised in place
-- (see normalise), so every reader of the schema can trust its shape.
function schema.parse(entities)
  if type(entities) ~= "table" then return nil end
  local s = setmetatable({ types = {}, events = {}, commands = {} }, Schema)
  for _, e in ipairs(entities) do
    if type(e) == "table" and type(e.name) == "string" and type(e["meta-type"]) == "string" then
      local meta = normalise(e)["meta-type"]
      if meta == "event" then s.events[e.name] = e
      elseif meta == "command" then s.commands[e.name] = e
      else s.types[e.name] = e end
    end
  end
  return s
end

--- A short readable description of the type named name.
function Schema:describe(name, depth)
  local t = self.types[name]
  if not t then return name or "?" end
  local meta = t["meta-type"]
  if meta == "builtin" then return t.name end
  if meta == "array" then
    depth = (depth or 0) + 1
    return depth > DEPTH and "array" or "array of " .. self:describe(t["element-type"], depth)
  end
  return tostring(meta)  -- enum, object, alternate
end

-- The members of object t, with those of the variants its tag selects in
-- value; a variant type is merged once (a union may name a type twice, or
-- itself), and only an object's members are members.
local function members_of(self, t, value, merged, depth)
  merged = merged or { [t] = true }
  depth = (depth or 0) + 1
  local members = {}
  for _, m in ipairs(t.members) do members[#members + 1] = m end
  if t.tag and type(value) == "table" and depth <= DEPTH then
    for _, v in ipairs(t.variants or {}) do
      local vt = self.types[v.type]
      if v.case == value[t.tag] and vt and vt["meta-type"] == "object" and not merged[vt] then
        merged[vt] = true
        for _, m in ipairs(members_of(self, vt, value, merged, depth)) do members[#members + 1] = m end
      end
    end
  end
  return members
end

local BUILTIN = {
  string = function(v) return type(v) == "string" end,
  int = function(v) return mathtype(v) == "integer" or getmetatable(v) == uint64_mt end,
  number = function(v) return type(v) == "number" or getmetatable(v) == uint64_mt end,
  boolean = function(v) return type(v) == "boolean" end,
  null = function(v) return v == null end,
  value = function() return true end,
}

-- Checking a value -------------------------------------------------------
--
-- A peer's schema can make alternates share branches (each alternate
-- leading, through two arrays, to the next one): tried as a tree, one small
-- event costs 2^depth checks.  So one validation remembers each verdict
-- (ctx.verdicts: does this value fit this type?) and reaches it once per
-- (type, value) pair: the cost is at most the event's size times the
-- schema's.  Reporting then walks down the mismatches only.

-- The verdicts of ctx about type name, and the key of value in them: a
-- float has a table of its own and is keyed by its exact text (as a key
-- 1.0 would be the integer 1, and NaN is no key at all).
local function verdicts(ctx, name, value)
  local float = mathtype(value) == "float"
  local by = float and ctx.floats or ctx.verdicts
  local known = by[name]
  if not known then known = {}; by[name] = known end
  return known, float and ("%a"):format(value) or value
end

-- A place in the event, for a report: a chain up to the root, written out
-- only for the problems a report shows.
local function where(path)
  local parts = {}
  while path.up do
    parts[#parts + 1] = path.index and "[" .. path.index .. "]" or "." .. quote(path.name, QUOTED)
    path = path.up
  end
  local text = path.text
  for i = #parts, 1, -1 do text = text .. parts[i] end
  return text
end

-- Note a problem at path when reporting (ctx.problems holds the first
-- PROBLEMS, ctx.count them all); false, the verdict, either way.
local function problem(ctx, path, what, a, b)
  if path then
    ctx.count = ctx.count + 1
    if ctx.count <= PROBLEMS then
      ctx.problems[ctx.count] = quote(where(path) .. ": "
        .. what:format(a ~= nil and quote(a, QUOTED) or nil, b ~= nil and quote(b, QUOTED) or nil), PROBLEM)
    end
  end
  return false
end

local fits, explain

-- Whether value is of type t (an entity); with path (reporting), each
-- problem is noted, and a part that does not fit is explained in turn.
local function match(self, ctx, t, value, depth, path)
  local meta = t["meta-type"]
  if meta == "builtin" then
    local ok = BUILTIN[t["json-type"]]
    if ok == nil or ok(value) then return true end
    return problem(ctx, path, "%s expected, got %s", t.name, type(value))
  elseif meta == "enum" then
    for _, v in ipairs(t.values) do if v == value then return true end end
    return problem(ctx, path, "%s is not one of the enum's values", value)
  elseif meta == "alternate" then
    for _, m in ipairs(t.members) do
      if fits(self, ctx, m.type, value, depth + 1) then return true end
    end
    return problem(ctx, path, "matches no branch of the alternate")
  elseif meta ~= "array" and meta ~= "object" then
    return true
  end
  if type(value) ~= "table" then return problem(ctx, path, "%s expected, got %s", meta, type(value)) end
  local ok = true
  if meta == "array" then
    local element = t["element-type"]
    for i, v in ipairs(value) do
      if not fits(self, ctx, element, v, depth + 1) then
        if not path then return false end
        ok = false
        explain(self, ctx, element, v, depth + 1, { up = path, index = i })
      end
    end
    return ok
  end
  local known = {}
  for _, m in ipairs(members_of(self, t, value)) do
    known[m.name] = true
    local v = value[m.name]
    if v == nil then
      if m.default == nil then ok = problem(ctx, path and { up = path, name = m.name }, "missing") end
    elseif not fits(self, ctx, m.type, v, depth + 1) then
      ok = false
      if path then explain(self, ctx, m.type, v, depth + 1, { up = path, name = m.name }) end
    end
    if not (ok or path) then return false end
  end
  for k in pairs(value) do
    if not known[k] then
      ok = problem(ctx, path and { up = path, name = k }, "not in the schema")
      if not path then return false end
    end
  end
  return ok
end

-- Whether value is of type name, each verdict reached once (see above).  A
-- type we cannot see or follow (deeper than DEPTH, or met again on the same
-- value while it is being checked: alternates of each other) gets no
-- judgement: it fits.
function fits(self, ctx, name, value, depth)
  local t = self.types[name]
  if not t or depth > DEPTH then return true end
  local known, key = verdicts(ctx, name, value)
  local verdict = known[key]
  if verdict == nil then
    known[key] = true
    verdict = match(self, ctx, t, value, depth)
    known[key] = verdict
  end
  return verdict
end

-- Report why value, at path, is not of type name.  A table is explained
-- once per type (a value a script built may hold one table twice).
function explain(self, ctx, name, value, depth, path)
  local t = self.types[name]
  if not t or depth > DEPTH then return end
  if type(value) == "table" then
    local done = ctx.explained[name] or {}
    ctx.explained[name] = done
    if done[value] then return end
    done[value] = true
  end
  match(self, ctx, t, value, depth, path)
end

--- Problems of event ev against the schema: nil when it matches.
function Schema:validate(ev)
  local e = self.events[ev.event]
  if not e then return { "no event " .. quote(ev.event, QUOTED) .. " in the live schema" } end
  local ctx = { verdicts = {}, floats = {}, explained = {}, problems = {}, count = 0 }
  if e["arg-type"] then
    explain(self, ctx, e["arg-type"], ev.data, 1, { text = "data" })
  elseif type(ev.data) ~= "table" or next(ev.data) ~= nil then
    problem(ctx, { text = "data" }, "the event has no members")
  end
  local n, problems = ctx.count, ctx.problems
  if n == 0 then return nil end
  if n > PROBLEMS then problems[PROBLEMS] = ("... %d more"):format(n - PROBLEMS + 1) end
  return problems
end

--- What this schema says about event `name`: { name, in_schema, doc,
-- known, fields = { member = { type, optional, values, doc } } }: the
-- catalogue's description (a copy) completed with the members and enum
-- values the live schema adds.  The catalogue's types are never changed:
-- in a mixed-version fleet each VM's schema describes that VM only.
function Schema:event_info(name)
  events = events or require("qmp.events").types
  local T = events[name]
  local info = { name = name, known = rawget(T, "known") == true, doc = rawget(T, "doc"),
                 in_schema = self.events[name] ~= nil, fields = {} }
  for k, f in pairs(rawget(T, "fields") or {}) do
    local c = {}
    for fk, fv in pairs(f) do c[fk] = fv end
    info.fields[k] = c
  end
  local e = self.events[name]
  local obj = e and e["arg-type"] and self.types[e["arg-type"]]
  if obj and obj["meta-type"] ~= "object" then obj = nil end
  for _, m in ipairs(obj and members_of(self, obj) or {}) do
    local f = info.fields[m.name]
    if not f then
      f = { type = self:describe(m.type), optional = m.default ~= nil or nil,
            doc = "(from the live schema)" }
      info.fields[m.name] = f
    end
    local mt = self.types[m.type]
    if mt and mt["meta-type"] == "enum" and not f.values then
      f.values = {}
      for i, v in ipairs(mt.values) do f.values[i] = v end
    end
  end
  return info
end

return schema
