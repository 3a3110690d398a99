-- qmp.core decode() and decoder(): JSON text to Lua values, and the framer
-- that cuts a QMP byte stream into messages whatever the chunking.
local core = require "qmp.core"
require "qmp.events"  -- installs the event types (core.events[name])
local socket = require "socket"

local cleanup = require("support.cleanup")(after_each)

local decode = core.decode
-- Locals: inside busted every global lookup is slow, and some tests below
-- compare thousands of decoded messages.
local type, next, rawget, rawequal, getmetatable, tostring, error =
  type, next, rawget, rawequal, getmetatable, tostring, error
local mathtype = math.type

local fixture = require("support.fixtures").read

-- Marks an expected qmp.uint64 (an integer in 2^63 .. 2^64-1) by its digits.
local U64 = {}
local function U(digits) return setmetatable({ digits = digits }, U64) end

-- A plain check for hot loops: luassert's assertions cost far more than the
-- decoding they would check thousands of times over.
local function check(ok, message)
  if not ok then error(message, 2) end
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if mathtype(v) then return mathtype(v) .. " " .. tostring(v) end
  if v == core.null then return "null" end
  if type(v) == "table" and getmetatable(v) ~= U64 then return next(v) == nil and "{}" or "a table" end
  return tostring(v)
end

-- Where and how actual differs from expected (path is where we are), or nil.
-- Stricter than assert.same: integers and floats differ, a uint64 is checked by its digits
-- and its metatable, tables are compared raw and, with with_mt, by metatable.
local function slowdiff(expected, actual, with_mt, path)
  if getmetatable(expected) == U64 then
    if mathtype(actual) ~= nil or getmetatable(actual) ~= core.uint64_mt then
      return path .. ": expected a qmp.uint64 " .. expected.digits .. ", got " .. show(actual)
    end
    if tostring(actual) ~= expected.digits then
      return path .. ": expected " .. expected.digits .. ", got " .. tostring(actual)
    end
    return nil
  end
  if type(expected) ~= type(actual) then
    return path .. ": expected " .. show(expected) .. ", got " .. show(actual)
  end
  if type(expected) == "number" then
    if mathtype(expected) ~= mathtype(actual) or expected ~= actual
       or (expected == 0 and 1 / expected ~= 1 / actual) then
      return path .. ": expected " .. show(expected) .. ", got " .. show(actual)
    end
    return nil
  end
  if type(expected) == "userdata" and getmetatable(expected) == core.uint64_mt then
    return slowdiff(U(tostring(expected)), actual, with_mt, path)
  end
  if type(expected) ~= "table" then
    if rawequal(expected, actual) then return nil end
    return path .. ": expected " .. show(expected) .. ", got " .. show(actual)
  end
  if with_mt and getmetatable(expected) ~= getmetatable(actual) then
    return path .. ": different metatables"
  end
  for k, v in next, expected do
    local d = slowdiff(v, rawget(actual, k), with_mt, path .. "[" .. show(k) .. "]")
    if d then return d end
  end
  for k, v in next, actual do
    if rawget(expected, k) == nil then
      return path .. "[" .. show(k) .. "]: unexpected " .. show(v)
    end
  end
  return nil
end

-- The fast check diff() makes first: most comparisons succeed, and building
-- paths for them would cost more than the decoding under test.
local function same(expected, actual, with_mt)
  local te = type(expected)
  if getmetatable(expected) == U64 then return slowdiff(expected, actual, with_mt, "") == nil end
  if te ~= type(actual) then return false end
  if te == "number" then
    return mathtype(expected) == mathtype(actual) and expected == actual
      and (expected ~= 0 or 1 / expected == 1 / actual)
  end
  if te ~= "table" then
    return slowdiff(expected, actual, with_mt, "") == nil
  end
  if with_mt and getmetatable(expected) ~= getmetatable(actual) then return false end
  for k, v in next, expected do
    if not same(v, rawget(actual, k), with_mt) then return false end
  end
  for k in next, actual do
    if rawget(expected, k) == nil then return false end
  end
  return true
end

-- nil when actual is expected, else where and how they differ.
local function diff(expected, actual, with_mt)
  if same(expected, actual, with_mt) then return nil end
  return slowdiff(expected, actual, with_mt, "value")
end

local function assert_same(expected, actual, with_mt)
  local d = diff(expected, actual, with_mt)
  assert(d == nil, d)
end

local function assert_integer(expected, v)
  assert.equal("integer", mathtype(v), "expected the integer " .. expected .. ", got " .. show(v))
  assert.equal(expected, v)
end

local function assert_float(expected, v)
  assert.equal("float", mathtype(v), "expected the float " .. expected .. ", got " .. show(v))
  assert.equal(expected, v)
end

local function assert_uint64(digits, v)
  local d = diff(U(digits), v)
  assert(d == nil, d)
end

-- decode() must fail with kind; returns the error.
local function decode_fails(text, kind)
  local v, err = decode(text)
  assert.is_nil(v, "expected an error for " .. string.format("%q", text:sub(1, 60)))
  assert.is_table(err)
  assert.equal(kind, err.kind)
  assert.equal(core.Error, getmetatable(err))
  assert.equal(err.kind .. ": " .. err.message, tostring(err))
  return err
end

-- Every message d yields until it needs more bytes; an error fails the test.
local function drain(d, out)
  out = out or {}
  while true do
    local msg, err = d:next()
    if msg == nil then
      check(err == nil, err and tostring(err))
      return out
    end
    out[#out + 1] = msg
  end
end

-- The messages of text fed in pieces whose sizes size() gives.
local function decode_chunked(text, size, opts)
  local d = core.decoder(opts)
  local out, pos = {}, 1
  while pos <= #text do
    local n = size(pos)
    d:feed(text:sub(pos, pos + n - 1))
    pos = pos + n
    drain(d, out)
  end
  check(d:pending() == 0, "bytes left over")
  return out
end

local function decode_stream(text, opts)
  return decode_chunked(text, function() return #text end, opts)
end

local function split_in_two(text, at)
  local d = core.decoder()
  local out = drain(d:feed(text:sub(1, at)))
  drain(d:feed(text:sub(at + 1)), out)
  check(d:pending() == 0, "bytes left over")
  return out
end

-- The real QEMU 7.2 session of spec/fixtures/qemu-7.2-session.txt.
local VERSION = { qemu = { micro = 22, minor = 2, major = 7 }, package = "Debian 1:7.2+dfsg-7+deb12u18+b3" }
local function session(ts)
  local function t(i) return { seconds = ts[i][1], microseconds = ts[i][2] } end
  return {
    { QMP = { version = VERSION, capabilities = { "oob" } } },
    { ["return"] = {} },
    { ["return"] = { status = "prelaunch", singlestep = false, running = false }, id = 1 },
    { timestamp = t(1), event = "RESUME", data = {} },
    { ["return"] = {}, id = 2 },
    { timestamp = t(2), event = "STOP", data = {} },
    { ["return"] = {}, id = "s" },
    { id = 3, error = { class = "CommandNotFound", desc = "The command no-such-command has not been found" } },
    { timestamp = t(3), event = "RESET", data = { guest = false, reason = "host-qmp-system-reset" } },
    { ["return"] = {}, id = 4 },
    { timestamp = t(4), event = "DEVICE_TRAY_MOVED", data = { device = "", ["tray-open"] = true, id = "cd0" } },
    { ["return"] = {}, id = 5 },
    { ["return"] = VERSION, id = 6 },
    { ["return"] = "VM status: paused (prelaunch)\r\n", id = 7 },
    { timestamp = t(5), event = "SHUTDOWN", data = { guest = false, reason = "host-qmp-quit" } },
    { ["return"] = {}, id = 8 },
  }
end

local FIXTURES = {
  { "qemu-7.2-session.txt", session({ { 1795288011, 599184 }, { 1795288012, 100241 }, { 1795288013, 103603 },
                                       { 1795288013, 605158 }, { 1795288015, 109144 } }) },
  { "qemu-7.2-pretty.txt", session({ { 1795288016, 636660 }, { 1795288017, 137745 }, { 1795288018, 141385 },
                                      { 1795288018, 642951 }, { 1795288020, 146680 } }) },
}

-- The fixture as QEMU wrote it (\r\n), with \n only, and with no line breaks
-- between messages at all.
local function variants(name)
  local crlf = fixture(name)
  assert.equal(16, select(2, ("\n" .. crlf):gsub("\n{", "")), "messages in " .. name)
  return {
    { "\\r\\n", crlf },
    { "\\n", (crlf:gsub("\r\n", "\n")) },
    { "no newline", (crlf:gsub("}\r?\n{", "}{")) },
  }
end

local function check_typed(list)
  for i, msg in ipairs(list) do
    if type(rawget(msg, "event")) == "string" then
      assert.equal(core.events[rawget(msg, "event")], getmetatable(msg), "message " .. i)
    else
      assert.is_nil(getmetatable(msg), "message " .. i)
    end
  end
end

describe("qmp.core decode()", function()
  describe("values", function()
    it("accepts any JSON value at the top level", function()
      assert_integer(1, decode("1"))
      assert.equal("s", decode('"s"'))
      assert.is_true(decode("true"))
      assert.is_false(decode("false"))
      assert.equal(core.null, decode("null"))
      assert_same({}, decode("[]"))
      assert_same({}, decode("{}"))
      assert_same({ 1, "a", { b = false } }, decode('[1,"a",{"b":false}]'))
    end)

    it("allows whitespace around the value", function()
      assert_same({ a = 1 }, decode(' \t\r\n{"a" : 1}\r\n \t'))
      assert_same({ a = { 1, 2 } }, decode('{\r\n  "a": [\r\n    1,\r\n    2\r\n  ]\r\n}\r\n'))
    end)

    it("keeps JSON null as core.null, in arrays (positions kept) and objects", function()
      assert.equal("userdata", type(core.null))
      local t = decode('[null,1,null,"x",null]')
      assert.equal(5, #t)
      assert.equal(core.null, t[1])
      assert_integer(1, t[2])
      assert.equal(core.null, t[3])
      assert.equal("x", t[4])
      assert.equal(core.null, t[5])
      local o = decode('{"a":null,"b":{"c":null}}')
      assert.equal(core.null, o.a)
      assert.equal(core.null, o.b.c)
    end)

    it("keeps keys case-sensitive", function()
      local v = decode('{"Return":1,"ID":2}')
      assert.is_nil(v["return"])
      assert.is_nil(v.id)
      assert_integer(1, v.Return)
      assert_integer(2, v.ID)
    end)

    it("keeps the last of duplicate keys", function()
      assert_same({ a = 2, b = "x" }, decode('{"a":1,"b":"x","a":2}'))
      assert_same({ a = { 2 } }, decode('{"a":{"z":1},"a":[2]}'))
      -- the exact-integer cursor counts the overwritten numbers too
      local v = decode('{"a":18446744073709551615,"b":1.5,"a":9007199254740993,"c":9223372036854775808}')
      assert_integer(9007199254740993, v.a)
      assert_float(1.5, v.b)
      assert_uint64("9223372036854775808", v.c)
    end)

    it("makes a table per object and array, never shared", function()
      local v = decode('[{},{},[],[]]')
      assert.are_not.equal(v[1], v[2])
      assert.are_not.equal(v[3], v[4])
    end)

    -- so that they encode back as [] (a plain {} is an object)
    it("marks empty arrays, and only them, as qmp.array", function()
      assert.equal(core.array_mt, getmetatable(decode("[]")))
      assert.is_nil(getmetatable(decode("[1]")))
      assert.is_nil(getmetatable(decode("{}")))
      local v = decode('{"a":[],"b":[[],{}],"c":{"d":[]}}')
      assert.equal(core.array_mt, getmetatable(v.a))
      assert.is_nil(getmetatable(v.b))
      assert.equal(core.array_mt, getmetatable(v.b[1]))
      assert.is_nil(getmetatable(v.b[2]))
      assert.is_nil(getmetatable(v.c))
      assert.equal(core.array_mt, getmetatable(v.c.d))
      assert.is_nil(next(v.a))
    end)

    it("requires a string", function()
      assert.has_error(function() decode() end)
      assert.has_error(function() decode({}) end)
    end)
  end)

  describe("numbers", function()
    it("tells floats from integers whatever the read boundaries", function()
      -- An exponent right after a digit makes a float; the e of true/false does not.
      local text = '{"a":1e5,"b":true,"c":2E-3,"d":-0.5,"e":false,"f":18446744073709551615,"g":7}\n'
      local whole = decode_stream(text)[1]
      assert_float(1e5, whole.a)
      assert_float(2e-3, whole.c)
      assert_integer(7, whole.g)
      for at = 1, #text - 1 do
        local parts = split_in_two(text, at)
        assert_float(1e5, parts[1].a)
        assert_float(2e-3, parts[1].c)
        assert_float(-0.5, parts[1].d)
        assert_integer(7, parts[1].g)
        assert_uint64("18446744073709551615", parts[1].f)
      end
    end)

    it("keeps small integers as integers", function()
      assert_integer(0, decode("0"))
      assert_integer(0, decode("-0"))
      assert_integer(-1, decode("-1"))
      assert_integer(42, decode("42"))
      assert_integer(9007199254740991, decode("9007199254740991"))
      assert_integer(-9007199254740991, decode("-9007199254740991"))
    end)

    it("keeps every int64 exact, beyond 2^53", function()
      assert_integer(9007199254740992, decode("9007199254740992"))
      assert_integer(9007199254740993, decode("9007199254740993"))  -- 2^53 + 1: a double rounds it
      assert_integer(-9007199254740993, decode("-9007199254740993"))
      assert_integer(1234567890123456789, decode("1234567890123456789"))
      assert_integer(math.maxinteger, decode("9223372036854775807"))
      assert_integer(math.maxinteger - 1, decode("9223372036854775806"))
      assert_integer(math.mininteger, decode("-9223372036854775808"))
      assert_integer(math.mininteger + 1, decode("-9223372036854775807"))
    end)

    it("boxes 2^63 .. 2^64-1 as qmp.uint64", function()
      assert_uint64("9223372036854775808", decode("9223372036854775808"))
      assert_uint64("9223372036854775809", decode("9223372036854775809"))
      assert_uint64("18446744073709551614", decode("18446744073709551614"))
      assert_uint64("18446744073709551615", decode("18446744073709551615"))
    end)

    it("gives floats beyond the 64-bit ranges", function()
      assert_float(18446744073709551616.0, decode("18446744073709551616"))
      assert_float(-9223372036854775809.0, decode("-9223372036854775809"))
      assert_float(1e30, decode("1000000000000000000000000000000"))
      assert_float(-1e30, decode("-1000000000000000000000000000000"))
    end)

    it("keeps numbers written with a fraction or an exponent as floats", function()
      assert_float(1.0, decode("1.0"))
      assert_float(1000.0, decode("1e3"))
      assert_float(100.0, decode("1E2"))
      assert_float(100.0, decode("1e+2"))
      assert_float(0.01, decode("1e-2"))
      assert_float(-0.5, decode("-0.5"))
      assert_float(9007199254740992.0, decode("9007199254740993.0"))
      assert_float(1.8446744073709552e19, decode("18446744073709551615.0"))
      assert_float(1e19, decode("1e19"))
      local z = decode("-0.0")
      assert_float(0.0, z)
      assert.equal(-math.huge, 1 / z)
      assert_float(math.huge, decode("1e999"))
      assert_float(-math.huge, decode("-1e999"))
    end)

    it("gives timestamps as integers", function()
      local ev = decode('{"timestamp": {"seconds": 1795288011, "microseconds": 599184}, "event": "STOP"}')
      assert_integer(1795288011, ev.timestamp.seconds)
      assert_integer(599184, ev.timestamp.microseconds)
      ev = decode('{"event": "X", "data": {"t": 0.5}, "timestamp": {"seconds": 1795288011, "microseconds": 5}}')
      assert_integer(1795288011, ev.timestamp.seconds)
      assert_integer(5, ev.timestamp.microseconds)
      assert_float(0.5, ev.data.t)
    end)

    it("finds big integers in arrays and nested objects, past strings that look like numbers", function()
      local v = decode('{"a\\"1":"-2 3","k":[1.5,"9",18446744073709551615,{"x-1":9007199254740993}]}')
      assert.equal("-2 3", v['a"1'])
      assert_float(1.5, v.k[1])
      assert.equal("9", v.k[2])
      assert_uint64("18446744073709551615", v.k[3])
      assert_integer(9007199254740993, v.k[4]["x-1"])

      -- the same without any float in the message
      v = decode('{"a\\"1":"-2 3","k":[7,"9",18446744073709551615,{"x-1":9007199254740993}],' ..
                 '"-5":-9223372036854775808}')
      assert_integer(7, v.k[1])
      assert_uint64("18446744073709551615", v.k[3])
      assert_integer(9007199254740993, v.k[4]["x-1"])
      assert_integer(math.mininteger, v["-5"])

      -- escaped backslashes right before a quote, and number-like keys and strings
      v = decode('{"s":"\\\\","1e5":"\\\\\\"12","-0.5":[-1,"1.5e3",9223372036854775808],' ..
                 '"18446744073709551615":9007199254740995,"t":"x\\"y\\\\","n":-9007199254740995}')
      assert.equal("\\", v.s)
      assert.equal('\\"12', v["1e5"])
      assert_integer(-1, v["-0.5"][1])
      assert.equal("1.5e3", v["-0.5"][2])
      assert_uint64("9223372036854775808", v["-0.5"][3])
      assert_integer(9007199254740995, v["18446744073709551615"])
      assert.equal('x"y\\', v.t)
      assert_integer(-9007199254740995, v.n)
    end)

    it("handles floats and big integers in one message", function()
      local v = decode('{"f":0.5,"big":18446744073709551615,"i":9007199254740993,' ..
                       '"neg":-9223372036854775808,"one":1.0,"n":[1e3,42,-0,2E1,' ..
                       '9223372036854775807,18446744073709551616,-0.0,3]}')
      assert_float(0.5, v.f)
      assert_uint64("18446744073709551615", v.big)
      assert_integer(9007199254740993, v.i)
      assert_integer(math.mininteger, v.neg)
      assert_float(1.0, v.one)
      assert_float(1000.0, v.n[1])
      assert_integer(42, v.n[2])
      assert_integer(0, v.n[3])
      assert_float(20.0, v.n[4])
      assert_integer(math.maxinteger, v.n[5])
      assert_float(18446744073709551616.0, v.n[6])
      assert_float(0.0, v.n[7])
      assert_integer(3, v.n[8])
      assert.equal(8, #v.n)
    end)

    it("reads many numbers of every kind in document order", function()
      math.randomseed(1846)
      local text, expected = {}, {}
      -- the decimal digits of the 64 bits of i read as unsigned
      local function udigits(i) local q = (i >> 1) // 5; return string.format("%d%d", q, i - q * 10) end
      local kinds = {
        function() local i = math.random(-1000000, 1000000); return tostring(i), i end,
        function() local i = math.random(0); return string.format("%d", i), i end,
        function() local u = math.random(0) | math.mininteger; return udigits(u), U(udigits(u)) end,
        function() local f = math.random(-1000000, 1000000) + 0.25; return string.format("%.2f", f), f end,
        function() local e = math.random(0, 20); return "1e" .. e, 10.0 ^ e end,
        function() return "-0", 0 end,
        function() return '"-12 3e4\\"5,6]"', '-12 3e4"5,6]' end,
        function() return '{"9-1":' .. "18446744073709551615" .. "}", { ["9-1"] = U("18446744073709551615") } end,
      }
      for i = 1, 400 do
        local t, v = kinds[math.random(#kinds)]()
        text[i], expected[i] = t, v
      end
      local doc = "[" .. table.concat(text, ",") .. "]"
      assert_same(expected, decode(doc))
      local obj = decode('{"x":' .. doc .. ',"y":"18446744073709551615"}')
      assert_same({ x = expected, y = "18446744073709551615" }, obj)
      -- and the same through the stream decoder, in random pieces
      local msgs = decode_chunked('{"x":' .. doc .. '}\n', function() return math.random(1, 40) end)
      assert_same({ { x = expected } }, msgs)
    end)

    it("reads '.' as the decimal point whatever the locale", function()
      if not require("support.locale")(finally) then
        pending("no locale with a decimal comma is installed")
        return
      end
      assert_same({ 1.5, -0.25, 1000.0, 18446744073709551616.0 }, decode("[1.5,-0.25,1e3,18446744073709551616]"))
    end)
  end)

  describe("strings", function()
    it("decodes the escapes", function()
      assert.equal("\n\t\r\b\f\"\\/", decode('"\\n\\t\\r\\b\\f\\"\\\\\\/"'))
      assert.equal("caf\xC3\xA9 \xC3\xA9 \xE2\x82\xAC", decode('"caf\\u00e9 \\u00E9 \\u20ac"'))
      assert.equal("A\x7F\xC2\x80", decode('"\\u0041\\u007f\\u0080"'))
    end)

    it("joins a surrogate pair into one UTF-8 character", function()
      assert.equal("\xF0\x9F\x98\x80", decode('"\\ud83d\\ude00"'))
      assert.equal("<\xF4\x8F\xBF\xBF>", decode('"<\\uDBFF\\uDFFF>"'))
    end)

    it("passes raw UTF-8 and raw control characters through", function()
      assert.equal("caf\xC3\xA9 \xF0\x9F\x98\x80", decode('"caf\xC3\xA9 \xF0\x9F\x98\x80"'))
      assert.equal("\1\31\127a\tb\nc", decode('"\1\31\127a\tb\nc"'))
    end)

    it("rejects \\u0000, which a Lua string could hold but cJSON cuts short", function()
      local err = decode_fails('{"a":"x\\u0000y"}', "protocol")
      assert.matches("\\u0000", err.message, 1, true)
      decode_fails('"\\u0000"', "protocol")
    end)

    it("rejects bad \\u escapes", function()
      local err = decode_fails('"\\uZZZZ"', "protocol")
      assert.matches("invalid \\u escape", err.message, 1, true)
      decode_fails('"\\u12G4"', "protocol")
      decode_fails('"\\u12"', "protocol")
      decode_fails('"\\ud83d"', "protocol")         -- lone high surrogate
      decode_fails('"\\udc00"', "protocol")         -- lone low surrogate
      decode_fails('"\\ud83d\\u0041"', "protocol")  -- high surrogate, no low one
    end)

    it("rejects unknown escapes", function()
      local err = decode_fails('"\\x41"', "protocol")
      assert.matches("invalid escape", err.message, 1, true)
      decode_fails('"\\a"', "protocol")
      decode_fails('"\\U00e9"', "protocol")
      decode_fails('"\\\0"', "protocol")
    end)

    it("rejects a raw NUL byte, in a string or not", function()
      local err = decode_fails('{"a":"x\0y"}', "protocol")
      assert.matches("NUL", err.message)
      decode_fails('{"a":1\0}', "protocol")
      decode_fails('{"a":1}\0', "protocol")
    end)

    it("decodes long strings", function()
      local s = ("0123456789abcdef\xC3\xA9"):rep(100000)
      local v = decode('{"s":"' .. s .. '","n":18446744073709551615}')
      assert.equal(s, v.s)
      assert_uint64("18446744073709551615", v.n)
    end)
  end)

  describe("errors", function()
    it("rejects trailing data", function()
      local err = decode_fails('{"a":1} x', "protocol")
      assert.matches("trailing", err.message)
      decode_fails('{"a":1}{"b":2}', "protocol")
      decode_fails("1 2", "protocol")
      decode_fails('{"a":1}}', "protocol")
    end)

    it("rejects invalid JSON, telling where", function()
      local err = decode_fails('{"a":1,}', "protocol")
      assert.matches("byte 7 of a 8%-byte message", err.message)
      err = decode_fails('{"return": {"a": tru}}', "protocol")
      assert.matches("byte 17 of a 22%-byte message", err.message)
      decode_fails('[1,2', "protocol")
      decode_fails('{"a"}', "protocol")
      decode_fails("{'a':1}", "protocol")
      decode_fails("", "protocol")
      decode_fails("  \r\n", "protocol")
      decode_fails("-", "protocol")
      decode_fails("nul", "protocol")
    end)

    it("accepts 1000 levels of nesting and rejects 1001", function()
      local v = decode(("["):rep(1000) .. ("]"):rep(1000))
      local depth = 0
      while type(v) == "table" do depth = depth + 1; v = v[1] end
      assert.equal(1000, depth)
      local o = decode(('{"a":'):rep(999) .. "[]" .. ("}"):rep(999))
      depth = 0
      while type(o) == "table" do depth = depth + 1; o = o.a end
      assert.equal(1000, depth)

      local err = decode_fails(("["):rep(1001) .. ("]"):rep(1001), "protocol")
      assert.matches("nesting", err.message)
      decode_fails(('{"a":'):rep(1000) .. "[]" .. ("}"):rep(1000), "protocol")
    end)

    it("rejects very deep nesting cleanly", function()
      local err = decode_fails(("["):rep(200000), "protocol")
      assert.matches("nesting", err.message)
      decode_fails(("["):rep(200000) .. ("]"):rep(200000), "protocol")
      decode_fails(('{"a":'):rep(200000), "protocol")
      decode_fails('{"a":"' .. ("["):rep(200000) .. '"} ' .. ("]"):rep(10), "protocol")
      -- brackets inside strings do not count
      assert.equal(("["):rep(200000), decode('"' .. ("["):rep(200000) .. '"'))
    end)
  end)

  describe("events", function()
    it("gives an event the type of its name, the same for every event of that name", function()
      local a = decode('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}')
      local b = decode('{"event": "STOP", "timestamp": {"seconds": 3, "microseconds": 4}}')
      assert.is_table(core.events.STOP)
      assert.equal(core.events.STOP, getmetatable(a))
      assert.equal(getmetatable(a), getmetatable(b))
      assert.equal("STOP", rawget(a, "event"))
    end)

    it("gives data = {} to an event without data, a new table each time", function()
      local a = decode('{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}')
      local b = decode('{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}')
      assert_same({}, rawget(a, "data"))
      assert_same({}, rawget(b, "data"))
      assert.are_not.equal(rawget(a, "data"), rawget(b, "data"))
    end)

    it("keeps the data an event has", function()
      local ev = decode('{"event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}')
      assert_same({ guest = false, reason = "host-qmp-system-reset" }, rawget(ev, "data"))
      assert.equal(core.events.RESET, getmetatable(ev))
      ev = decode('{"event": "RESET", "data": null}')
      assert.equal(core.null, rawget(ev, "data"))
    end)

    it("creates a type for a name never seen before", function()
      local name = "__com.redhat_FOO"
      finally(function() rawset(core.events, name, nil) end)
      assert.is_nil(rawget(core.events, name))
      local ev = decode('{"event": "__com.redhat_FOO", "data": {"x": 18446744073709551615}}')
      local T = rawget(core.events, name)
      assert.is_table(T)
      assert.equal(T, getmetatable(ev))
      assert.equal(name, T.name)
      assert.is_false(T.known)
      assert_uint64("18446744073709551615", rawget(ev, "data").x)
      assert.are_not.equal(core.events.STOP, T)
    end)

    it("leaves a message whose event member is not a string a plain table", function()
      for _, text in ipairs({ '{"event": 5, "return": {}}', '{"event": null}', '{"event": {"a": 1}}',
                              '{"event": ["STOP"]}', '{"event": true}' }) do
        local v = decode(text)
        assert.is_nil(getmetatable(v), text)
        assert.is_nil(rawget(v, "data"), text)
      end
    end)

    it("types only a top-level object", function()
      local v = decode('[{"event": "STOP"}]')
      assert.is_nil(getmetatable(v[1]))
      v = decode('{"return": {"event": "STOP"}}')
      assert.is_nil(getmetatable(v["return"]))
      assert.is_nil(rawget(v["return"], "data"))
    end)

    it("gives no type when no event types are installed, but still data = {}", function()
      local mt = getmetatable(core.events)
      finally(function() setmetatable(core.events, mt) end)
      setmetatable(core.events, nil)
      local ev = decode('{"event": "QMP_SPEC_UNTYPED_EVENT"}')
      assert.is_nil(getmetatable(ev))
      assert_same({}, rawget(ev, "data"))
      assert.is_nil(rawget(core.events, "QMP_SPEC_UNTYPED_EVENT"))
    end)

    -- Types are open for extension (ev:data() could be a method, T.data a
    -- default): the decoder must look at the message's own members only.
    it("gives data = {} even when the type has a member named data", function()
      local name = "QMP_SPEC_TYPE_WITH_DATA"
      finally(function() rawset(core.events, name, nil) end)
      core.events[name].data = function() return "a method" end
      local ev = decode('{"event": "QMP_SPEC_TYPE_WITH_DATA"}')
      assert.equal(core.events[name], getmetatable(ev))
      assert_same({}, rawget(ev, "data"))
      ev = decode('{"event": "QMP_SPEC_TYPE_WITH_DATA", "data": {"a": 1}}')
      assert_same({ a = 1 }, rawget(ev, "data"))
    end)
  end)

  describe("the QEMU 7.2 fixtures", function()
    for _, f in ipairs(FIXTURES) do
      local name, expected = f[1], f[2]
      it("decodes every message of " .. name, function()
        local text = fixture(name)
        local list = decode_stream(text)
        assert.equal(16, #list)
        assert_same(expected, list)
        check_typed(list)
        -- one decode() per message gives the same
        local pieces = {}
        for msg in text:gmatch("%b{}") do pieces[#pieces + 1] = decode(msg) end
        assert.equal(16, #pieces)
        assert_same(list, pieces, true)
      end)
    end
  end)
end)

describe("qmp.core decoder()", function()
  describe("framing", function()
    for _, f in ipairs(FIXTURES) do
      local name, expected = f[1], f[2]
      for _, variant in ipairs(variants(name)) do
        local label, text = variant[1], variant[2]
        describe(name .. " with " .. label .. " between messages", function()
          local whole

          before_each(function()
            whole = decode_stream(text)
            assert.equal(16, #whole)
            assert_same(expected, whole)
          end)

          it("gives the same messages split in two at every byte", function()
            for at = 0, #text do
              local list = split_in_two(text, at)
              local d = diff(whole, list, true)
              check(d == nil, "split at byte " .. at .. ": " .. tostring(d))
            end
          end)

          it("gives the same messages fed one byte at a time", function()
            local list = decode_chunked(text, function() return 1 end)
            assert_same(whole, list, true)
          end)

          it("gives the same messages fed in random pieces", function()
            math.randomseed(72)
            for _ = 1, 200 do
              local max = math.random(1, 200)
              local list = decode_chunked(text, function() return math.random(1, max) end)
              assert_same(whole, list, true)
            end
          end)
        end)
      end
    end

    it("gives several messages fed at once, in order", function()
      local d = core.decoder()
      d:feed('{"a":1}{"b":2}\n{"c":3}\r\n{"d":')
      assert_same({ a = 1 }, d:next())
      assert_same({ b = 2 }, d:next())
      assert_same({ c = 3 }, d:next())
      assert.is_nil(d:next())
      d:feed("4}")
      assert_same({ d = 4 }, d:next())
      assert.is_nil(d:next())
    end)

    it("skips any JSON whitespace between messages", function()
      local list = decode_stream(' \t\r\n{"a":1} \t \r\n\r\n{"b":[ 1 , 2 ]}\n\n\n \t{"c":{}}\r\n   ')
      assert_same({ { a = 1 }, { b = { 1, 2 } }, { c = {} } }, list)
    end)

    it("returns a single nil when it needs more bytes", function()
      local d = core.decoder()
      assert.equal(1, select("#", d:next()))
      assert.is_nil(d:next())
      d:feed('{"a":')
      assert.equal(1, select("#", d:next()))
      assert.is_nil(d:next())
      d:feed("\r\n")
      assert.is_nil(d:next())
      d:feed('"}"}')
      assert_same({ a = "}" }, d:next())
    end)

    it("does not end a message at a bracket inside a string", function()
      local list = decode_chunked('{"a":"}]{[\\"}"}\n{"b":"\\\\"}\n', function() return 1 end)
      assert_same({ { a = '}]{["}' }, { b = "\\" } }, list)
    end)

    it("counts the bytes of a partial message in pending()", function()
      local d = core.decoder()
      assert.equal(0, d:pending())
      d:feed("  \r\n")
      assert.is_nil(d:next())
      assert.equal(0, d:pending())
      d:feed('{"a":')
      assert.is_nil(d:next())
      assert.equal(5, d:pending())
      d:feed('"xy')
      assert.is_nil(d:next())
      assert.equal(8, d:pending())
      d:feed('"}\r\n{')
      assert_same({ a = "xy" }, d:next())
      assert.is_nil(d:next())
      assert.equal(1, d:pending())
      d:feed("}")
      assert_same({}, d:next())
      assert.equal(0, d:pending())
    end)

    it("returns itself from feed and ignores empty feeds", function()
      local d = core.decoder()
      assert.equal(d, d:feed(""))
      assert.equal(d, d:feed('{"a":1}'))
      assert_same({ a = 1 }, d:feed(""):next())
      assert.has_error(function() d:feed() end)
      assert.has_error(function() d:feed({}) end)
    end)

    it("keeps numbers, escapes and state right whatever the split", function()
      local text = '{"a\\"1":"-2 3\\\\","e":"\\u00e9\\ud83d\\ude00\\/","k":[1e3,"9",18446744073709551615,' ..
                   '{"x-1":9007199254740993}],"f":1E2,"g":-0,"h":-9223372036854775808,"i":12}\r\n'
      local expected = { {
        ['a"1'] = "-2 3\\", e = "\xC3\xA9\xF0\x9F\x98\x80/",
        k = { 1000.0, "9", U("18446744073709551615"), { ["x-1"] = 9007199254740993 } },
        f = 100.0, g = 0, h = math.mininteger, i = 12,
      } }
      assert_same(expected, decode_stream(text))
      for at = 0, #text do
        local d = diff(expected, split_in_two(text, at))
        check(d == nil, "split at byte " .. at .. ": " .. tostring(d))
      end
      -- an exponent split from its digits still makes the message hold floats
      local t2 = '{"a":1E2,"b":5}'
      for at = 0, #t2 do
        local d = diff({ { a = 100.0, b = 5 } }, split_in_two(t2, at))
        check(d == nil, "split at byte " .. at .. ": " .. tostring(d))
      end
    end)

    -- A next() that finds no new bytes (once or more) must not forget that
    -- the bytes before ended on a digit: "1", then "e-1}", is the float 0.1.
    it("keeps a number split before its exponent a float across empty next() calls", function()
      for calls = 1, 3 do
        local d = core.decoder()
        d:feed('{"x": 1')
        for _ = 1, calls do assert.is_nil(d:next()) end
        d:feed("e-1}")
        local msg = d:next()
        assert_float(0.1, msg and msg.x)
      end
      -- buffered() frames too: asking it with no new bytes must not forget either
      local d = core.decoder()
      d:feed('{"x": [2, 1')
      assert.is_nil(d:next())
      assert.is_false(d:buffered())
      assert.is_false(d:buffered())
      d:feed("E2]}")
      assert_same({ x = { 2, 100.0 } }, d:next())
    end)

    it("decodes a long message fed in small pieces", function()
      local s = ('"\\\\0123456789\\u00e9'):rep(50000)  -- escapes all along
      local text = '{"s":"' .. s:gsub('"', "") .. '","n":[18446744073709551615,-1]}\n'
      local expected = ("\\0123456789\xC3\xA9"):rep(50000)
      math.randomseed(5)
      local list = decode_chunked(text, function() return math.random(1, 4096) end)
      assert.equal(1, #list)
      assert.equal(expected, list[1].s)
      assert_uint64("18446744073709551615", list[1].n[1])
      assert_integer(-1, list[1].n[2])
    end)
  end)

  describe("buffered()", function()
    it("is true exactly while next() has a message to give", function()
      local d = core.decoder()
      assert.is_false(d:buffered())
      d:feed('{"a":')
      assert.is_false(d:buffered())
      d:feed('1}\r\n{"b":2}\n{"c"')
      assert.is_true(d:buffered())
      assert_same({ a = 1 }, d:next())
      assert.is_true(d:buffered())
      assert_same({ b = 2 }, d:next())
      assert.is_false(d:buffered())
      assert.equal(4, d:pending())
      assert.is_nil(d:next())
      d:feed(":3}")
      assert.is_true(d:buffered())
      assert_same({ c = 3 }, d:next())
      assert.is_false(d:buffered())
      assert.is_nil(d:next())
    end)

    -- buffered() frames the next message; next() must use that frame, not
    -- frame again past it.
    it("never makes next() skip a message, however often it is asked", function()
      local d = core.decoder()
      d:feed('{"a":1}{"b":2}{"c":3}')
      for _ = 1, 3 do assert.is_true(d:buffered()) end
      assert_same({ a = 1 }, d:next())
      for _ = 1, 3 do assert.is_true(d:buffered()) end
      assert_same({ b = 2 }, d:next())
      assert_same({ c = 3 }, d:next())
      assert.is_false(d:buffered())
      assert.is_nil(d:next())
    end)

    -- A frame cached by buffered() must follow its bytes when a large feed
    -- slides the buffer down.
    it("keeps a cached frame right when the buffer moves", function()
      local d = core.decoder()
      d:feed('{"a":1}\n{"b":"' .. ("x"):rep(100) .. '"}\n')
      assert_same({ a = 1 }, d:next())
      assert.is_true(d:buffered())  -- frames b, which no longer starts at byte 0
      local big = ("y"):rep(200000)
      d:feed('{"c":"' .. big)  -- larger than the free space: the bytes slide down
      assert_same({ b = ("x"):rep(100) }, d:next())
      assert.is_false(d:buffered())
      d:feed('"}')
      assert.is_true(d:buffered())
      assert.equal(big, d:next().c)
    end)

    -- The quick scan's findings for an event buffered() framed point into
    -- the buffer: they must not be used once its bytes have moved.
    it("keeps a frame of QEMU's event layout right when the buffer moves or grows", function()
      local function ev(i, len)
        return ('{"timestamp": {"seconds": %d, "microseconds": 2}, "event": "STOP", "data": {"device": "%s"}}\n')
          :format(i, ("d"):rep(len))
      end
      for _, big in ipairs({ 60000, 300000 }) do  -- slides the bytes down; then grows the buffer too
        local d = core.decoder()
        d:feed(ev(1, 10) .. ev(2, 1000))
        assert.equal(1, #d:drain(1))
        assert.is_true(d:buffered())  -- frames event 2, which no longer starts at byte 0
        d:feed(ev(3, big))
        local msg = d:next()
        assert.equal(2, msg.timestamp.seconds)
        assert.equal(("d"):rep(1000), msg.data.device)
        assert.equal(core.events.STOP, getmetatable(msg))
        assert.equal(big, #d:next().data.device)
      end
    end)

    it("counts a framing error, which stays", function()
      local d = core.decoder()
      d:feed('{"a":1}\nx')
      assert.is_true(d:buffered())
      assert_same({ a = 1 }, d:next())
      assert.is_true(d:buffered())
      local msg, err = d:next()
      assert.is_nil(msg)
      assert.equal("protocol", err.kind)
      assert.is_true(d:buffered())
      d = core.decoder({ max_message = 10 })
      d:feed('{"s":"' .. ("x"):rep(20))
      assert.is_true(d:buffered())
      assert.equal("toolarge", select(2, d:next()).kind)
    end)

    it("leaves nothing on the stack and checks its argument", function()
      local d = core.decoder()
      d:feed("x")
      assert.equal(1, select("#", d:buffered()))
      assert.has_error(function() d.buffered({}) end)
    end)
  end)

  describe("events", function()
    it("types events as decode() does", function()
      finally(function() rawset(core.events, "__com.example_BAR", nil) end)
      local list = decode_stream('{"event":"STOP","timestamp":{"seconds":1,"microseconds":2}}\n' ..
                                 '{"event":"STOP","data":{"a":1}}\n{"event":"__com.example_BAR"}\n' ..
                                 '{"event":7,"return":{}}\n')
      assert.equal(core.events.STOP, getmetatable(list[1]))
      assert.equal(core.events.STOP, getmetatable(list[2]))
      assert_same({}, rawget(list[1], "data"))
      assert_same({ a = 1 }, rawget(list[2], "data"))
      assert.equal(rawget(core.events, "__com.example_BAR"), getmetatable(list[3]))
      assert.is_table(getmetatable(list[3]))
      assert.is_nil(getmetatable(list[4]))
      assert.is_nil(rawget(list[4], "data"))
    end)

    -- An error raised while the decoder types an event (here by the events
    -- table's __index; a memory error does the same) must not break the stream.
    it("stays usable after an error raised while typing an event", function()
      local mt = getmetatable(core.events)
      finally(function()
        setmetatable(core.events, mt)
        rawset(core.events, "QMP_SPEC_FAILING_TYPE", nil)
      end)
      local d = core.decoder()
      d:feed('{"event":"QMP_SPEC_FAILING_TYPE"}\n{"return":{},"id":1}\n')
      setmetatable(core.events, { __index = function(_, name) error("no type for " .. name) end })
      assert.has_error(function() d:next() end)
      setmetatable(core.events, mt)
      local rest = drain(d)
      -- the failed message may come again or be dropped; what follows must come
      assert.is_true(#rest >= 1, "nothing after the failed message")
      assert_same({ ["return"] = {}, id = 1 }, rest[#rest])
      if #rest == 2 then assert.equal("QMP_SPEC_FAILING_TYPE", rest[1].event) end
      assert.is_true(#rest <= 2)
    end)
  end)

  describe("errors", function()
    -- d:next() fails with kind, and keeps failing so (sticky) even after more
    -- good bytes; returns the error.
    local function sticky(d, kind, pattern)
      local msg, err = d:next()
      assert.is_nil(msg)
      assert.is_table(err, "expected an error")
      assert.equal(kind, err.kind)
      assert.equal(core.Error, getmetatable(err))
      if pattern then assert.matches(pattern, err.message) end
      d:feed('\n{"return":{}}\n')
      for _ = 1, 3 do
        local m2, err2 = d:next()
        assert.is_nil(m2)
        assert.equal(kind, err2.kind)
        assert.equal(err.message, err2.message)
      end
      return err
    end

    it("stops for good on a top-level value that is not an object", function()
      for _, text in ipairs({ "[1]\n", '"s"\n', "1\n", "null\n", "x", "}", "]" }) do
        local d = core.decoder()
        d:feed(text)
        sticky(d, "protocol", "expected a JSON object")
      end
    end)

    it("stops for good on garbage after a good message", function()
      local d = core.decoder()
      d:feed('{"a":1}\r\nx{"b":2}\n')
      assert_same({ a = 1 }, d:next())
      local err = sticky(d, "protocol", "expected a JSON object")
      assert.matches("'x{", err.message, 1, true)
    end)

    it("stops for good on a bad escape, a \\u0000 or a NUL byte, whatever the split", function()
      -- the first error d gives, past any good message; nil if it needs more bytes
      local function first_error(d)
        while true do
          local msg, err = d:next()
          if msg == nil then return err end
        end
      end
      local cases = {
        { '{"a":"\\x"}', "invalid escape in a string (byte 7 of a message)" },
        { '{"a":"\\u00G0"}', "invalid \\u escape in a string (byte 10 of a message)" },
        { '{"a":"\\u0000"}', "\\u0000 in a string is not supported" },
        { '{"a":"x\0"}', "NUL byte in a message (byte 7 of a message)" },
        { '{"a":1\0}', "NUL byte in a message (byte 6 of a message)" },
        { '{"a":1}\n\0', "expected a JSON object" },
      }
      for _, case in ipairs(cases) do
        local text, expected = case[1], case[2]
        for at = 0, #text do
          local d = core.decoder()
          local err = first_error(d:feed(text:sub(1, at)))
          if not err then err = first_error(d:feed(text:sub(at + 1))) end
          assert(err, "no error for " .. string.format("%q", text) .. " split at " .. at)
          assert.equal("protocol", err.kind)
          assert.matches(expected, err.message, 1, true)
          d:feed('{"b":1}\n')
          local msg, again = d:next()
          assert.is_nil(msg)
          assert.equal(err.message, again.message)
        end
      end
    end)

    it("skips a framed message that is not valid JSON, once", function()
      local d = core.decoder()
      d:feed('{"a":1,}\n{"b":2}\n{"c":tru}{"d":[1,]}{"e":"\\ud83d"}\n{"f":3}\n')
      local msg, err = d:next()
      assert.is_nil(msg)
      assert.equal("protocol", err.kind)
      assert.matches("invalid JSON at byte 7 of a 8%-byte message", err.message)
      assert_same({ b = 2 }, d:next())
      for _ = 1, 3 do
        msg, err = d:next()
        assert.is_nil(msg)
        assert.equal("protocol", err.kind)
      end
      assert_same({ f = 3 }, d:next())
      assert.is_nil(d:next())
    end)

    it("accepts 1000 levels of nesting and rejects 1001 for good", function()
      local ok = '{"a":' .. ("["):rep(999) .. ("]"):rep(999) .. "}\n"
      local list = decode_stream(ok)
      local v, depth = list[1], 0
      while type(v) == "table" do depth = depth + 1; v = v.a or v[1] end
      assert.equal(1000, depth)
      local d = core.decoder()
      d:feed('{"a":' .. ("["):rep(1000) .. ("]"):rep(1000) .. "}\n")
      sticky(d, "protocol", "nesting too deep")
    end)

    it("rejects very deep nesting cleanly, whatever the chunking", function()
      local d = core.decoder()
      local text = '{"a":' .. ("["):rep(200000)
      for i = 1, #text, 65536 do
        d:feed(text:sub(i, i + 65535))
        local msg, err = d:next()
        assert.is_nil(msg)
        if err then break end
      end
      sticky(d, "protocol", "nesting too deep")
      d = core.decoder()
      d:feed(("["):rep(200000))
      sticky(d, "protocol", "expected a JSON object")
    end)
  end)

  describe("max_message", function()
    -- A message of exactly n bytes: {"s":"xxx..."}
    local function message(n)
      return '{"s":"' .. ("x"):rep(n - 8) .. '"}'
    end

    it("accepts a message of exactly max_message bytes", function()
      local text = message(100)
      assert.equal(100, #text)
      local list = decode_stream("  \r\n" .. text .. "\r\n" .. text .. "\n", { max_message = 100 })
      assert.equal(2, #list)
      assert.equal(92, #list[1].s)
      -- fed byte by byte too
      list = decode_chunked(text .. "\n", function() return 1 end, { max_message = 100 })
      assert.equal(1, #list)
    end)

    it("fails for good with toolarge one byte above", function()
      local d = core.decoder({ max_message = 100 })
      d:feed(message(101) .. "\n")
      local msg, err = d:next()
      assert.is_nil(msg)
      assert.equal("toolarge", err.kind)
      assert.matches("max_message %(100 bytes%)", err.message)
      d:feed('{"a":1}\n')
      msg, err = d:next()
      assert.is_nil(msg)
      assert.equal("toolarge", err.kind)
    end)

    it("fails as soon as a partial message is too large", function()
      local d = core.decoder({ max_message = 100 })
      d:feed(message(101):sub(1, 100))
      assert.is_nil(d:next())
      assert.equal(100, d:pending())
      d:feed("x")
      local msg, err = d:next()
      assert.is_nil(msg)
      assert.equal("toolarge", err.kind)
    end)

    it("stops taking bytes once a never-ending message is too large", function()
      local mib = 1 << 20
      local d = core.decoder({ max_message = mib })
      local chunk = ("x"):rep(mib)
      d:feed('{"s":"')
      local failed_at, first
      for i = 1, 100 do
        d:feed(chunk)
        local msg, err = d:next()
        assert.is_nil(msg)
        if err then
          failed_at, first = failed_at or i, first or err
          assert.equal("toolarge", err.kind)
          assert.equal(first.message, err.message)
        end
      end
      assert.equal(1, failed_at)  -- 6 + 1 MiB bytes: already above 1 MiB
      -- what it holds did not grow after the error: later feeds were dropped
      local held = d:pending()
      assert.is_true(held <= mib + 6, "holds " .. held .. " bytes")
      d:feed(chunk)
      assert.equal(held, d:pending())
      local _, err = d:next()
      assert.equal("toolarge", err.kind)
    end)

    it("defaults to 10 MiB", function()
      local big = '{"s":"' .. ("x"):rep((10 << 20) - 8) .. '"}'
      assert.equal(10 << 20, #big)
      local d = core.decoder()
      assert.equal(10 << 20, #d:feed(big):next().s + 8)
      d = core.decoder()
      local _, err = d:feed(big:sub(1, -3) .. 'x"}'):next()
      assert.equal("toolarge", err.kind)
      assert.matches("10485760", err.message)
    end)

    it("checks its options", function()
      assert.has_error(function() core.decoder({ max_message = 0 }) end)
      assert.has_error(function() core.decoder({ max_message = -1 }) end)
      assert.has_error(function() core.decoder({ max_message = 1.5 }) end)
      assert.has_error(function() core.decoder({ max_message = "big" }) end)
      assert.has_error(function() core.decoder(5) end)
      assert.is_userdata(core.decoder())
      assert.is_userdata(core.decoder({}))
    end)
  end)
end)

-- next() decodes a few messages at once, as drain() does, and hands them
-- out one by one: nothing of that may show but the speed.
describe("qmp.core decoder() next(), decoding ahead", function()
  local EVENT = '{"timestamp": {"seconds": %d, "microseconds": 2}, "event": "%s", "data": {"i": %d}}\r\n'
  local function events(from, to)
    local t = {}
    for i = from, to do t[#t + 1] = EVENT:format(i, i % 3 == 0 and "STOP" or "RESUME", i) end
    return table.concat(t)
  end

  it("gives every message once and in order, whatever feed(), drain() and buffered() do between calls", function()
    local text = events(1, 300) .. '{"return": {"x": [1, 2.5]}, "id": "a"}\n' .. events(301, 600)
    local expected = {}
    local ref = core.reference_decoder()
    ref:feed(text)
    drain(ref, expected)
    assert.equal(601, #expected)
    local seed = 1
    local function rng(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    for _ = 1, 20 do
      local d, got, pos = core.decoder(), {}, 1
      while #got < #expected do
        local op = rng(10)
        if op <= 3 and pos <= #text then       -- feed a piece
          local n = rng(700)
          d:feed(text:sub(pos, pos + n - 1))
          pos = pos + n
        elseif op <= 7 then                    -- next()
          local msg, err = d:next()
          assert.is_nil(err)
          got[#got + 1] = msg
          if msg == nil and pos > #text then error("nothing more, with " .. #got .. " messages") end
        elseif op <= 9 then                    -- drain()
          local list, skipped, err, n = d:drain(rng(40))
          assert.is_nil(err)
          assert.equal(0, skipped)
          local evs = 0
          for i = 1, #list do
            got[#got + 1] = list[i]
            if rawget(list[i], "event") then evs = evs + 1 end
          end
          assert.equal(evs, n)
        else                                   -- buffered() says whether next() has one
          local b = d:buffered()
          local msg = d:next()
          assert.equal(b, msg ~= nil)
          got[#got + 1] = msg
        end
      end
      assert.is_false(d:buffered())
      assert.is_nil(d:next())
      for i = 1, #expected do
        local dd = diff(expected[i], got[i], true)
        if dd then error(("message %d: %s"):format(i, dd)) end
      end
    end
  end)

  it("keeps no message it gave", function()
    local d = core.decoder()
    d:feed(events(1, 5))
    local gone = setmetatable({}, { __mode = "v" })
    gone[1] = d:next()
    gone[2] = d:next()
    assert.equal(1, gone[1].data.i)
    collectgarbage()
    collectgarbage()
    assert.is_nil(gone[1])
    assert.is_nil(gone[2])
    assert.equal(3, d:next().data.i)
  end)

  it("gives the error of a message that is not JSON in its place, between the messages around it", function()
    local d = core.decoder()
    d:feed(events(1, 2) .. '{"a": [1,]}\n' .. events(3, 4))
    assert.equal(1, d:next().data.i)
    assert.equal(2, d:next().data.i)
    local msg, err = d:next()
    assert.is_nil(msg)
    assert.equal("protocol", err.kind)
    assert.matches("^invalid JSON", err.message)
    assert.equal(3, d:next().data.i)
    assert.is_true(d:buffered())
    assert.equal(4, d:next().data.i)
    assert.is_false(d:buffered())
  end)

  it("gives the messages before a framing error, then the error for good", function()
    local d = core.decoder()
    d:feed(events(1, 3) .. "x")
    for i = 1, 3 do assert.equal(i, d:next().data.i) end
    for _ = 1, 2 do
      local msg, err = d:next()
      assert.is_nil(msg)
      assert.matches("expected a JSON object", err.message)
    end
  end)

  -- What decoding a message raises (memory, the events table's __index)
  -- comes from the call that gives that message, not from one before.
  it("raises what decoding a message raises from the call that would give it", function()
    local mt = getmetatable(core.events)
    finally(function()
      setmetatable(core.events, mt)
      rawset(core.events, "QMP_SPEC_FAILING_TYPE", nil)
    end)
    local d = core.decoder()
    d:feed('{"return": {}, "id": 1}\n{"event": "QMP_SPEC_FAILING_TYPE"}\n{"return": {}, "id": 2}\n')
    local asked = 0
    setmetatable(core.events, { __index = function(_, name)
      asked = asked + 1
      error("no type for " .. name)
    end })
    assert_same({ ["return"] = {}, id = 1 }, d:next())
    assert.has_error(function() d:next() end, nil)
    setmetatable(core.events, mt)
    local rest = drain(d)
    assert_same({ ["return"] = {}, id = 2 }, rest[#rest])
    assert.is_true(#rest <= 2)
    if #rest == 2 then assert.equal("QMP_SPEC_FAILING_TYPE", rest[1].event) end
    assert.is_true(asked >= 1)
  end)
end)

describe("qmp.core decoder() drain()", function()
  local EVENT = '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "%s"}\n'
  local function ev(name) return EVENT:format(name) end

  it("gives the messages held as a list, with the number of events skipped", function()
    local d = core.decoder()
    d:feed(ev("STOP") .. '{"return": {}, "id": 1}\n' .. ev("RESUME") .. ev("STOP"))
    local list, skipped, err, events = d:drain(10, { STOP = true })
    assert.equal(3, #list)
    assert.equal(1, skipped)
    assert.is_nil(err)
    assert.equal(2, events)  -- the two listed STOPs; the reply is not an event
    assert.equal(4, select("#", d:drain(10)))  -- list, skipped, nil (no error), events
    assert.equal(core.events.STOP, getmetatable(list[1]))
    assert_same({ ["return"] = {}, id = 1 }, list[2])
    assert.equal("STOP", list[3].event)
    assert_same({ seconds = 1, microseconds = 2 }, list[3].timestamp)
    assert_same({}, rawget(list[3], "data"))
  end)

  it("counts the listed messages that are events: those with a name the peer can send, in any layout", function()
    local d = core.decoder()
    d:feed(ev("STOP") .. '{"data": {}, "event": "RESUME"}\n{"event": 5}\n{"QMP": {}}\n' ..
           '{"event": "X"}\n{"return": {"event": "STOP"}}\n')
    local list, skipped, err, events = d:drain(10)
    assert.same({ 6, 0 }, { #list, skipped })
    assert.is_nil(err)
    assert.equal(3, events)  -- STOP (QEMU's layout), RESUME and X (framed whole)
    -- "" and the client's own names (qmp.*) are no events from the peer:
    -- listed for the session to drop as malformed, never skipped.
    local own = ev("") .. ev("qmp.connected") .. '{"event": "qmp\\u002ereconnected"}\n'
    d:feed(own .. ev("qmp") .. ev("STOP"))
    list, skipped, err, events = d:drain(10)
    assert.same({ 5, 0, 2 }, { #list, skipped, events })  -- qmp and STOP
    assert.is_nil(err)
    d:feed(own .. ev("qmp") .. ev("STOP"))
    list, skipped, err, events = d:drain(10, { STOP = true })
    assert.same({ 4, 1, 1 }, { #list, skipped, events })  -- qmp, a name like any other, skipped
    assert.is_nil(err)
    d:feed('{"a": 1}\n{"b": tru}\n')
    list, skipped, err, events = d:drain(10)
    assert.same({ 1, 0, 0 }, { #list, skipped, events })
    assert.equal("protocol", err.kind)
  end)

  it("gives an empty list when it needs more bytes, and the message once it is whole", function()
    local d = core.decoder()
    local text = ev("STOP")
    d:feed(text:sub(1, 20))
    local list, skipped = d:drain(10)
    assert.same({ 0, 0 }, { #list, skipped })
    d:feed(text:sub(21))
    list = d:drain(10)
    assert.equal(1, #list)
    assert.equal(0, #d:drain(10))
  end)

  it("takes at most limit messages, listed or skipped; the rest stays for the next call", function()
    local d = core.decoder()
    d:feed(ev("A") .. ev("B") .. ev("C") .. ev("D") .. ev("E"))
    local list, skipped = d:drain(3, { B = true, C = true, D = true, E = true })
    assert.same({ "B", "C" }, { list[1].event, list[2].event })
    assert.equal(1, skipped)
    assert.is_true(d:buffered())
    list, skipped = d:drain(3)
    assert.same({ 2, 0 }, { #list, skipped })
    assert.is_false(d:buffered())
  end)

  it("ends the list at an error: a framing error comes again, a message that is not JSON once", function()
    local d = core.decoder()
    d:feed('{"a": 1}\n{"b": tru}\n{"c": 3}\nx')
    local list, skipped, err = d:drain(10)
    assert_same({ { a = 1 } }, list)
    assert.equal(0, skipped)
    assert.equal("protocol", err.kind)
    assert.equal(core.Error, getmetatable(err))
    assert.matches("^invalid JSON", err.message)
    list, skipped, err = d:drain(10)
    assert_same({ { c = 3 } }, list)
    assert.equal(0, skipped)
    assert.matches("expected a JSON object", err.message)
    for _ = 1, 2 do
      local again, sk, err2 = d:drain(10)
      assert.same({ 0, 0 }, { #again, sk })
      assert.equal(err.message, err2.message)
    end
  end)

  it("fails with toolarge as next() does", function()
    local d = core.decoder({ max_message = 40 })
    d:feed('{"a": 1}\n' .. ev("STOP"))
    local list, _, err = d:drain(10, {})
    assert.equal(1, #list)
    assert.equal("toolarge", err.kind)
  end)

  it("tells apart names that share a length and their first and last letters", function()
    local d = core.decoder()
    local parts, want = {}, {}
    for i = 1, 200 do
      local name = (i % 3 == 0) and "AXB" or (i % 3 == 1) and "AYB" or ("A" .. ("Z"):rep(50) .. "B")
      parts[#parts + 1] = ev(name)
      if name == "AYB" then want[#want + 1] = i end
    end
    d:feed(table.concat(parts))
    local list, skipped = d:drain(1000, { AYB = true })
    assert.same({ #want, 200 - #want }, { #list, skipped })
    for _, msg in ipairs(list) do assert.equal("AYB", msg.event) end
    d:feed(table.concat(parts))  -- the set may change between calls
    list, skipped = d:drain(1000, { AXB = true })
    assert.same({ 66, 134 }, { #list, skipped })  -- i = 3, 6, ... 198
    for _, msg in ipairs(list) do assert.equal("AXB", msg.event) end
  end)

  it("skips an event framed by buffered() too", function()
    local d = core.decoder()
    d:feed(ev("STOP"))
    assert.is_true(d:buffered())
    local list, skipped = d:drain(10, {})
    assert.same({ 0, 1 }, { #list, skipped })
  end)

  it("reads the interest set raw: its metamethods are not asked", function()
    local d = core.decoder()
    d:feed(ev("STOP"))
    local list, skipped = d:drain(10, setmetatable({}, { __index = function() return true end }))
    assert.same({ 0, 1 }, { #list, skipped })
  end)

  it("checks its arguments", function()
    local d = core.decoder()
    assert.has_error(function() d:drain() end)
    assert.has_error(function() d:drain(0) end)
    assert.has_error(function() d:drain(1.5) end)
    assert.has_error(function() d:drain(1, "STOP") end)
    assert.has_error(function() d.drain({}, 1) end)
    assert.equal(4, select("#", d:drain(1, nil, "ignored")))
  end)

  -- As for next(): an error raised while an event is typed (by the events
  -- table's __index here; a memory error does the same) loses that batch
  -- but not the stream, and the decoder cannot be used from inside.
  it("stays usable after an error raised while typing an event, and refuses re-entrant use", function()
    local mt = getmetatable(core.events)
    finally(function()
      setmetatable(core.events, mt)
      rawset(core.events, "QMP_SPEC_FAILING_TYPE", nil)
    end)
    local d = core.decoder()
    d:feed(ev("STOP") .. ev("QMP_SPEC_FAILING_TYPE") .. '{"return": {}, "id": 1}\n')
    local inner
    setmetatable(core.events, { __index = function(_, name)
      inner = select(2, pcall(d.drain, d, 1))
      error("no type for " .. name)
    end })
    assert.has_error(function() d:drain(10) end)
    assert.matches("re%-entrantly", inner)
    setmetatable(core.events, mt)
    local list, _, err = d:drain(10)
    assert.is_nil(err)
    assert_same({ ["return"] = {}, id = 1 }, list[#list])
    assert.is_true(#list <= 2)
  end)
end)

describe("JSON round trips", function()
  local encode = core.encode
  local SORTED = { sort = true }

  -- decode, then encode: the text back, compact, keys sorted.
  local function again(text)
    return encode(assert(decode(text)), SORTED)
  end

  it("gives arrays back as arrays, empty or not", function()
    assert.equal('{"a":[]}', encode(decode('{"a": []}')))
    assert.equal("[[],[{}]]", encode(decode("[[],[{}]]")))
    assert.equal("[]", encode(decode("[]")))
    assert.equal('{"id":1,"return":[]}', again('{"return": [], "id": 1}'))
    assert.equal('[[[]],[1,[]],{"a":[[],{}]}]', again('[[[]], [1, []], {"a": [[], {}]}]'))
  end)

  it("gives empty arrays back inside events", function()
    local ev = decode('{"event": "QMP_SPEC_ROUND_TRIP", "data": {"devices": [], "nested": {"ids": []}}}')
    finally(function() rawset(core.events, "QMP_SPEC_ROUND_TRIP", nil) end)
    assert.equal(core.events.QMP_SPEC_ROUND_TRIP, getmetatable(ev))
    assert.equal('{"data":{"devices":[],"nested":{"ids":[]}},"event":"QMP_SPEC_ROUND_TRIP"}',
      encode(ev, SORTED))
  end)

  it("gives empty arrays back from the streaming decoder, whatever the chunking", function()
    local text = '{"return": [], "id": 1}\r\n{"return": [[], [1], {"a": []}], "id": 2}\r\n' ..
                 '{"event": "STOP", "data": {"list": []}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'
    local expected = {
      '{"id":1,"return":[]}',
      '{"id":2,"return":[[],[1],{"a":[]}]}',
      '{"data":{"list":[]},"event":"STOP","timestamp":{"microseconds":2,"seconds":1}}',
    }
    for _, list in ipairs({ decode_stream(text), decode_chunked(text, function() return 1 end) }) do
      assert.equal(#expected, #list)
      for i, msg in ipairs(list) do assert.equal(expected[i], encode(msg, SORTED)) end
    end
  end)

  it("gives empty arrays back from a connection's take()", function()
    local srv = assert(socket.bind("127.0.0.1", 0))
    cleanup(function() srv:close() end)
    local _, port = srv:getsockname()
    local conn, connected = assert(core.open_tcp("127.0.0.1", tonumber(port)))
    cleanup(function() conn:close() end)
    require("support.conn").finish(conn, connected)
    local deadline = core.monotime() + TEST_TIMEOUT
    local peer = assert(srv:accept())
    cleanup(function() peer:close() end)
    assert(peer:send('{"return": [], "id": 1}\r\n' ..
                     '{"event": "STOP", "data": {"list": []}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'))
    local got = {}
    while #got < 2 do
      assert(core.monotime() < deadline, "the messages did not arrive")
      local msg = conn:take()
      assert(msg ~= nil, "take() failed")
      if msg then got[#got + 1] = msg else core.poll({ conn:fileno() }, TEST_TIMEOUT) end
    end
    assert.equal('{"id":1,"return":[]}', encode(got[1], SORTED))
    assert.equal('{"data":{"list":[]},"event":"STOP","timestamp":{"microseconds":2,"seconds":1}}',
      encode(got[2], SORTED))
  end)

  describe("of the QEMU 7.2 fixtures", function()
    -- Each message as sorted compact text, through decode then encode twice.
    local function canonical(name)
      local out = {}
      for _, msg in ipairs(decode_stream(fixture(name))) do
        local once = encode(msg, SORTED)
        local back = assert(decode(once))
        assert_same(msg, back, true)
        assert.equal(once, encode(back, SORTED))
        out[#out + 1] = once
      end
      return out
    end

    it("give the same text, keys sorted, through every decode and encode", function()
      local list = canonical("qemu-7.2-session.txt")
      assert.equal(16, #list)
      assert.equal('{"QMP":{"capabilities":["oob"],"version":{"package":"Debian 1:7.2+dfsg-7+deb12u18+b3",' ..
                   '"qemu":{"major":7,"micro":22,"minor":2}}}}', list[1])
      assert.equal('{"return":{}}', list[2])
      assert.equal('{"id":1,"return":{"running":false,"singlestep":false,"status":"prelaunch"}}', list[3])
      assert.equal('{"data":{"device":"","id":"cd0","tray-open":true},"event":"DEVICE_TRAY_MOVED",' ..
                   '"timestamp":{"microseconds":605158,"seconds":1795288013}}', list[11])
    end)

    it("give the same text from QEMU's compact and pretty=on output", function()
      local compact, pretty = canonical("qemu-7.2-session.txt"), canonical("qemu-7.2-pretty.txt")
      assert.equal(#compact, #pretty)
      for i = 1, #compact do
        if not compact[i]:find('"timestamp"', 1, true) then  -- two sessions: only times differ
          assert.equal(compact[i], pretty[i], "message " .. i)
        end
      end
    end)
  end)
end)

describe("JSON round trips with a real QEMU #qemu", function()
  local qemu = require "support.qemu"
  local qmp = require "qmp"

  it("gives query-block-jobs' [] back as [], which transaction accepts", function()
    if not qemu.available() then
      pending("no " .. qemu.binary)
      return
    end
    local machine = qemu.start()
    cleanup(function() machine:stop() end)
    local vm = assert(qmp.connect(machine.sock, { timeout = TEST_TIMEOUT }))
    cleanup(function() vm:close() end)
    local jobs = assert(vm:execute("query-block-jobs"))
    assert.equal("[]", qmp.encode(jobs))
    assert.same({}, assert(vm:execute("transaction", { actions = jobs })))
    local schema = assert(vm:execute("query-qmp-schema", nil, { timeout = 30 }))
    local text = qmp.encode(schema, { sort = true })
    assert.truthy(text:find('"members":[]', 1, true), "an empty array in the schema")
    assert.equal(text, qmp.encode(assert(qmp.decode(text)), { sort = true }))
  end)
end)

describe("qmp.core decoder() big messages", function()
  -- Over 64 KiB a message is taken apart and cJSON parses one member's
  -- value at a time (walk.c, "Piecewise"), so that its whole tree never
  -- sits beside the Lua value: the values must be the ones the whole parse
  -- (qmp.decode) gives, and so must the errors.
  local function through_decoder(text)
    local d = core.decoder()
    d:feed(text .. '\n{"after": true}\n')
    local msg, err = d:next()
    local after = d:next()
    assert.same({ after = true }, after)  -- the stream goes on either way
    return msg, err
  end

  local function items(n, make)
    local list = {}
    for i = 1, n do list[i] = make(i) end
    return table.concat(list, ", ")
  end

  it("gives a real QEMU schema reply as the whole parse does", function()
    local text = '{"return": ' .. fixture("qemu-7.2-schema.json") .. ', "id": "s1"}'
    assert.is_true(#text > 65536)
    assert_same(decode(text), through_decoder(text), true)
  end)

  it("takes nested big containers apart: numbers, escapes, duplicate keys, empty arrays, any layout", function()
    local function item(i)
      return ('{"n": %d, "u": 18446744073709551615, "f": 1.5e300, "z": -0, "b": 9007199254740993, ' ..
              '"s": "tab\\t \\u263a \\ud83d\\ude00 \\"q\\"", "e": [], "o": {}, "t": true, "x": null, ' ..
              '"d": 1, "d": %d, "k\\u00e9y": 0123}'):format(i, -i)
    end
    local inner = "{\n  " .. items(3000, function(i) return ('"m%d" : [ %d , "v" ]'):format(i % 2000, i) end) .. "\n}"
    local text = '{"return": {"list": [' .. items(2000, item) .. '],\r\n\t"inner": ' .. inner ..
                 ', "list": [[' .. items(3000, item) .. ']], "last": "\\u0041"}, "id": {"a": [1]}}'
    local expected = assert(decode(text))
    assert.equal(3000, #expected["return"].list[1])  -- the later "list" won
    assert_same(expected, through_decoder(text), true)
    local pretty = core.encode(expected, { pretty = true })
    assert.is_true(#pretty > 65536)
    assert_same(expected, through_decoder(pretty), true)
  end)

  it("fails a big message as the whole parse does, wherever the fault is", function()
    local body = items(8000, function(i) return ('{"i": %d}'):format(i) end)
    assert.is_true(#body > 65536)
    for _, text in ipairs({
      '{"return": [' .. body .. ', tru]}',            -- a bad piece at the end
      '{"return": [tru, ' .. body .. ']}',            -- at the start
      '{"return": [' .. body .. ',]}',                -- a trailing comma
      '{"return": [' .. body .. '], "id": }',         -- a member without a value
      '{"return": [' .. body .. '] "id": 1}',         -- a missing comma
    }) do
      local _, want = decode(text)
      local msg, err = through_decoder(text)
      assert.is_nil(msg)
      assert.equal("protocol", err.kind)
      assert.equal(want.message, err.message)
    end
  end)

  it("leaves to the whole parse what cJSON reads more laxly than JSON (a byte 1 as a blank)", function()
    local text = '{"return": [' .. items(20000, function(i) return ("%d\1"):format(i) end) .. ']}'
    local v, want = decode(text)
    assert.is_table(v, tostring(want))  -- cJSON takes it: so must the decoder
    local msg, err = through_decoder(text)
    if v ~= nil then assert_same(v, msg, true)
    else assert.equal(want.message, err and err.message) end
  end)
end)
