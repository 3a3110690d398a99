-- qmp.cli.kv: qmp-shell style command lines, and telling them from Lua.
local qmp = require "qmp"
local kv = require "qmp.cli.kv"

-- The schema a real QEMU 7.2 sends (query-qmp-schema, recorded as is).
local schema_72 = require("support.fixtures").schema_72

-- The JSON QEMU would receive for the arguments of line.
local function sent(line)
  local name, args = kv.parse(line)
  assert(name, args)
  return qmp.encode(args, { sort = true })
end

describe("kv.parse", function()
  it("reads a command without arguments as an empty arguments object", function()
    local name, args = kv.parse("query-block")
    assert.equal("query-block", name)
    assert.same({}, args)
    assert.equal("{}", qmp.encode(args))
    assert.equal("query-status", (kv.parse("   query-status   ")))
  end)

  it("reads key=value words: JSON when they parse as JSON, else the text", function()
    local name, args = kv.parse("block-job-cancel device=job0 force=true")
    assert.equal("block-job-cancel", name)
    assert.same({ device = "job0", force = true }, args)

    args = select(2, kv.parse("x size=1048576 speed=0.5 off=false n=null dev=ide0-hd0 path=/tmp/a.img e= word=True"))
    assert.equal("integer", math.type(args.size))
    assert.equal(1048576, args.size)
    assert.equal("float", math.type(args.speed))
    assert.equal(0.5, args.speed)
    assert.is_false(args.off)
    assert.equal(qmp.null, args.n)
    assert.equal("ide0-hd0", args.dev)
    assert.equal("/tmp/a.img", args.path)
    assert.equal("", args.e)
    assert.equal("True", args.word)  -- JSON literals are lower case
  end)

  it("keeps quoted text whole: JSON strings, single-quoted values", function()
    local _, args = kv.parse([[human-monitor-command command-line="info block" a='two  words' pw="1234" q="say \"hi\""]])
    assert.equal("info block", args["command-line"])
    assert.equal("two  words", args.a)
    assert.equal("1234", args.pw)     -- digits meant as text: quote them
    assert.equal('say "hi"', args.q)
  end)

  it("builds nested objects from dotted keys", function()
    local _, args = kv.parse("blockdev-add driver=qcow2 node-name=d0 file.driver=file file.filename=/tmp/a.qcow2 a.b.c=1")
    assert.same({ driver = "qcow2", ["node-name"] = "d0", file = { driver = "file", filename = "/tmp/a.qcow2" },
                  a = { b = { c = 1 } } }, args)
    -- up to 1000 parts, as deep as JSON nests
    _, args = kv.parse("x " .. ("a."):rep(999) .. "b=1 " .. ("a."):rep(999) .. "c=2")
    for _ = 1, 999 do args = args.a end
    assert.same({ b = 1, c = 2 }, args)
  end)

  it("takes JSON objects and arrays as values, spaces included, arrays staying arrays", function()
    assert.equal('{"actions":[],"b":{"a":[1,2],"c":"d e"},"e":{}}',
                 sent('transaction actions=[] b={"a": [1, 2], "c": "d e"} e={}'))
    assert.equal('{"caps":[{"capability":"xbzrle","state":true}]}',
                 sent('migrate-set-capabilities caps=[{"capability": "xbzrle", "state": true}]'))
    assert.equal('{"a":{"b":[]}}', sent('x a={"b": []}'))
  end)

  it("takes one JSON object as all the arguments", function()
    local name, args = kv.parse('transaction {"actions": [], "properties": {"completion-mode": "grouped"}}')
    assert.equal("transaction", name)
    assert.equal('{"actions":[],"properties":{"completion-mode":"grouped"}}', qmp.encode(args, { sort = true }))
  end)

  it("says what to fix when a line cannot be read", function()
    local cases = {
      -- line, words the message must hold
      { "x a.b=1 a=2", "a is given both as a value and as an object" },
      { "x a=2 a.b=1", "a is given both as a value and as an object" },
      { "x a=1 a=2", "a is given twice" },
      { "x a.b={} a.b={}", "a.b is given twice" },
      { 'x a={"b": 1} a.c=2', "a is given both as a value and as an object (a.c)" },
      { "x a.b.c=1 a.b=2", "a.b is given both as a value and as an object (a.b.…)" },
      { "x " .. ("a."):rep(1000) .. "b=1", "a.a.a.a.a.a.a.a.a.a.…: a key of 1001 parts; at most 1000 (JSON nests" },
      { "block-job-cancel job0", "job0: expected key=value" },
      { 'x {"a": ', "not a valid JSON object" },
      { "x [1, 2]", "expected key=value" },
      { 'x a="b c', "not closed (missing \")" },
      { "x a='b c", "not closed (missing ')" },
      { 'x a={"b": 1', "not closed (missing } or ])" },
      { "x a={b: 1}", "not valid JSON" },
      { 'x a="\\q"', "not valid JSON" },
      { "x .a=1", "empty name in the key" },
      { "x a..b=1", "empty name in the key" },
      { "x =1", "give key=value" },
      { "a=1 b=2", "the command name comes first" },
      { "   ", "type a command name" },
    }
    for _, c in ipairs(cases) do
      local name, err = kv.parse(c[1])
      assert.is_nil(name, c[1])
      assert.is_string(err, c[1])
      assert.truthy(err:find(c[2], 1, true), ("%s: %q lacks %q"):format(c[1], err, c[2]))
    end
  end)
end)

describe("kv.pairs", function()
  it("reads argv words, already split by the shell", function()
    local args = assert(kv.pairs({ "command-line=info block", "n=5", "a.b=x" }))
    assert.same({ ["command-line"] = "info block", n = 5, a = { b = "x" } }, args)
    assert.same({}, kv.pairs({}))
    local none, err = kv.pairs({ "status" })
    assert.is_nil(none)
    assert.matches("status: expected key=value", err, 1, true)
  end)
end)

describe("kv.split", function()
  it("splits at spaces outside strings, quoted values and JSON", function()
    assert.same({ "a=1", 'b="x y"', "c='p q'", 'd={"e": [1, 2]}', "f=it's" },
                kv.split([[  a=1 b="x y"   c='p q' d={"e": [1, 2]} f=it's ]]))
    assert.same({}, kv.split("   "))
  end)
end)

describe("kv.looks_like_command", function()
  local s = schema_72()

  it("takes commands of the live schema, dashed names and name key=value as QMP", function()
    for _, line in ipairs({ "query-status", "stop", "cont", "quit", "block-job-cancel device=job0 force=true",
                            "  query-block  ", "transaction {\"actions\": []}", "device_add driver=e1000",
                            "blockdev-add driver=qcow2 file.driver=file" }) do
      assert.is_true(kv.looks_like_command(line, s), line)
    end
    -- without a schema: the dash and key=value rules still hold
    assert.is_true(kv.looks_like_command("query-statsu"))
    assert.is_true(kv.looks_like_command("device_add driver=e1000"))
  end)

  it("leaves Lua to Lua", function()
    for _, line in ipairs({ 'vm:execute("query-block")', "x = 1", "local a=1", "print(1-2)", "n-1", "a.b = 1",
                            "f {a=1}", "x==1", "return a", ":help query-block", "", "-- a comment",
                            "print 'query-block'", "for i=1,3 do end" }) do
      assert.is_false(kv.looks_like_command(line, s), line)
    end
    assert.is_false(kv.looks_like_command("stop"))  -- a bare name needs the schema to be a command
  end)
end)
