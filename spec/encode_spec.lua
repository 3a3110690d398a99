-- qmp.core encode(): Lua values to JSON text, and everything JSON cannot hold.
local core = require "qmp.core"
local tmp = require "support.tmp"

local encode = core.encode
local PRETTY, SORTED, BOTH = { pretty = true }, { sort = true }, { pretty = true, sort = true }

-- The exact error core.encode raises for v (with options opts).
local function fails(v, message, opts)
  local ok, err = pcall(encode, v, opts)
  assert.is_false(ok, "expected an error for " .. tostring(v))
  assert.equal(message, err)
end

-- A float written as JSON reads back as the same float.
local function roundtrips(x)
  local text = encode(x)
  local back = tonumber(text)
  assert.equal("float", math.type(back), text)
  assert.equal(x, back, text)
  return text
end

-- t nested n tables deep, the innermost being {}.
local function nested(n)
  local t = {}
  for _ = 2, n do t = { t } end
  return t
end

-- Objects nested n deep, each { a = <the next>, b = n }, the innermost {}.
local function nested_objects(n)
  local t = {}
  for i = 2, n do t = { b = i, a = t } end
  return t
end

-- The argument error core.encode raises for (v, opts); checks it says why.
local function bad_options(opts, why)
  local ok, err = pcall(encode, { a = 1 }, opts)
  assert.is_false(ok, "expected an error for these options")
  assert.matches("^bad argument #2 to '[%w.]*encode' %(", err)
  assert.equal("(" .. why .. ")", err:match("%(.*%)$"))
end

-- What a fresh lua5.4 process prints for code, with qmp.core loadable.
local function in_new_process(code)
  local prelude = "package.cpath = " .. string.format("%q", package.cpath) .. "; "
  local p = assert(io.popen("lua5.4 -e " .. tmp.quote(prelude .. code) .. " 2>&1"))
  local out = p:read("a")
  assert.is_true(p:close(), out)
  return out
end

describe("qmp.core encode()", function()
  describe("scalars", function()
    it("writes booleans and qmp.null", function()
      assert.equal("true", encode(true))
      assert.equal("false", encode(false))
      assert.equal("null", encode(core.null))
      assert.equal('[null,1]', encode({ core.null, 1 }))
    end)

    it("refuses nil", function()
      fails(nil, "qmp.encode: cannot encode nil")
    end)

    it("requires an argument", function()
      assert.has_error(function() encode() end)
    end)
  end)

  describe("integers", function()
    it("writes their exact digits", function()
      assert.equal("0", encode(0))
      assert.equal("-1", encode(-1))
      assert.equal("1000000000000000", encode(1000000000000000))
      assert.equal("9007199254740993", encode((1 << 53) + 1))
      assert.equal("9223372036854775807", encode(math.maxinteger))
      assert.equal("-9223372036854775808", encode(math.mininteger))
    end)

    it("round-trips at the ends of the integer range", function()
      for _, i in ipairs({ math.maxinteger, math.mininteger, (1 << 53) + 1, -(1 << 53) - 1 }) do
        local back = math.tointeger(encode(i))
        assert.equal("integer", math.type(back))
        assert.equal(i, back)
      end
    end)
  end)

  describe("floats", function()
    it("writes the shortest text that reads back as the same float", function()
      assert.equal("0.1", roundtrips(0.1))
      assert.equal("0.5", roundtrips(0.5))
      assert.equal("3.14159", roundtrips(3.14159))
      roundtrips(1 / 3)
      roundtrips(2 ^ 53 + 2)
      roundtrips(2.0 ^ 63)
      roundtrips(1e300)
      roundtrips(5e-324)
      roundtrips(-1.7976931348623157e308)
    end)

    it("writes 1e15 as a float that reads back, unlike the integer 1000000000000000", function()
      assert.equal("1e+15", roundtrips(1e15))
      assert.equal("1000000000000000", encode(1000000000000000))
    end)

    it("always looks like a float", function()
      assert.equal("1.0", roundtrips(1.0))
      assert.equal("-3.0", roundtrips(-3.0))
      assert.equal("0.0", roundtrips(0.0))
      assert.equal("100000000000000.0", roundtrips(1e14))
    end)

    it("keeps the sign of -0.0", function()
      local text = roundtrips(-0.0)
      assert.equal("-0.0", text)
      assert.equal(-math.huge, 1 / tonumber(text))
    end)

    it("refuses NaN and infinities", function()
      fails(0 / 0, "qmp.encode: cannot encode NaN or infinity")
      fails(math.huge, "qmp.encode: cannot encode NaN or infinity")
      fails({ arguments = { speed = -math.huge } },
        "qmp.encode: cannot encode NaN or infinity at arguments.speed")
    end)

    it("writes a '.' whatever the locale's decimal point", function()
      if not require("support.locale")(finally) then
        pending("no locale with a decimal comma is installed")
        return
      end
      assert.equal("0,5", string.format("%.1f", 0.5))  -- the locale took effect
      assert.equal("0.5", encode(0.5))
      assert.equal("[1.25,-0.0,3.0,1e+300]", encode({ 1.25, -0.0, 3.0, 1e300 }))
    end)
  end)

  describe("strings", function()
    it("escapes quotes, backslashes and control characters", function()
      assert.equal('"say \\"hi\\""', encode('say "hi"'))
      assert.equal('"C:\\\\dir"', encode("C:\\dir"))
      assert.equal('"\\b\\f\\n\\r\\t"', encode("\b\f\n\r\t"))
      assert.equal('"\\u0001\\u001f"', encode("\1\31"))
      assert.equal('"a\\u0000b"', encode("a\0b"))
    end)

    it("writes DEL, '/' and other printable ASCII as they are", function()
      assert.equal('"\127/ ~"', encode("\127/ ~"))
      assert.equal('""', encode(""))
    end)

    it("writes valid UTF-8 as it is", function()
      assert.equal('"caf\u{e9}"', encode("caf\u{e9}"))
      assert.equal('"\u{1F600}"', encode("\u{1F600}"))
      assert.equal('"\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}"',
        encode("\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}"))
    end)

    it("copies long strings with few escapes exactly", function()
      local s = string.rep("abc\u{e9}", 5000) .. "\n" .. string.rep("x", 3000)
      assert.equal('"' .. s:gsub("\n", "\\n") .. '"', encode(s))
    end)

    it("refuses invalid UTF-8, giving the byte where it starts", function()
      fails("\xff", "qmp.encode: invalid UTF-8 at byte 1 of a string")
      fails("ab\x80", "qmp.encode: invalid UTF-8 at byte 3 of a string")
      fails("\xc0\x80", "qmp.encode: invalid UTF-8 at byte 1 of a string")        -- overlong NUL
      fails("\xe0\x80\xaf", "qmp.encode: invalid UTF-8 at byte 1 of a string")    -- overlong '/'
      fails("x\xed\xa0\x80", "qmp.encode: invalid UTF-8 at byte 2 of a string")   -- lone surrogate
      fails("\xf4\x90\x80\x80", "qmp.encode: invalid UTF-8 at byte 1 of a string") -- above U+10FFFF
      fails("\u{e9}\xe2\x82", "qmp.encode: invalid UTF-8 at byte 3 of a string")  -- cut at the end
      fails("\xe2\x82x", "qmp.encode: invalid UTF-8 at byte 1 of a string")       -- cut short
    end)

    it("says which value holds the invalid string", function()
      fails({ execute = "x", arguments = { path = "\xff" } },
        "qmp.encode: invalid UTF-8 at byte 1 of a string at arguments.path")
    end)
  end)

  describe("tables", function()
    it("writes an empty table as an object and a qmp.array as an array", function()
      assert.equal("{}", encode({}))
      assert.equal("[]", encode(core.array({})))
      assert.equal("[]", encode(core.array()))
      assert.equal('{"devices":[]}', encode({ devices = core.array() }))
    end)

    it("writes tables with keys 1..n as arrays", function()
      assert.equal("[1,2,3]", encode({ 1, 2, 3 }))
      assert.equal('["a",true,null,{}]', encode({ "a", true, core.null, {} }))
      assert.equal("[1,2]", encode(core.array({ 1, 2 })))
      assert.equal("[[1],[[2]]]", encode({ { 1 }, { { 2 } } }))
    end)

    it("writes tables with string keys as compact objects", function()
      assert.equal('{"execute":"query-status"}', encode({ execute = "query-status" }))
      assert.equal('{"a":{"b":{"c":[1,{"d":null}]}}}',
        encode({ a = { b = { c = { 1, { d = core.null } } } } }))
      local text = encode({ x = 1, y = 2 })
      assert.is_true(text == '{"x":1,"y":2}' or text == '{"y":2,"x":1}', text)
    end)

    it("escapes keys like strings", function()
      assert.equal('{"a\\"b\\n":1}', encode({ ["a\"b\n"] = 1 }))
      assert.equal('{"1":true}', encode({ ["1"] = true }))
      assert.equal('{"":0}', encode({ [""] = 0 }))
      fails({ ["\xc0\x80"] = 1 }, "qmp.encode: invalid UTF-8 at byte 1 of a key")
    end)

    it("reads tables raw, ignoring their metatables", function()
      local mt = {
        __index = function() error("__index called") end,
        __pairs = function() error("__pairs called") end,
        __len = function() error("__len called") end,
      }
      assert.equal('{"event":"STOP"}', encode(setmetatable({ event = "STOP" }, mt)))
      assert.equal("[7]", encode(setmetatable({ 7 }, mt)))
    end)

    it("writes a table that appears twice, but not inside itself", function()
      local shared = { 1 }
      assert.equal("[[1],[1]]", encode({ shared, shared }))
    end)

    it("refuses sparse arrays", function()
      fails({ 1, nil, 3 }, "qmp.encode: cannot encode a sparse array (no element 2)")
      fails({ [2] = "x" }, "qmp.encode: cannot encode a sparse array (no element 1)")
      fails(core.array({ [1] = 1, [3] = 3 }),
        "qmp.encode: cannot encode a sparse array (no element 2)")
    end)

    it("refuses tables mixing string and integer keys", function()
      fails({ 1, a = 2 }, "qmp.encode: cannot encode a mixed table (both string and integer keys)")
      fails({ arguments = { "x", id = 1 } },
        "qmp.encode: cannot encode a mixed table (both string and integer keys) at arguments")
      fails(core.array({ 1, a = 2 }), "qmp.encode: cannot encode a qmp.array with string keys")
    end)

    it("refuses keys that are neither strings nor positive integers", function()
      fails({ [1.5] = 1 }, "qmp.encode: cannot encode a table with a float key")
      fails({ [true] = 1 }, "qmp.encode: cannot encode a table with a boolean key")
      fails({ [{}] = 1 }, "qmp.encode: cannot encode a table with a table key")
      fails({ [0] = 1 }, "qmp.encode: cannot encode a table with integer key 0 (arrays start at 1)")
      fails({ [-1] = 1, [1] = 2 },
        "qmp.encode: cannot encode a table with integer key -1 (arrays start at 1)")
    end)

    it("refuses a table that contains itself", function()
      local t = {}
      t[1] = t
      fails(t, "qmp.encode: cycle: a table contains itself at [1]")
      local cmd = { execute = "x", arguments = { opts = {} } }
      cmd.arguments.opts.back = cmd.arguments
      fails(cmd, "qmp.encode: cycle: a table contains itself at arguments.opts.back")
    end)

    it("writes tables nested 1000 deep but not 1001", function()
      assert.equal(string.rep("[", 999) .. "{}" .. string.rep("]", 999), encode(nested(1000)))
      fails(nested(1001), "qmp.encode: cannot encode tables nested deeper than 1000 at "
        .. string.rep("[1]", 8) .. "..." .. string.rep("[1]", 8))
    end)
  end)

  describe("other values", function()
    it("refuses functions, threads and userdata, naming where they are", function()
      fails(print, "qmp.encode: cannot encode a function")
      fails({ arguments = { cb = print } }, "qmp.encode: cannot encode a function at arguments.cb")
      fails({ 1, 2, coroutine.create(print) }, "qmp.encode: cannot encode a thread at [3]")
      fails({ x = { ["qom-path"] = { io.stdout } } },
        "qmp.encode: cannot encode a userdata (FILE*) at x.qom-path[1]")
      fails({ ["a b"] = { [""] = print } }, 'qmp.encode: cannot encode a function at ["a b"][""]')
    end)

    it("writes qmp.uint64 boxes as their digits", function()
      assert.equal("18446744073709551615", encode(core.uint64("18446744073709551615")))
      assert.equal("9223372036854775808", encode(core.uint64(math.mininteger)))
      assert.equal("0", encode(core.uint64(0)))
      assert.equal('{"arg":[18446744073709551615]}', encode({ arg = { core.uint64(-1) } }))
    end)
  end)

  describe("options", function()
    local value = { execute = "x", arguments = { b = { 1, 2.5 }, a = core.null, c = {} } }

    it("are compact and in the table's own order by default", function()
      local text = encode(value)
      assert.equal(text, encode(value, nil))
      assert.equal(text, encode(value, {}))
      assert.equal(text, encode(value, { pretty = false, sort = false }))
      assert.is_nil(text:find("[ \n]"), text)
    end)

    it("raise on an unknown option, naming it", function()
      bad_options({ colour = true }, "unknown option 'colour'")
      bad_options({ Pretty = true }, "unknown option 'Pretty'")
      bad_options({ pretty = true, indent = 2 }, "unknown option 'indent'")
      bad_options({ true }, "unknown option (a number key)")
    end)

    it("raise when they are not a table, or an option is not a boolean", function()
      bad_options("pretty", "table expected, got string")
      bad_options(true, "table expected, got boolean")
      bad_options({ pretty = 1 }, "option 'pretty' must be a boolean, not number")
      bad_options({ sort = "yes" }, "option 'sort' must be a boolean, not string")
    end)
  end)

  describe("sort", function()
    it("writes object keys in byte order, at every level", function()
      assert.equal('{"":6,"Z":5,"a":2,"a\\u0000":7,"ab":3,"b":1,"\u{e9}":4}',
        encode({ b = 1, a = 2, ab = 3, ["\u{e9}"] = 4, Z = 5, [""] = 6, ["a\0"] = 7 }, SORTED))
      assert.equal('{"x":[{"a":1,"b":2},{"c":{"d":1,"e":2}}],"y":{}}',
        encode({ y = {}, x = { { b = 2, a = 1 }, { c = { e = 2, d = 1 } } } }, SORTED))
    end)

    it("keeps arrays in their order", function()
      assert.equal('["b","a",[3,1,2]]', encode({ "b", "a", { 3, 1, 2 } }, SORTED))
    end)

    it("gives the same text whatever order the keys were added in", function()
      local forward, backward = {}, {}
      for i = 1, 200 do forward["key" .. i] = i end
      for i = 200, 1, -1 do backward["key" .. i] = i end
      local text = encode(forward, SORTED)
      assert.equal(text, encode(backward, SORTED))
      assert.equal('{"key1":1,"key10":10,"key100":100,"key101":101,', text:sub(1, 47))
    end)

    -- Without sort, the order comes from the string hash seed, which Lua
    -- draws afresh in every process.
    it("gives the same text in every process", function()
      local code = 'local t = {} for i = 1, 64 do t["k" .. i] = { i, { x = i, y = 0 } } end ' ..
                   'io.write(require("qmp.core").encode(t, { sort = true }))'
      local t = {}
      for i = 1, 64 do t["k" .. i] = { i, { x = i, y = 0 } } end
      local expected = encode(t, SORTED)
      assert.equal(expected, in_new_process(code))
      assert.equal(expected, in_new_process(code))
    end)

    it("says where an unencodable value is", function()
      fails({ z = 1, b = { y = { print } }, a = 1 }, "qmp.encode: cannot encode a function at b.y[1]", SORTED)
      fails({ a = { ["\xff"] = 1, b = 2 } }, "qmp.encode: invalid UTF-8 at byte 1 of a key at a", SORTED)
      local cmd = { execute = "x", arguments = { opts = {}, z = 1 } }
      cmd.arguments.opts.back = cmd.arguments
      fails(cmd, "qmp.encode: cycle: a table contains itself at arguments.opts.back", SORTED)
      fails({ 1, a = 2 }, "qmp.encode: cannot encode a mixed table (both string and integer keys)", SORTED)
    end)

    it("writes objects nested 1000 deep but not 1001", function()
      local text = encode(nested_objects(1000), SORTED)
      assert.equal(string.rep('{"a":', 999) .. "{}", text:sub(1, 999 * 5 + 2))
      assert.equal(',"b":1000}', text:sub(-10))
      fails(nested_objects(1001), "qmp.encode: cannot encode tables nested deeper than 1000 at "
        .. string.rep("a", 8, ".") .. "..." .. string.rep(".a", 8), SORTED)
    end)

    it("sorts large objects", function()
      local t, keys = {}, {}
      for i = 1, 20000 do
        local k = string.format("%x", i * 7919)
        t[k] = i
        keys[#keys + 1] = k
      end
      table.sort(keys)  -- hex digits and letters: byte order in any locale
      local text = encode(t, SORTED)
      local i = 0
      for k in text:gmatch('"(%x+)":') do
        i = i + 1
        assert(k == keys[i], "key " .. i)
      end
      assert.equal(20000, i)
    end)
  end)

  describe("pretty", function()
    it("writes one item a line, indented by two spaces, with a space after each colon", function()
      local value = {
        execute = "blockdev-add",
        arguments = { ["node-name"] = "disk0", cache = { direct = true }, devices = core.array(),
                      list = { 1, 2.5, {}, core.null } },
      }
      assert.equal(table.concat({
        '{',
        '  "arguments": {',
        '    "cache": {',
        '      "direct": true',
        '    },',
        '    "devices": [],',
        '    "list": [',
        '      1,',
        '      2.5,',
        '      {},',
        '      null',
        '    ],',
        '    "node-name": "disk0"',
        '  },',
        '  "execute": "blockdev-add"',
        '}',
      }, "\n"), encode(value, BOTH))
    end)

    it("keeps empty objects and arrays and scalars on one line", function()
      assert.equal("{}", encode({}, PRETTY))
      assert.equal("[]", encode(core.array(), PRETTY))
      assert.equal("7", encode(7, PRETTY))
      assert.equal('"a\\nb"', encode("a\nb", PRETTY))
      assert.equal('[\n  [],\n  {}\n]', encode({ core.array(), {} }, PRETTY))
      assert.equal('{\n  "a": "x\\ny"\n}', encode({ a = "x\ny" }, PRETTY))
    end)

    it("reads back as the same value, sorted or not", function()
      local t = { a = { 1, { b = "x", c = { d = core.null } } }, e = 1.5, f = -(1 << 62), g = {} }
      local compact = encode(t, SORTED)
      assert.equal(compact, encode(core.decode(encode(t, PRETTY)), SORTED))
      assert.equal(compact, encode(core.decode(encode(t, BOTH)), SORTED))
    end)

    it("keeps the exact numbers and the checks", function()
      assert.equal('[\n  9223372036854775807,\n  18446744073709551615,\n  0.1,\n  1e+15\n]',
        encode({ math.maxinteger, core.uint64("18446744073709551615"), 0.1, 1e15 }, PRETTY))
      fails({ a = { "\xff" } }, "qmp.encode: invalid UTF-8 at byte 1 of a string at a[1]", BOTH)
      fails({ a = { b = 0 / 0 } }, "qmp.encode: cannot encode NaN or infinity at a.b", PRETTY)
    end)

    it("indents tables nested 1000 deep", function()
      local text = encode(nested(1000), PRETTY)
      local lines = {}
      for line in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
      assert.equal(999 * 2 + 1, #lines)
      assert.equal(string.rep(" ", 2 * 999) .. "{}", lines[1000])
      assert.equal(string.rep(" ", 2 * 998) .. "]", lines[1001])
      assert.equal("]", lines[#lines])
      fails(nested(1001), "qmp.encode: cannot encode tables nested deeper than 1000 at "
        .. string.rep("[1]", 8) .. "..." .. string.rep("[1]", 8), PRETTY)
    end)
  end)

  it("produces large texts in full", function()
    local t = {}
    for i = 1, 20000 do t[i] = { i, "dev" .. i } end
    local text = encode(t)
    assert.equal('[[1,"dev1"],[2,"dev2"],', text:sub(1, 23))
    assert.equal(',[20000,"dev20000"]]', text:sub(-20))
    local n = 0
    for _ in text:gmatch('"dev%d+"') do n = n + 1 end
    assert.equal(20000, n)
  end)
end)
