--- Event filters, compiled once into predicates.
-- Name filters: "STOP" | "BLOCK_JOB_*" (glob: * and ?) | "*" | { "STOP", "RESUME" }
--   | function(ev) return boolean end.
-- Data filters match members of ev.data: a value means equality, a list
-- means any of, qmp.match(pattern) a Lua pattern on a string, a function a
-- predicate (value, ev), and a table of these a nested member.
local core = require "qmp.core"
local raise = require("qmp.errors").raise

local type, ipairs, pairs, tostring = type, ipairs, pairs, tostring

local filter = {}

local Match = { __name = "qmp.match" }
Match.__index = Match
function Match:__tostring() return "qmp.match(" .. ("%q"):format(self.pattern) .. ")" end

--- A data-filter value matching strings against a Lua pattern.
function filter.match(pattern)
  if type(pattern) ~= "string" then raise("qmp.match: pattern must be a string") end
  return setmetatable({ pattern = pattern }, Match)
end

local function always() return true end

local function glob_pattern(glob)
  return "^" .. glob:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
end

local function is_glob(s) return s:find("[*?]") ~= nil end

-- A name filter (not a function) compiled into test(name).
local function name_test(f)
  local t = type(f)
  if f == nil or f == "*" then return always end
  if t == "string" then
    if not is_glob(f) then return function(n) return n == f end end
    local pat = glob_pattern(f)
    return function(n) return type(n) == "string" and n:find(pat) ~= nil end
  end
  if t == "table" then
    local set, globs = {}, {}
    for i, name in ipairs(f) do
      if type(name) ~= "string" then raise("qmp: event filter list item " .. i .. " is not a string") end
      if name == "*" then return always end
      if is_glob(name) then globs[#globs + 1] = glob_pattern(name) else set[name] = true end
    end
    if #globs == 0 then return function(n) return set[n] == true end end
    return function(n)
      if set[n] then return true end
      if type(n) ~= "string" then return false end
      for _, pat in ipairs(globs) do if n:find(pat) then return true end end
      return false
    end
  end
  raise("qmp: bad event filter (" .. t .. "): want a name, a glob, a list or a function")
end

--- Compile a name filter into test(name), which looks at the name alone:
-- its answer for a name holds for every event of that name, so it may be
-- kept.  nil for a function filter, which is asked about each event.
function filter.name_test(f)
  if type(f) == "function" then return nil end
  return name_test(f)
end

--- Compile a name filter into predicate(ev).
function filter.names(f)
  if type(f) == "function" then return f end
  local test = name_test(f)
  if test == always then return always end
  return function(ev) return test(ev.event) end
end

local function is_list(t)
  return t[1] ~= nil and getmetatable(t) ~= Match
end

-- Compile one data-filter value into check(value, ev).
local function compile_value(spec, path)
  local t = type(spec)
  if t == "function" then return spec end
  if getmetatable(spec) == Match then
    local pat = spec.pattern
    return function(v) return type(v) == "string" and v:find(pat) ~= nil end
  end
  if t == "table" then
    if is_list(spec) then
      local checks = {}
      for i, s in ipairs(spec) do checks[i] = compile_value(s, path) end
      return function(v, ev)
        for _, check in ipairs(checks) do if check(v, ev) then return true end end
        return false
      end
    end
    local fields = {}
    for k, s in pairs(spec) do
      if type(k) ~= "string" then raise("qmp: data filter keys must be member names, at " .. path) end
      fields[#fields + 1] = { k, compile_value(s, path .. "." .. k) }
    end
    return function(v, ev)
      if type(v) ~= "table" then return false end
      for _, f in ipairs(fields) do
        if not f[2](v[f[1]], ev) then return false end
      end
      return true
    end
  end
  if spec == core.null or t == "string" or t == "number" or t == "boolean" then
    return function(v) return v == spec end
  end
  raise("qmp: bad data filter value (" .. tostring(spec) .. ") at " .. path)
end

--- The plain (non-glob) names a name filter lists, for diagnostics.
function filter.exact_names(f)
  local list = {}
  if type(f) == "string" then f = { f } end
  if type(f) == "table" then
    for _, name in ipairs(f) do
      if type(name) == "string" and not is_glob(name) then list[#list + 1] = name end
    end
  end
  return list
end

local function describe_data(v, depth)
  local t = type(v)
  if t == "string" then return ("%q"):format(v) end
  if t == "function" then return "<function>" end
  if getmetatable(v) == Match then return tostring(v) end
  if t ~= "table" or depth > 2 then return tostring(v) end
  local parts = {}
  if is_list(v) then
    for i, x in ipairs(v) do parts[i] = describe_data(x, depth + 1) end
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  for k, x in pairs(v) do parts[#parts + 1] = tostring(k) .. " = " .. describe_data(x, depth + 1) end
  table.sort(parts)
  return "{ " .. table.concat(parts, ", ") .. " }"
end

--- A readable description of a filter: "STOP event", "event matching
-- BLOCK_JOB_*", "event among STOP, RESUME", with its data filter if any.
function filter.describe(names, data)
  local text
  if names == nil or names == "*" then text = "event"
  elseif type(names) == "string" then
    text = is_glob(names) and ("event matching " .. names) or (names .. " event")
  elseif type(names) == "table" then
    local list = {}
    for i, n in ipairs(names) do list[i] = tostring(n) end
    text = "event among " .. table.concat(list, ", ")
  else
    text = "event accepted by the filter function"
  end
  if data ~= nil then text = text .. " with data " .. describe_data(data, 0) end
  return text
end

--- Compile a data filter into predicate(ev), which looks at ev.data (a
-- function data filter is called with ev.data and ev); nil when data is nil.
function filter.data(data)
  if data == nil then return nil end
  if type(data) ~= "table" and type(data) ~= "function" then
    raise("qmp: data filter must be a table or a function")
  end
  local check = compile_value(data, "data")
  return function(ev) return check(ev.data, ev) end
end

--- Compile a name filter and an optional data filter into predicate(ev).
function filter.compile(names, data)
  local by_name, by_data = filter.names(names), filter.data(data)
  if not by_data then return by_name end
  return function(ev)
    return by_name(ev) and by_data(ev)
  end
end

return filter
