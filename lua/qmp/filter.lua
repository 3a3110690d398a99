--- Event filters, compiled once into predicates.
-- Name filters: "STOP" | "BLOCK_JOB_*" (glob: * and ?) | "*" | { "STOP", "RESUME" }
--   | function(ev) return boolean end.
-- Data filters match members of ev.data: a value means equality, a list
-- means any of, qmp.match(pattern) a Lua pattern on a string, a function a
-- predicate (value, ev), and a table of these a nested member.
local core = require "qmp.core"

local type, ipairs, pairs, tostring, error = type, ipairs, pairs, tostring, error

local filter = {}

local Match = { __name = "qmp.match" }
Match.__index = Match
function Match:__tostring() return "qmp.match(" .. ("%q"):format(self.pattern) .. ")" end

--- A data-filter value matching strings against a Lua pattern.
function filter.match(pattern)
  if type(pattern) ~= "string" then error("qmp.match: pattern must be a string", 2) end
  return setmetatable({ pattern = pattern }, Match)
end

local function always() return true end

local function glob_pattern(glob)
  return "^" .. glob:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
end

local function is_glob(s) return s:find("[*?]") ~= nil end

--- Compile a name filter into predicate(ev).
function filter.names(f)
  local t = type(f)
  if f == nil or f == "*" then return always end
  if t == "function" then return f end
  if t == "string" then
    if not is_glob(f) then return function(ev) return ev.event == f end end
    local pat = glob_pattern(f)
    return function(ev) local n = ev.event; return type(n) == "string" and n:find(pat) ~= nil end
  end
  if t == "table" then
    local set, globs = {}, {}
    for i, name in ipairs(f) do
      if type(name) ~= "string" then error("qmp: event filter list item " .. i .. " is not a string", 3) end
      if name == "*" then return always end
      if is_glob(name) then globs[#globs + 1] = glob_pattern(name) else set[name] = true end
    end
    if #globs == 0 then return function(ev) return set[ev.event] == true end end
    return function(ev)
      local n = ev.event
      if set[n] then return true end
      if type(n) ~= "string" then return false end
      for _, pat in ipairs(globs) do if n:find(pat) then return true end end
      return false
    end
  end
  error("qmp: bad event filter (" .. t .. "): want a name, a glob, a list or a function", 3)
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
      if type(k) ~= "string" then error("qmp: data filter keys must be member names, at " .. path, 4) end
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
  error("qmp: bad data filter value (" .. tostring(spec) .. ") at " .. path, 4)
end

--- Compile a name filter and an optional data filter into predicate(ev).
function filter.compile(names, data)
  local by_name = filter.names(names)
  if data == nil then return by_name end
  if type(data) ~= "table" and type(data) ~= "function" then
    error("qmp: data filter must be a table or a function", 2)
  end
  local check = compile_value(data, "data")
  return function(ev)
    return by_name(ev) and check(ev.data, ev)
  end
end

return filter
