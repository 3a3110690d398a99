-- vm:schema(): completing event types from the live schema, and validation mode.
local qmp = require "qmp"
local fake = require "support.fake_qmp"
local qemu = require "support.qemu"

local cleanup = require("support.cleanup")(after_each)

-- A tiny schema in query-qmp-schema's shape (QEMU masks type names as numbers).
local SCHEMA = [==[[
  {"name": "str", "meta-type": "builtin", "json-type": "string"},
  {"name": "int", "meta-type": "builtin", "json-type": "int"},
  {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
  {"name": "0", "meta-type": "object", "members": []},
  {"name": "1", "meta-type": "object", "members": [
    {"name": "device", "type": "str"}, {"name": "action", "type": "9"},
    {"name": "nospace", "type": "bool", "default": null}, {"name": "sizes", "type": "[int]", "default": null}]},
  {"name": "9", "meta-type": "enum", "values": ["ignore", "report", "stop"]},
  {"name": "[int]", "meta-type": "array", "element-type": "int"},
  {"name": "STOP", "meta-type": "event", "arg-type": "0"},
  {"name": "__com.example_DISK", "meta-type": "event", "arg-type": "1"}
]]==]

local function fake_vm(after, opts)
  local steps = { { greet = true }, { expect = "qmp_capabilities", reply = fake.reply("{}") },
                  { expect = "query-qmp-schema", reply = fake.reply(SCHEMA) } }
  for _, s in ipairs(after) do steps[#steps + 1] = s end
  local srv = fake.start(steps)
  cleanup(function() srv:stop() end)
  local vm = assert(qmp.connect(srv.path, opts or { timeout = 5 }))
  cleanup(function() vm:close() end)
  return vm
end

describe("vm:schema()", function()
  it("describes events with the members and enum values of this connection, read once", function()
    local vm = fake_vm({ { hold = 5 } })
    local s = assert(vm:schema())
    assert.equal(s, vm:schema())   -- cached: the fake would fail a second query
    local info = s:event_info("__com.example_DISK")
    assert.is_false(info.known)
    assert.is_true(info.in_schema)
    assert.equal("str", info.fields.device.type)
    assert.same({ "ignore", "report", "stop" }, info.fields.action.values)
    assert.is_true(info.fields.nospace.optional)
    assert.equal("array of int", info.fields.sizes.type)
    -- the process-wide type is not rewritten
    assert.is_nil(rawget(qmp.events["__com.example_DISK"], "fields"))
  end)

  it("waits for the schema at most the timeout given", function()
    local vm = fake.client({ { expect = "query-qmp-schema" }, { wait_close = true } }, cleanup)
    local t0 = qmp.monotime()
    local s, err = vm:schema(0.2)
    assert.is_nil(s)
    assert.are.equal("timeout", err.kind)
    assert.matches("within 0.2 s", err.message, 1, true)
    assert.is_true(qmp.monotime() - t0 < 2)
  end)

  it("keeps each connection's schema to itself: two versions in one loop", function()
    local OLD = SCHEMA:gsub('"stop"%]', '"stop", "retry"]')   -- the older QEMU has another enum value
    local a = fake_vm({ { send = fake.event("__com.example_DISK", '{"device": "d0", "action": "stop"}') },
                        { hold = 5 } }, { timeout = 5, validate = true, name = "new" })
    local srv = fake.start({ { greet = true }, { expect = "qmp_capabilities", reply = fake.reply("{}") },
                             { expect = "query-qmp-schema", reply = fake.reply(OLD) },
                             { send = fake.event("__com.example_DISK", '{"device": "d1", "action": "retry"}') },
                             { hold = 5 } })
    cleanup(function() srv:stop() end)
    local b = assert(qmp.connect(srv.path, { timeout = 5, validate = true, name = "old" }))
    cleanup(function() b:close() end)
    local reports, seen = {}, {}
    a.on_error = function(err) reports[#reports + 1] = "a " .. tostring(err) end
    b.on_error = function(err) reports[#reports + 1] = "b " .. tostring(err) end
    local loop = qmp.loop{ a, b }
    loop:on("*", function(ev, vm) seen[#seen + 1] = vm.name .. ":" .. ev.action end)
    assert(loop:run({ timeout = 5, done = function() return #seen >= 2 end }))
    table.sort(seen)
    assert.same({ "new:stop", "old:retry" }, seen)
    assert.same({}, reports)   -- "retry" is valid for the old QEMU only, and was checked against it
    assert.same({ "ignore", "report", "stop" }, a:schema():event_info("__com.example_DISK").fields.action.values)
    assert.same({ "ignore", "report", "stop", "retry" },
                b:schema():event_info("__com.example_DISK").fields.action.values)
  end)

  it("reports events that do not match the live schema, without dropping them", function()
    local E = '{"device": "d0", "action": "stop"}'
    local vm = fake_vm({ { send = fake.event("__com.example_DISK", E)
                              .. fake.event("__com.example_DISK", '{"device": 5, "action": "explode", "extra": 1}')
                              .. fake.event("__com.example_DISK", '{"action": "stop", "sizes": [1, "x"]}')
                              .. fake.event("NOT_IN_SCHEMA") },
                         { hold = 5 } }, { timeout = 5, validate = true })
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 4 end }))
    assert.equal(4, #seen)                 -- nothing dropped
    assert.equal(3, #reports)
    assert.equal(3, vm.stats.invalid)
    assert.equal("schema", reports[1].kind)
    local text = table.concat(reports[1].problems, "|")
    assert.matches("data.device: str expected", text)
    assert.matches("data.action: explode is not one of", text)
    assert.matches("data.extra: not in the schema", text)
    text = table.concat(reports[2].problems, "|")
    assert.matches("data.device: missing", text)
    assert.matches("data.sizes%[2%]: int expected", text)
    assert.matches("no event NOT_IN_SCHEMA", reports[3].message)
  end)

  -- Found by the protocol fuzzer's campaign: the report quoted the peer's
  -- event name as it was, so a newline in it made a report of two lines.
  it("reports an event name with control or non-ASCII bytes in one plain line", function()
    local vm = fake_vm({ { send = fake.event("BAD\\nNAME\\u0001\\u00e9") }, { hold = 5 } },
                       { timeout = 5, validate = true })
    local reports, seen = {}, {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 1 end }))
    local schema_reports = {}
    for _, r in ipairs(reports) do if r.kind == "schema" then schema_reports[#schema_reports + 1] = r end end
    assert.equal(1, #schema_reports)
    local text = tostring(schema_reports[1])
    assert.falsy(text:find("%c"), text)
    assert.truthy(text:find("no event BAD\\nNAME\\u0001\u{e9} in the live schema", 1, true), text)
  end)

  -- Found by the protocol fuzzer: the schema comes from the peer, and a
  -- malformed one made vm:schema() raise, and with validate made every
  -- event raise out of the client's loop.
  it("returns a protocol error for a reply that is not a list of entities", function()
    local srv = fake.start({ { greet = true }, { expect = "qmp_capabilities", reply = fake.reply("{}") },
                             { expect = "query-qmp-schema", reply = fake.reply("5") }, { hold = 5 } })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 5 }))
    cleanup(function() vm:close() end)
    local s, err = vm:schema()
    assert.is_nil(s)
    assert.equal("protocol", err.kind)
    srv = fake.start({ { greet = true }, { expect = "qmp_capabilities", reply = fake.reply("{}") },
                       { expect = "query-qmp-schema", reply = fake.reply('"x"') }, { hold = 5 } })
    cleanup(function() srv:stop() end)
    local vm2
    vm2, err = qmp.connect(srv.path, { timeout = 5, validate = true })
    assert.is_nil(vm2)
    assert.equal("protocol", err.kind)
  end)

  it("follows any schema without raising: malformed entities, types that refer to themselves", function()
    local BAD = [==[[
      5, {"name": 5}, "x", {"meta-type": "event"},
      {"name": "STOP", "meta-type": "event", "arg-type": "A"},
      {"name": "A", "meta-type": "alternate", "members": [7, {"type": "A"}, {"type": "L"}]},
      {"name": "L", "meta-type": "array", "element-type": "L"},
      {"name": "RESET", "meta-type": "event", "arg-type": "O"},
      {"name": "O", "meta-type": "object", "members": [5, {"name": 1}, {"name": "m", "type": "E"}],
       "tag": "m", "variants": [3, {"case": "a", "type": "O"}]},
      {"name": "E", "meta-type": "enum", "values": 9},
      {"name": "RESUME", "meta-type": "event"},
      {"name": "__com.example_X", "meta-type": "event", "arg-type": "P"},
      {"name": "P", "meta-type": "object", "members": 5}
    ]]==]
    local srv = fake.start({ { greet = true }, { expect = "qmp_capabilities", reply = fake.reply("{}") },
                             { expect = "query-qmp-schema", reply = fake.reply(BAD) },
                             { send = fake.event("STOP", '{"x": [1]}') .. fake.event("RESET", '{"m": "a"}')
                                      .. fake.event("RESUME", "5") .. fake.event("__com.example_X", '{"y": 1}') },
                             { hold = 5 } })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 5, validate = true }))
    cleanup(function() vm:close() end)
    local reports, seen = {}, {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    vm:on("*", function(ev) seen[#seen + 1] = ev.event end)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 4 end }))
    assert.same({ "STOP", "RESET", "RESUME", "__com.example_X" }, seen)
    assert.equal(#reports, vm.stats.invalid)
    for _, r in ipairs(reports) do assert.equal("schema", r.kind) end
    local s = assert(vm:schema())
    for _, name in ipairs({ "STOP", "RESET", "RESUME", "__com.example_X" }) do
      assert.equal(name, s:event_info(name).name)
    end
    assert.equal("array", s:describe("L"):sub(1, 5))
  end)
end)

describe("schema.parse", function()
  local parse = require("qmp.schema").parse

  it("gives every field the library reads its documented shape, leaving out what is malformed", function()
    local s = parse(assert(qmp.decode([==[[
      5, {"name": 5, "meta-type": "enum"}, {"name": "nometa"},
      {"name": "c", "meta-type": "command", "arg-type": 3, "ret-type": "O", "allow-oob": "yes", "features": [1, "f"]},
      {"name": "O", "meta-type": "object", "tag": [], "members": [5, {"name": "a"}, {"name": "b", "type": "E",
       "features": ["x", {}]}], "variants": [{"case": "a", "type": 1}, {"case": "b", "type": "O"}]},
      {"name": "A", "meta-type": "alternate", "members": {"type": "O"}},
      {"name": "E", "meta-type": "enum", "values": ["x", 2, "y"]},
      {"name": "N", "meta-type": "enum", "members": [{"name": "p"}, {"name": 7}, {"name": "q"}]},
      {"name": "L", "meta-type": "array", "element-type": null}
    ]]==])))
    assert.same({ "A", "E", "L", "N", "O" }, (function()
      local names = {}
      for name in pairs(s.types) do names[#names + 1] = name end
      table.sort(names)
      return names
    end)())
    local c = s.commands.c
    assert.is_nil(c["arg-type"])
    assert.equal("O", c["ret-type"])
    assert.is_false(c["allow-oob"])
    assert.same({ "f" }, c.features)
    local O = s.types.O
    assert.is_nil(O.tag)
    assert.equal(1, #O.members)
    assert.equal("b", O.members[1].name)
    assert.same({ "x" }, O.members[1].features)
    assert.equal(1, #O.variants)
    assert.equal("b", O.variants[1].case)
    assert.same({}, s.types.A.members)
    assert.same({ "x", "y" }, s.types.E.values)
    assert.same({ "p", "q" }, s.types.N.values)   -- an enum that gives members only
    assert.is_nil(s.types.L["element-type"])
    assert.equal("array of ?", s:describe("L"))
  end)
end)

describe("Schema:validate", function()
  local parse = require("qmp.schema").parse

  local function schema_with(json)
    return parse(assert(qmp.decode(([==[[
      {"name": "int", "meta-type": "builtin", "json-type": "int"},
      {"name": "str", "meta-type": "builtin", "json-type": "string"},
      {"name": "E", "meta-type": "event", "arg-type": "O"}, %s
    ]]==]):format(json))))
  end

  it("writes at most 20 problems, the last one counting the rest", function()
    local s = schema_with([[{"name": "O", "meta-type": "object", "members": [{"name": "a", "type": "[int]"}]},
                            {"name": "[int]", "meta-type": "array", "element-type": "int"}]])
    local a = {}
    for i = 1, 100 do a[i] = "x" .. i end
    local problems = s:validate({ event = "E", data = { a = a, b = 1 } })
    assert.equal(20, #problems)
    assert.equal("data.a[1]: int expected, got string", problems[1])
    assert.equal("data.a[19]: int expected, got string", problems[19])
    assert.equal("... 82 more", problems[20])   -- 100 elements and b
  end)

  it("tells 1 from 1.0 however often it meets them", function()
    local s = schema_with([[{"name": "O", "meta-type": "object", "members": [{"name": "a", "type": "[A]"}]},
                            {"name": "[A]", "meta-type": "array", "element-type": "A"},
                            {"name": "A", "meta-type": "alternate", "members": [{"type": "int"}, {"type": "str"}]}]])
    assert.same({ "data.a[2]: matches no branch of the alternate", "data.a[4]: matches no branch of the alternate" },
                s:validate({ event = "E", data = { a = { 1, 1.0, 1, 1.0, "1" } } }))
  end)

  -- A union's variant is an object in QAPI; a peer's schema may name any type.
  it("takes the members of a union's object variants only", function()
    local s = schema_with([[{"name": "O", "meta-type": "object", "members": [{"name": "k", "type": "str"}],
                             "tag": "k", "variants": [{"case": "a", "type": "A"}, {"case": "b", "type": "P"},
                                                      {"case": "b", "type": "P"}]},
                            {"name": "A", "meta-type": "alternate", "members": [{"type": "int"}]},
                            {"name": "P", "meta-type": "object", "members": [{"name": "p", "type": "int"}],
                             "tag": "p", "variants": [{"case": 1, "type": "O"}]}]])
    assert.is_nil(s:validate({ event = "E", data = { k = "a" } }))
    assert.same({ "data.q: not in the schema" }, s:validate({ event = "E", data = { k = "a", q = 1 } }))
    assert.is_nil(s:validate({ event = "E", data = { k = "b", p = 1 } }))
    assert.same({ "data.p: missing" }, s:validate({ event = "E", data = { k = "b" } }))
  end)
end)

describe("the live schema of a real QEMU #qemu", function()
  it("describes the events and finds those QEMU really sends valid", function()
    local machine = qemu.start({ args = { "-device", "ide-cd,id=cd0,bus=ide.1" } })
    cleanup(function() machine:stop() end)
    local vm = assert(qmp.connect(machine.sock, { timeout = 10, validate = true }))
    cleanup(function() vm:close() end)
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = tostring(err) end
    local s = assert(vm:schema())
    local n = 0
    for _ in pairs(s.events) do n = n + 1 end
    assert.is_true(n > 40)
    assert.same({ "none", "host-error", "host-qmp-quit", "host-qmp-system-reset", "host-signal", "host-ui",
                  "guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load" },
                s:event_info("SHUTDOWN").fields.reason.values)
    assert.is_true(s:event_info("BLOCK_IO_ERROR").in_schema)
    assert(vm:execute("cont")); assert(vm:wait("RESUME", nil, 5))
    assert(vm:execute("stop")); assert(vm:wait("STOP", nil, 5))
    assert(vm:execute("system_reset")); assert(vm:wait("RESET", nil, 5))
    assert(vm:execute("eject", { id = "cd0", force = true })); assert(vm:wait("DEVICE_TRAY_MOVED", nil, 5))
    assert(vm:execute("quit")); assert(vm:wait("SHUTDOWN", nil, 5))
    assert.same({}, reports)
    assert.equal(0, vm.stats.invalid)
  end)
end)
