-- Parts ask, they do not reach (DESIGN.md, section 6): no file under
-- lua/qmp/ touches another module's private members, the `x._name` fields
-- and `x:_name()` methods.  The rule goes by names: a file may touch
-- `x._name` or `x:_name(...)` only when it defines `_name` itself, as a
-- field of a table it builds (`{ _name = ... }`), by `self._name = ...`, or
-- as `function T:_name` / `function T._name`.  Writing `other._name = v`
-- defines nothing: it is a reach too.  Metamethods (`__index`, ...) are
-- public, as are the names ALLOWED in one file, each with its reason; an
-- entry the file no longer needs fails the spec.
local tmp = require "support.tmp"

local ALLOWED = {}

-- The source with comments and the contents of strings blanked out (each
-- character a space, line ends kept), so that only code is scanned.
local function code_of(src)
  local out, i, n = {}, 1, #src
  local function blank(from, to)
    out[#out + 1] = src:sub(from, to):gsub("[^\n]", " ")
  end
  while i <= n do
    local long = src:match("^%-%-%[(=*)%[", i) or src:match("^%[(=*)%[", i)
    if long then   -- a long comment or a long string
      local open = src:sub(i, i + 1) == "--" and 2 + #long + 2 or #long + 2
      local _, close = src:find("]" .. long .. "]", i + open, true)
      close = close or n
      blank(i, close)
      i = close + 1
    elseif src:sub(i, i + 1) == "--" then
      local stop = (src:find("\n", i, true) or n + 1) - 1
      blank(i, stop)
      i = stop + 1
    else
      local c = src:sub(i, i)
      if c == '"' or c == "'" then
        local j = i + 1
        while j <= n do
          local d = src:sub(j, j)
          if d == "\\" then j = j + 2
          elseif d == c or d == "\n" then break
          else j = j + 1 end
        end
        out[#out + 1] = c
        blank(i + 1, j - 1)
        out[#out + 1] = c
        i = j + 1
      else
        local j = src:find("[-%[\"']", i) or n + 1
        if j == i then j = i + 1 end
        out[#out + 1] = src:sub(i, j - 1)
        i = j
      end
    end
  end
  return table.concat(out)
end

-- The private names a file defines.
local function defined(code)
  local names = {}
  for name in code:gmatch("[{,;]%s*(_[%w_]+)%s*=[^=]") do names[name] = true end          -- { _name = }
  for name in code:gmatch("%f[%w_]self%s*%.%s*(_[%w_]+)%s*=[^=]") do names[name] = true end -- self._name =
  for name in code:gmatch("function%s+[%w_.]+[.:](_[%w_]+)%s*%(") do names[name] = true end -- function T:_name(
  return names
end

-- Each private member the file touches without defining it: "line: text".
-- allowed: name -> reason; used[name] is set for each that was needed.
local function reaches(code, allowed, used)
  local own, found = defined(code), {}
  local line = 1
  local pos = 1
  for at, name in code:gmatch("()[.:]%s*(_[%w_]+)") do
    local _, lines = code:sub(pos, at):gsub("\n", "")
    line, pos = line + lines, at + 1
    local before = code:sub(at - 1, at - 1)
    local member = before ~= "." and not name:match("^__")   -- not "..", not a metamethod
    if member and not own[name] and allowed[name] then used[name] = true end
    if member and not own[name] and not allowed[name] then
      local receiver = code:sub(math.max(1, at - 40), at - 1):match("([%w_]*[%)%]]?)%s*$")
      found[#found + 1] = ("%d: %s%s%s"):format(line, receiver, code:sub(at, at), name)
    end
  end
  return found
end

local function lua_files()
  local p = assert(io.popen("find lua/qmp -name '*.lua' | sort"))
  local list = {}
  for path in p:lines() do list[#list + 1] = path end
  p:close()
  return list
end

local function read(path) return assert(tmp.read(path), "cannot read " .. path) end

describe("the seams", function()
  it("carry a replay: no method of its client is patched (fast mode's step is the clock's advance)", function()
    local vm = assert(require("qmp").replay("spec/fixtures/io-error.qmprec"))
    local Client = getmetatable(vm)
    assert.equal("qmp.Client", Client.__name)
    local patched = {}
    for name, method in pairs(Client) do
      if type(method) == "function" and rawget(vm, name) ~= nil then patched[#patched + 1] = name end
    end
    assert.same({}, patched)
    vm:close()
  end)

  it("take a clock's advance only as a function", function()
    local clock = { now = function() return 0 end, sleep = function() end, advance = 1 }
    local ok, why = pcall(require("qmp").client, { fd = 0 }, { clock = clock })
    assert.is_false(ok)
    assert.matches("clock must be a table", why, 1, true)
  end)
end)

describe("the parts", function()
  it("the scan sees what it must, and no comment or string", function()
    local code = code_of(table.concat({
      'local d = require "qmp.dispatch"',
      "local T = { _mine = 1 }",
      "function T:_helper() return self._mine + self._set end",
      "function T:go() self._set = 2; return d._ring, self:_helper(), vm:_report(1) end",
      '-- vm._in_comment, --[[ vm._long ]] s = "x._in_string" .. [==[ y:_long_string() ]==]',
      "local mt = { __index = T }; other._written = 3; local x = a .. _G",
    }, "\n"))
    assert.same({ "4: d._ring", "4: vm:_report", "6: other._written" }, reaches(code, {}, {}))
  end)

  it("no file under lua/qmp/ uses another module's _field or :_method", function()
    local files = lua_files()
    assert.is_true(#files > 10, "lua/qmp/ was not found (run from the repository root)")
    local problems, used = {}, {}
    for _, path in ipairs(files) do
      used[path] = {}
      for _, where in ipairs(reaches(code_of(read(path)), ALLOWED[path] or {}, used[path])) do
        problems[#problems + 1] = path .. ":" .. where
      end
    end
    assert(#problems == 0, "private members of another part (ask it through a method instead):\n  "
                           .. table.concat(problems, "\n  "))
    for path, names in pairs(ALLOWED) do
      for name in pairs(names) do
        assert(used[path] and used[path][name], ("ALLOWED[%q].%s is not needed any more: remove it"):format(path, name))
      end
    end
  end)
end)
