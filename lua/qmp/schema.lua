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
-- judgement), and no schema can make a check raise or run away.
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

-- The members of an object, with those of the variant the tag selects.
local function members_of(self, t, value, depth)
  local members = {}
  for _, m in ipairs(t.members) do members[#members + 1] = m end
  depth = (depth or 0) + 1
  if t.tag and type(value) == "table" and depth <= DEPTH then
    for _, v in ipairs(t.variants or {}) do
      if v.case == value[t.tag] then
        local vt = self.types[v.type]
        if vt then for _, m in ipairs(members_of(self, vt, value, depth)) do members[#members + 1] = m end end
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

-- Check value against the type named name; append problems ("path: what").
function Schema:check(name, value, path, problems, depth)
  local t = self.types[name]
  depth = (depth or 0) + 1
  if not t or depth > DEPTH then return end  -- a type we cannot see or follow: no judgement
  local meta = t["meta-type"]
  if meta == "builtin" then
    local ok = BUILTIN[t["json-type"]]
    if ok and not ok(value) then
      problems[#problems + 1] = ("%s: %s expected, got %s"):format(path, quote(t.name, QUOTED), type(value))
    end
  elseif meta == "enum" then
    local found = false
    for _, v in ipairs(t.values) do if v == value then found = true break end end
    if not found then
      problems[#problems + 1] = ("%s: %s is not one of the enum's values"):format(path, quote(value, QUOTED))
    end
  elseif meta == "array" then
    if type(value) ~= "table" then
      problems[#problems + 1] = ("%s: array expected, got %s"):format(path, type(value))
    else
      for i, v in ipairs(value) do self:check(t["element-type"], v, path .. "[" .. i .. "]", problems, depth) end
    end
  elseif meta == "object" then
    if type(value) ~= "table" then
      problems[#problems + 1] = ("%s: object expected, got %s"):format(path, type(value))
      return
    end
    local known = {}
    for _, m in ipairs(members_of(self, t, value)) do
      known[m.name] = true
      local v = value[m.name]
      if v == nil then
        if m.default == nil then problems[#problems + 1] = ("%s.%s: missing"):format(path, quote(m.name, QUOTED)) end
      else
        self:check(m.type, v, path .. "." .. quote(m.name, QUOTED), problems, depth)
      end
    end
    for k in pairs(value) do
      if not known[k] then problems[#problems + 1] = ("%s.%s: not in the schema"):format(path, quote(k, QUOTED)) end
    end
  elseif meta == "alternate" then
    for _, m in ipairs(t.members) do
      local trial = {}
      self:check(m.type, value, path, trial, depth)
      if #trial == 0 then return end
    end
    problems[#problems + 1] = ("%s: matches no branch of the alternate"):format(path)
  end
end

--- Problems of event ev against the schema: nil when it matches.
function Schema:validate(ev)
  local e = self.events[ev.event]
  if not e then return { "no event " .. quote(ev.event, QUOTED) .. " in the live schema" } end
  local problems = {}
  if e["arg-type"] then
    self:check(e["arg-type"], ev.data, "data", problems)
  elseif type(ev.data) ~= "table" or next(ev.data) ~= nil then
    problems[1] = "data: the event has no members"
  end
  local n = #problems
  if n == 0 then return nil end
  if n > PROBLEMS then
    for i = n, PROBLEMS + 1, -1 do problems[i] = nil end
    problems[PROBLEMS] = ("... %d more"):format(n - PROBLEMS + 1)
  end
  for i = 1, #problems do problems[i] = quote(problems[i], PROBLEM) end
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
