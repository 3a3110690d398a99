--- Reading callgrind's output (format version 1, "positions: line",
-- "events: Ir") into what the instruction benchmark needs: the total, each
-- function's own cost, and every call edge with its inclusive cost.
--   local p = callgrind.parse("callgrind.out")
--   p.total                      -- instructions
--   p.self["core.so:conn_take"]  -- instructions in the function itself
--   p.calls                      -- { { from = "ob:fn", to = "ob:fn", cost = n }, ... }
-- Functions are named "object basename:function"; with valgrind's
-- --separate-callers, a function's name carries its callers after it,
-- each after a "'" (callgrind's own notation).
local M = {}

local function basename(path)
  return path:match("([^/]+)$") or path
end

-- "(12) name" defines id 12; "(12)" refers to it; "name" is uncompressed.
local function resolve(names, spec)
  local id, rest = spec:match("^%((%d+)%)%s*(.*)$")
  if not id then return spec end
  if rest ~= "" then names[id] = rest end
  return names[id] or ("?" .. id)
end

function M.parse(path)
  local obs, fns = {}, {}
  local ob, fn = "?", "?"
  local cob, cfn       -- the callee of the next calls= line
  local in_call = false  -- the next cost line is a call's inclusive cost
  local self, edges, total = {}, {}, nil
  for line in io.lines(path) do
    local key, value = line:match("^(%a+)=(.*)$")
    if key == "ob" then ob = basename(resolve(obs, value))
    elseif key == "fn" then fn = ob .. ":" .. resolve(fns, value); cob = nil
    elseif key == "cob" then cob = basename(resolve(obs, value))
    elseif key == "cfn" then cfn = resolve(fns, value)
    elseif key == "calls" then in_call = true
    elseif key then  -- fl, fi, fe, cfi, jump, jcnd: not needed
      if key == "jump" or key == "jcnd" then in_call = false end
    elseif line:match("^[%d+%-*]") then
      local cost = tonumber(line:match("^%S+%s+(%d+)")) or 0
      if in_call then
        local to = (cob or ob) .. ":" .. cfn
        local k = fn .. "\0" .. to
        edges[k] = (edges[k] or 0) + cost
        in_call, cob = false, nil
      else
        self[fn] = (self[fn] or 0) + cost
      end
    else
      local s = line:match("^summary:%s*(%d+)") or line:match("^totals:%s*(%d+)")
      if s then total = tonumber(s) end
    end
  end
  local calls = {}
  for k, cost in pairs(edges) do
    local from, to = k:match("^(.-)%z(.*)$")
    calls[#calls + 1] = { from = from, to = to, cost = cost }
  end
  return { total = total or 0, self = self, calls = calls }
end

local function object(name) return name:match("^(.-):") end
local function func(name) return name:match(":(.*)$") end

--- The cost of every call that enters an object (its basename matches the
-- Lua pattern `ob`) from outside it, i.e. the instructions spent inside
-- that library and whatever it calls.
function M.entering(p, ob)
  local sum = 0
  for _, c in ipairs(p.calls) do
    if object(c.to):find(ob) and not object(c.from):find(ob) then sum = sum + c.cost end
  end
  return sum
end

--- The inclusive cost of calls from objects matching `from_ob` (any, when
-- nil) to functions whose name matches the Lua pattern `pattern`.
function M.calls_to(p, pattern, from_ob)
  local sum = 0
  for _, c in ipairs(p.calls) do
    if func(c.to):find(pattern) and (from_ob == nil or object(c.from):find(from_ob))
       and c.from ~= c.to then
      sum = sum + c.cost
    end
  end
  return sum
end

--- The inclusive cost of calls from objects matching `from_ob` into
-- objects matching `to_ob`.
function M.between(p, from_ob, to_ob)
  local sum = 0
  for _, c in ipairs(p.calls) do
    if object(c.from):find(from_ob) and object(c.to):find(to_ob) then sum = sum + c.cost end
  end
  return sum
end

-- A function's name without the callers that --separate-callers adds
-- ("luaC_step'lua_createtable'push_event" -> "luaC_step"), and those
-- callers, nearest first.
local function base(fn)
  return fn:match("^[^']*")
end

local function callers(fn)
  local list = {}
  for name in fn:gmatch("'([^']+)") do list[#list + 1] = name end
  return list
end

--- The names of the functions of objects matching `ob`, as a set.
function M.functions_of(p, ob)
  local set = {}
  for name in pairs(p.self) do
    if object(name):find(ob) then set[base(func(name))] = true end
  end
  return set
end

--- The inclusive cost of every call into a function named in the set
-- `entries` from a function not in it; and the part of that made beneath
-- a function named in the set `beneath` (found among the callee's callers:
-- run valgrind with --separate-callersN=NAME for each entry, N deep enough
-- to reach them).
function M.calls_into(p, entries, beneath)
  local all, under = 0, 0
  for _, c in ipairs(p.calls) do
    local to, from = func(c.to), base(func(c.from))
    if entries[base(to)] and not entries[from] then
      all = all + c.cost
      local inside = beneath[from] or false
      for _, name in ipairs(callers(to)) do inside = inside or beneath[base(name)] or false end
      if inside then under = under + c.cost end
    end
  end
  return all, under
end

--- Functions by their own cost, largest first: { { name, cost }, ... }.
function M.top_self(p, n)
  local list = {}
  for name, cost in pairs(p.self) do list[#list + 1] = { name = name, cost = cost } end
  table.sort(list, function(a, b) return a.cost > b.cost end)
  local top = {}
  for i = 1, math.min(n, #list) do top[i] = list[i] end
  return top
end

return M
