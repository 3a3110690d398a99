-- qmp.cli.pretty: results and events as the shell prints them.
local qmp = require "qmp"
local pretty = require "qmp.cli.pretty"
local fake = require "support.fake_qmp"

local function strip(text)
  return (text:gsub("\27%[[%d;]*m", ""))
end

local function decode(text)
  return assert(qmp.decode(text))
end

describe("pretty.format", function()
  it("prints a short object of scalars on one line, keys sorted", function()
    assert.equal('{"running": false, "singlestep": false, "status": "prelaunch"}',
                 pretty.format(decode('{"status": "prelaunch", "singlestep": false, "running": false}')))
  end)

  it("indents nested values, one member a line", function()
    local reply = decode([[{"return": [{"device": "ide1-cd0", "locked": false, "removable": true,
      "inserted": {"ro": true, "drv": "raw", "file": "/tmp/cd.iso", "cache": {"direct": false}},
      "tray_open": false, "type": "unknown", "dirty": [], "extra": {}, "n": null}]}]])
    assert.equal(table.concat({
      "[",
      "  {",
      '    "device": "ide1-cd0",',
      '    "dirty": [],',
      '    "extra": {},',
      '    "inserted": {',
      '      "cache": {"direct": false},',
      '      "drv": "raw",',
      '      "file": "/tmp/cd.iso",',
      '      "ro": true',
      "    },",
      '    "locked": false,',
      '    "n": null,',
      '    "removable": true,',
      '    "tray_open": false,',
      '    "type": "unknown"',
      "  }",
      "]" }, "\n"), pretty.format(reply["return"]))
  end)

  it("tells an empty array from an empty object", function()
    assert.equal("[]", pretty.format(decode("[]")))
    assert.equal("{}", pretty.format(decode("{}")))
    assert.equal("[]", pretty.format(qmp.array{}))
    assert.equal("{}", pretty.format({}))
    assert.equal('{"jobs": [], "props": {}}', pretty.format(decode('{"jobs": [], "props": {}}')))
  end)

  it("writes numbers exactly: integers, floats that read back, uint64 digits", function()
    assert.equal('{"big": 18446744073709551615, "f": 0.1, "i": 9007199254740993, "neg": -5, "one": 1.0}',
                 pretty.format(decode('{"big": 18446744073709551615, "i": 9007199254740993, "f": 0.1, "one": 1.0, "neg": -5}'),
                               { width = 100 }))
    assert.equal("[1.0, 0.1, 1e+300]", pretty.format(qmp.array{ 1.0, 0.1, 1e300 }))
    assert.equal("18446744073709551615", pretty.format(qmp.uint64("18446744073709551615")))
  end)

  it("quotes and escapes strings; bytes that are not UTF-8 show as \\xNN", function()
    assert.equal([["a \"q\" \\ b\nc\td\u0001"]], pretty.format('a "q" \\ b\nc\td\1'))
    assert.equal('"été"', pretty.format("été"))
    assert.equal([["\xff\xfe"]], pretty.format("\255\254"))
  end)

  it("breaks a line of scalars that does not fit the width", function()
    local list = qmp.array{}
    for i = 1, 30 do list[i] = i * 1000 end
    local text = pretty.format({ list = list })
    assert.matches('^{\n  "list": %[\n    1000,\n    2000,\n', text)
    for line in text:gmatch("[^\n]+") do assert.is_true(#line <= 80) end
    -- the inner array starts at column 10 and is 9 wide
    assert.equal('{\n  "list": [1, 2, 3]\n}', pretty.format({ list = { 1, 2, 3 } }, { width = 19 }))
    assert.equal('{\n  "list": [\n    1,\n    2,\n    3\n  ]\n}', pretty.format({ list = { 1, 2, 3 } }, { width = 18 }))
    assert.equal('{\n    "a": [\n        {"b": 1}\n    ]\n}', pretty.format({ a = { { b = 1 } } }, { indent = 4 }))
  end)

  it("shows Lua values JSON lacks without failing", function()
    assert.equal("nil", pretty.format(nil))
    local t = { name = "loop" }
    t.self = t
    assert.equal('{\n  "name": "loop",\n  "self": <cycle>\n}', pretty.format(t))
    assert.equal('{[1]: "a", "k": true}', pretty.format({ "a", k = true }))
    assert.matches("^function: ", pretty.format(print))
  end)

  it("colours keys, strings, numbers and literals distinctly, and only when asked", function()
    local v = decode('{"s": "x", "n": 1, "b": true, "z": null, "list": [1, "y"]}')
    local plain = pretty.format(v)
    assert.is_nil(plain:find("\27", 1, true))
    local coloured = pretty.format(v, { colour = true })
    assert.equal(plain, strip(coloured))
    local function code_of(pattern)
      return coloured:match("\27%[([%d;]*)m" .. pattern)
    end
    local key, str, num, lit = code_of('"s"'), code_of('"x"'), code_of("1"), code_of("true")
    assert.equal(lit, code_of("null"))
    local codes = { [key] = true, [str] = true, [num] = true, [lit] = true }
    local n = 0
    for _ in pairs(codes) do n = n + 1 end
    assert.equal(4, n)
  end)

  it("refuses an unknown option, naming the right one", function()
    assert.has_error(function() pretty.format({}, { color = true }) end)
    local ok, err = pcall(pretty.format, {}, { color = true })
    assert.is_false(ok)
    assert.matches('did you mean "colour"', err, 1, true)
  end)
end)

describe("pretty.qemu_version", function()
  it("reads a greeting's version, and any greeting without raising", function()
    assert.equal("QEMU 7.2.22", pretty.qemu_version(assert(qmp.decode(fake.greeting))))
    assert.equal("QEMU ?.?.?", pretty.qemu_version({ QMP = { capabilities = {} } }))
    assert.equal("QEMU ?.?.?", pretty.qemu_version({ QMP = { version = "9" } }))
    assert.equal("QEMU 9.?.?", pretty.qemu_version({ QMP = { version = { qemu = { major = 9, minor = 1.5, micro = "x" } } } }))
  end)
end)

describe("pretty.event_line", function()
  local function event(text)
    local ev = decode(text)
    return setmetatable(ev, qmp.events[ev.event])
  end

  it("is tostring(ev): time, name, members", function()
    local ev = event('{"timestamp": {"seconds": 1795288013, "microseconds": 103603}, "event": "RESET", '
                     .. '"data": {"guest": false, "reason": "host-qmp-system-reset"}}')
    local line = pretty.event_line(ev)
    assert.equal(tostring(ev), line)
    assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.103603 RESET reason=host%-qmp%-system%-reset guest=false$", line)
  end)

  it("colours the time, the name and the member names, the text staying the same", function()
    local ev = event('{"timestamp": {"seconds": 1795288013, "microseconds": 5}, "event": "BLOCK_IO_ERROR", '
                     .. '"data": {"device": "", "node-name": "d0", "operation": "read", "action": "stop", '
                     .. '"reason": "Input/output error x=1", "nospace": false, "extra": {"k": "a b=c"}}}')
    local line = pretty.event_line(ev, { colour = true })
    assert.equal(tostring(ev), strip(line))
    assert.matches("\27%[[%d;]*mBLOCK_IO_ERROR\27%[0m", line)
    for _, key in ipairs({ "device", "node-name", "operation", "action", "reason", "nospace", "extra" }) do
      assert.truthy(line:find("\27[34m" .. key .. "\27[0m=", 1, true), key)
    end
    -- text inside values is never taken for a member name
    assert.is_nil(line:find("\27[34mx\27[0m", 1, true))
    assert.is_nil(line:find("\27[34mb\27[0m", 1, true))
  end)

  it("takes a plain decoded event too, and events without a clock", function()
    local ev = decode('{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "STOP"}')
    assert.equal("(no time) STOP", pretty.event_line(ev))
    assert.equal("(no time) STOP", strip(pretty.event_line(ev, { colour = true })))
  end)
end)
