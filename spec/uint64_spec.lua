-- qmp.core uint64(): boxed unsigned integers up to 2^64-1.
local core = require "qmp.core"

local uint64 = core.uint64
local MAX = "18446744073709551615"  -- 2^64-1

describe("qmp.core uint64()", function()
  describe("construction", function()
    it("takes a string of decimal digits over the whole unsigned range", function()
      assert.equal(MAX, tostring(uint64(MAX)))
      assert.equal("9223372036854775808", tostring(uint64("9223372036854775808")))
      assert.equal("0", tostring(uint64("0")))
      assert.equal("7", tostring(uint64("007")))
    end)

    it("takes a Lua integer as its 64 bits", function()
      assert.equal(MAX, tostring(uint64(-1)))
      assert.equal("9223372036854775808", tostring(uint64(math.mininteger)))
      assert.equal("9223372036854775807", tostring(uint64(math.maxinteger)))
      assert.equal("42", tostring(uint64(42)))
    end)

    it("always returns a box, even for small values", function()
      local u = uint64(1)
      assert.equal("userdata", type(u))
      assert.equal(core.uint64_mt, getmetatable(u))
    end)

    it("copies a box", function()
      local u = uint64(MAX)
      local v = uint64(u)
      assert.is_true(u == v)
      assert.is_false(rawequal(u, v))
    end)

    it("refuses anything but decimal digits", function()
      for _, bad in ipairs({ "", "-1", "+1", " 1", "1 ", "0x10", "1e3", "1.0", "12a", "1\0" }) do
        assert.has_error(function() uint64(bad) end,
          "bad argument #1 to 'uint64' (not a string of decimal digits)")
      end
    end)

    it("refuses values above 2^64-1", function()
      assert.has_error(function() uint64("18446744073709551616") end,
        "bad argument #1 to 'uint64' (above 18446744073709551615)")
      assert.has_error(function() uint64("100000000000000000000") end,
        "bad argument #1 to 'uint64' (above 18446744073709551615)")
    end)

    it("refuses floats and other types", function()
      assert.has_error(function() uint64(1.5) end)
      assert.has_error(function() uint64(2.0) end)
      assert.has_error(function() uint64() end)
      assert.has_error(function() uint64({}) end)
      assert.has_error(function() uint64(true) end)
    end)
  end)

  describe("methods", function()
    it("tostring gives the exact digits", function()
      local u = uint64(MAX)
      assert.equal(MAX, u:tostring())
      assert.equal(MAX, tostring(u))
    end)

    it("tonumber gives the nearest float", function()
      assert.equal(2.0 ^ 64, uint64(MAX):tonumber())
      assert.equal("float", math.type(uint64(3):tonumber()))
      assert.equal(3.0, uint64(3):tonumber())
    end)

    it("bits gives the same 64 bits as a Lua integer", function()
      assert.equal(-1, uint64(MAX):bits())
      assert.equal(math.mininteger, uint64("9223372036854775808"):bits())
      assert.equal(5, uint64("5"):bits())
      assert.equal("integer", math.type(uint64("5"):bits()))
    end)

    it("raise when called on something else", function()
      assert.has_error(function() uint64(1).tostring({}) end)
      assert.has_error(function() uint64(1).bits("1") end)
    end)
  end)

  describe("metatable", function()
    it("is exported as uint64_mt and named qmp.uint64", function()
      assert.equal("table", type(core.uint64_mt))
      assert.equal("qmp.uint64", core.uint64_mt.__name)
    end)

    it("survives loading the module twice", function()
      local saved = package.loaded["qmp.core"]
      finally(function() package.loaded["qmp.core"] = saved end)
      local u = uint64(MAX)
      package.loaded["qmp.core"] = nil
      local again = require "qmp.core"
      assert.equal(core.uint64_mt, again.uint64_mt)
      assert.equal(MAX, u:tostring())
      assert.is_true(again.uint64(-1) == u)
      assert.equal(MAX, again.encode(u))
    end)
  end)

  describe("comparison", function()
    it("makes boxes equal by value", function()
      assert.is_true(uint64(MAX) == uint64(-1))
      assert.is_false(uint64(1) == uint64(2))
      assert.is_true(uint64(1) ~= uint64(2))
    end)

    it("never makes a box equal to a plain number", function()
      -- Lua only consults __eq when both operands are userdata.
      assert.is_false(uint64(1) == 1)
    end)

    it("orders boxes as unsigned numbers", function()
      local big, small = uint64(MAX), uint64(1)
      assert.is_true(small < big)
      assert.is_true(small <= big)
      assert.is_false(big < small)
      assert.is_true(big <= uint64(-1))
      assert.is_false(big < uint64(-1))
      assert.is_true(uint64(math.maxinteger) < uint64(math.mininteger))
    end)

    it("orders boxes against integers on either side", function()
      local u = uint64("9223372036854775808")
      assert.is_true(math.maxinteger < u)
      assert.is_true(u > math.maxinteger)
      assert.is_true(uint64(5) <= 5)
      assert.is_true(5 <= uint64(5))
      assert.is_false(uint64(5) < 5)
      assert.is_true(uint64(5) < 6)
      assert.is_true(-1 < uint64(0))
      assert.is_true(uint64(0) > math.mininteger)
    end)

    it("orders boxes against floats exactly", function()
      assert.is_true(uint64(MAX) < 2.0 ^ 64)  -- both are 2^64 once rounded to a float
      assert.is_false(uint64(MAX) >= 2.0 ^ 64)
      assert.is_true(uint64("9223372036854775808") <= 2.0 ^ 63)
      assert.is_false(uint64("9223372036854775808") < 2.0 ^ 63)
      assert.is_true(uint64("9223372036854775809") > 2.0 ^ 63)
      assert.is_true(uint64("9007199254740993") > 2.0 ^ 53)
      assert.is_true(uint64(1) < 1.5)
      assert.is_true(uint64(2) > 1.5)
      assert.is_true(uint64(0) > -0.5)
      assert.is_true(uint64(0) >= -0.0)
      assert.is_true(uint64(MAX) < math.huge)
      assert.is_true(uint64(0) > -math.huge)
    end)

    it("is false against NaN", function()
      local nan = 0 / 0
      assert.is_false(uint64(1) < nan)
      assert.is_false(uint64(1) <= nan)
      assert.is_false(nan < uint64(1))
      assert.is_false(nan <= uint64(1))
    end)

    it("raises against non-numbers", function()
      assert.has_error(function() return uint64(1) < "2" end)
      assert.has_error(function() return {} <= uint64(1) end)
    end)
  end)

  describe("concatenation", function()
    it("uses the digits on either side", function()
      assert.equal("x=" .. MAX, "x=" .. uint64(MAX))
      assert.equal(MAX .. "!", uint64(MAX) .. "!")
      assert.equal("1" .. MAX, uint64(1) .. uint64(-1))
      assert.equal("12", uint64(1) .. 2)
    end)

    it("raises with values that do not concatenate", function()
      assert.has_error(function() return uint64(1) .. {} end)
    end)
  end)

  it("encodes as JSON digits", function()
    assert.equal(MAX, core.encode(uint64(MAX)))
  end)
end)
