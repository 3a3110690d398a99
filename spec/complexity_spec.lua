-- Complexity on hostile input: validate, :help, completion and the
-- key=value parser, on the shapes a peer's schema or a typed line can take,
-- under a budget of CPU time (os.clock: a busy machine does not fail them)
-- and of memory.  Walked as trees, these shapes cost 2^depth (validate:
-- 4.9 s of CPU for one 20-deep event; :help 16 s and 673 MB at 18 levels)
-- or the square of a key's length (6 s for 20,000 parts); each case here
-- takes milliseconds.  Tagged #timing all the same: under valgrind, 20 to
-- 50 times slower, the budget would not hold.
local qmp = require "qmp"
local schema = require "qmp.schema"
local help = require "qmp.cli.help"
local complete = require "qmp.cli.complete"
local kv = require "qmp.cli.kv"
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)

local CPU = 0.25          -- seconds of CPU for one case
local MEMORY = 16 * 1024  -- KiB one case may add to the heap, its result included

-- f() under the budget: its results.  A case 20 times over its budget is
-- stopped there (a walk that doubles with each level would take hours).
local function within(what, f)
  collectgarbage()
  local before, t0 = collectgarbage("count"), os.clock()
  debug.sethook(function()
    if os.clock() - t0 > 20 * CPU then
      debug.sethook()
      error(("%s: stopped after %.1f s of CPU"):format(what, os.clock() - t0), 2)
    end
  end, "", 100000)
  local ok, a, b = pcall(f)
  debug.sethook()
  local cpu, kib = os.clock() - t0, collectgarbage("count") - before
  assert(ok, a)
  assert(cpu < CPU, ("%s: %.3f s of CPU, over %.2f s"):format(what, cpu, CPU))
  assert(kib < MEMORY, ("%s: %.0f KiB, over %d KiB"):format(what, kib, MEMORY))
  return a, b
end

local function entity(name, meta, fields)
  fields = fields or {}
  fields.name, fields["meta-type"] = name, meta
  return fields
end

-- A schema in query-qmp-schema's shape: event E and command c take
-- { x: A0 } and c returns A0; link(list, i) adds the types of level i,
-- which lead to A(i+1); A(depth) takes an int or an enum value.
local function schema_of(depth, link)
  local list = {
    entity("int", "builtin", { ["json-type"] = "int" }),
    entity("V", "enum", { values = { "red", "green" } }),
    entity("O", "object", { members = { { name = "x", type = "A0" } } }),
    entity("E", "event", { ["arg-type"] = "O" }),
    entity("c", "command", { ["arg-type"] = "O", ["ret-type"] = "A0" }),
    entity("A" .. depth, "alternate", { members = { { type = "int" }, { type = "V" } } }),
  }
  for i = 0, depth - 1 do link(list, i) end
  return schema.parse(list)
end

-- Alternates that lead, through two array branches each, to the next one.
local function through_arrays(list, i)
  local next_one = "A" .. (i + 1)
  list[#list + 1] = entity("A" .. i, "alternate", { members = { { type = "L" .. i }, { type = "M" .. i } } })
  list[#list + 1] = entity("L" .. i, "array", { ["element-type"] = next_one })
  list[#list + 1] = entity("M" .. i, "array", { ["element-type"] = next_one })
end

-- Alternates whose two branches are alternates of the next one: the value
-- stays the same all the way down.
local function through_alternates(list, i)
  local next_one = { { type = "A" .. (i + 1) } }
  list[#list + 1] = entity("A" .. i, "alternate", { members = { { type = "P" .. i }, { type = "Q" .. i } } })
  list[#list + 1] = entity("P" .. i, "alternate", { members = next_one })
  list[#list + 1] = entity("Q" .. i, "alternate", { members = next_one })
end

-- The event's data: x nested in depth arrays around leaf (JSON text).
local function nested(depth, leaf)
  return '{"x": ' .. ("["):rep(depth) .. leaf .. ("]"):rep(depth) .. "}"
end

local DEPTHS = { 16, 20, 26, 40 }

describe("validate on a peer schema whose alternates share branches #timing", function()
  it("checks an event nested 16, 20, 26 and 40 deep within the budget, reporting the mismatch", function()
    for _, depth in ipairs(DEPTHS) do
      local s = schema_of(depth, through_arrays)
      local bad = { event = "E", data = assert(qmp.decode(nested(depth, '"s"'))) }
      local problems = within("validate " .. depth, function() return s:validate(bad) end)
      assert.same({ "data.x: matches no branch of the alternate" }, problems)
      local good = { event = "E", data = assert(qmp.decode(nested(depth, "7"))) }
      assert.is_nil(within("validate a good one " .. depth, function() return s:validate(good) end))
    end
  end)

  it("checks one value against alternates of alternates 40 deep within the budget", function()
    local s = schema_of(40, through_alternates)
    assert.same({ "data.x: matches no branch of the alternate" },
                within("validate", function() return s:validate({ event = "E", data = { x = "blue" } }) end))
    assert.is_nil(within("validate", function() return s:validate({ event = "E", data = { x = "green" } }) end))
  end)

  it("checks a value a script built with shared tables once per table", function()
    local s = schema_of(40, through_arrays)
    local v = { "s" }
    for _ = 1, 40 do v = { v, v } end   -- 2^40 paths, 41 tables
    local problems = within("validate", function() return s:validate({ event = "E", data = { x = v } }) end)
    assert.equal("data.x: matches no branch of the alternate", problems[1])
  end)

  it("keeps a client with validate = true on time: the 26-deep event arrives, reported", function()
    local s = [[[{"name": "int", "meta-type": "builtin", "json-type": "int"},
      {"name": "O", "meta-type": "object", "members": [{"name": "x", "type": "A0"}]},
      {"name": "E", "meta-type": "event", "arg-type": "O"},
      {"name": "A26", "meta-type": "alternate", "members": [{"type": "int"}]}]]
    for i = 0, 25 do
      s = s .. (', {"name": "A%d", "meta-type": "alternate", "members": [{"type": "L%d"}, {"type": "M%d"}]}'
                .. ', {"name": "L%d", "meta-type": "array", "element-type": "A%d"}'
                .. ', {"name": "M%d", "meta-type": "array", "element-type": "A%d"}'):format(i, i, i, i, i + 1, i, i + 1)
    end
    local vm = fake.client({ { expect = "query-qmp-schema", reply = fake.reply(s .. "]") },
                             { send = fake.event("E", nested(26, '"s"')) }, { hold = 5 } },
                           cleanup, { timeout = 5, validate = true })
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    local ev = within("wait", function() return assert(vm:wait("E", nil, 3)) end)
    assert.equal("E", ev.event)
    assert.equal(1, #reports)
    assert.equal("schema", reports[1].kind)
    assert.same({ "data.x: matches no branch of the alternate" }, reports[1].problems)
  end)
end)

describe(":help and completion on a peer schema whose alternates share branches #timing", function()
  it("write a page of each type once, 16, 18, 26 and 40 levels deep, within the budget", function()
    for _, depth in ipairs({ 16, 18, 26, 40 }) do
      for _, link in ipairs({ through_arrays, through_alternates }) do
        local s = schema_of(depth, link)
        local page = within(":help " .. depth, function() return assert(help.topic(s, "c")) end)
        assert.is_true(#page < 20000, #page .. " bytes")
        if link == through_arrays then assert.truthy(page:find("(see x above)", 1, true)) end
      end
    end
  end)

  -- A chain of 100,000 types of one kind: command c takes { m: the first }.
  -- Each walk loops along such a chain instead of recursing, so none runs
  -- out of stack.
  local function long_chain(kind)
    local n = 100000
    local list = {
      entity("int", "builtin", { ["json-type"] = "int" }),
      entity("V", "enum", { values = { "v" } }),
      entity("O", "object", { members = { { name = "m", type = "C0" } } }),
      entity("c", "command", { ["arg-type"] = "O", ["ret-type"] = "C0" }),
    }
    for i = 0, n - 1 do
      local this, next_one = "C" .. i, "C" .. (i + 1)
      list[#list + 1] = kind == "array" and entity(this, "array", { ["element-type"] = next_one })
        or kind == "alternate" and entity(this, "alternate", { members = { { type = next_one }, { type = "int" } } })
        or entity(this, "object", { members = { { name = "k", type = "V" } }, tag = "k",
                                    variants = { { case = "v", type = next_one } } })
    end
    list[#list + 1] = kind == "array" and entity("C" .. n, "array", { ["element-type"] = "int" })
      or kind == "alternate" and entity("C" .. n, "alternate", { members = { { type = "V" } } })
      or entity("C" .. n, "object", { members = { { name = "last", type = "int" } } })
    return schema.parse(list)
  end

  it(":help follows a chain of 100,000 arrays without running out of stack", function()
    local page = assert(help.topic(long_chain("array"), "c"))
    assert.truthy(page:find("m: array of array of", 1, true))
  end)

  it("completion follows chains of 100,000 alternates and unions, and alternates that share branches", function()
    assert.same({ "m=v" }, complete.candidates(long_chain("alternate"), "c m="))
    assert.same({ "m.last=" }, complete.candidates(long_chain("union"), "c m.k=v m.l"))
    for _, depth in ipairs(DEPTHS) do
      for _, link in ipairs({ through_arrays, through_alternates }) do
        local s = schema_of(depth, link)
        local values = within("complete", function() return complete.candidates(s, "c x=") end)
        if link == through_alternates then assert.same({ "x=green", "x=red" }, values) end
        within("complete", function() return complete.candidates(s, "c x.") end)
      end
    end
  end)
end)

describe("the key=value parser on deep keys #timing", function()
  it("refuses keys of 20,000 and 40,000 parts within the budget, saying the limit", function()
    for _, n in ipairs({ 20000, 40000 }) do
      local line = "x " .. ("a."):rep(n) .. "b=1"
      local name, err = within("kv.parse " .. n, function() return kv.parse(line) end)
      assert.is_nil(name)
      assert.matches("a key of " .. (n + 1) .. " parts; at most 1000", err, 1, true)
    end
  end)

  it("takes a key of 1000 parts within the budget", function()
    local name, args = within("kv.parse", function() return kv.parse("x " .. ("a."):rep(999) .. "b=1") end)
    assert.equal("x", name)
    for _ = 1, 999 do args = args.a end
    assert.same({ b = 1 }, args)
  end)

  -- blockdev-add file.file.(...)driver=file file.file.(...): lines of such keys.
  local function deep_lines(n)
    local deep = ("file."):rep(n)
    return { "blockdev-add " .. deep, "blockdev-add " .. deep .. "driver=", "blockdev-add " .. deep .. "driver=file ",
             "blockdev-add " .. deep .. "driver=file d", "blockdev-add " .. deep .. "driver=file " .. deep }
  end

  it("completes lines of such keys within the budget", function()
    local s = require("support.fixtures").schema_72()
    for _, n in ipairs({ 20000, 40000 }) do
      for _, line in ipairs(deep_lines(n)) do
        within("complete " .. n, function() return complete.for_readline(s, line, 14, #line) end)
      end
    end
  end)

  it(":help answers lines of such keys within the budget", function()
    local s = require("support.fixtures").schema_72()
    for _, n in ipairs({ 20000, 40000 }) do
      for _, line in ipairs(deep_lines(n)) do
        local page, err = within(":help " .. n, function() return help.topic(s, line) end)
        assert.is_true(page ~= nil or err.kind == "usage")
      end
    end
  end)
end)
