-- The decoder when Lua runs out of memory, and on hostile inputs, watched by
-- valgrind: spec/support/allocfail.c makes the Nth Lua allocation fail for
-- N = 1, 2, ... while decoding (cases in spec/support/allocfail.lua) and
-- checks that the cJSON tree is always freed and that the state stays usable.
local proc = require "support.proc"
local tmp = require "support.tmp"

local run, have = proc.run, proc.have

describe("the decoder under failing allocations #slow", function()
  local dir, exe, build_error

  -- Compiled once, on first use.
  local function harness()
    if exe or build_error then return exe, build_error end
    dir = tmp.dir("allocfail")
    local flags = "$(pkg-config --cflags --libs lua5.4 libcjson)"
    local status, out = run("gcc -std=c99 -O1 -g -Wall -Wextra -Werror -o " .. tmp.quote(dir .. "/allocfail") ..
                            " spec/support/allocfail.c " .. flags)
    if status == 0 then exe = dir .. "/allocfail" else build_error = out end
    return exe, build_error
  end

  teardown(function()
    if dir then tmp.remove(dir) end
  end)

  -- Run one mode of the harness under valgrind; returns its output after
  -- checking the exit status (99: valgrind found errors or leaks).
  local function valgrind(mode)
    if not have("valgrind") then
      pending("valgrind is not installed")
      return nil
    end
    local prog, err = harness()
    assert(prog, "cannot build spec/support/allocfail.c:\n" .. tostring(err))
    local status, out = run("valgrind -q --leak-check=full --errors-for-leak-kinds=definite" ..
                            " --error-exitcode=99 " .. tmp.quote(prog) ..
                            " spec/support/allocfail.lua " .. mode .. " " ..
                            tmp.quote(package.path) .. " " .. tmp.quote(package.cpath))
    assert.equal(0, status, out)
    local points, failed = out:match("allocfail " .. mode .. ": (%d+) failure points, %d+ checks, (%d+) failed")
    assert(points, "no summary line:\n" .. out)
    assert.equal(0, tonumber(failed), out)
    return out, tonumber(points)
  end

  it("never leaks the cJSON tree when core.decode() fails mid-walk", function()
    local out, points = valgrind("decode")
    if not out then return end
    assert.is_true(points > 50, "only " .. points .. " failure points:\n" .. out)
    -- every case ran both ways, and failed somewhere
    for _, name in ipairs({ "schema reply", "event with big integers", "100 nested arrays",
                            "session as one array", "event of a new type" }) do
      for _, kind in ipairs({ "single", "persistent" }) do
        local n = out:match("decode " .. name:gsub("%p", "%%%0") .. " %(" .. kind .. "%): (%d+) failure points")
        assert(n and tonumber(n) > 0, name .. " (" .. kind .. ") did not run:\n" .. out)
      end
    end
  end)

  it("never leaks the cJSON tree when d:next() fails mid-walk", function()
    local out, points = valgrind("stream")
    if not out then return end
    assert.is_true(points > 50, "only " .. points .. " failure points:\n" .. out)
  end)

  -- A message already read must not be lost, nor the stream broken, because
  -- decoding the one before it ran out of memory.
  it("keeps a decoder usable after a memory error in d:next()", function()
    local out, points = valgrind("resume")
    if not out then return end
    assert.is_true(points > 50, "only " .. points .. " failure points:\n" .. out)
  end)

  -- Finalizers may run in the middle of a decode, whenever it allocates: one
  -- that feeds or reads the same decoder must neither make it read freed
  -- bytes nor lose the next message.
  it("is not corrupted by a finalizer that uses the decoder during a decode", function()
    local out = valgrind("reentry")
    if not out then return end
    assert.matches("reentry a finalizer feeds the decoder being decoded: ok", out, 1, true)
    assert.matches("reentry a finalizer reads the decoder being decoded: ok", out, 1, true)
    assert.matches("reentry a finalizer asks buffered() of the decoder being decoded: ok", out, 1, true)
  end)

  it("survives hostile inputs without memory errors", function()
    local out = valgrind("hostile")
    if not out then return end
    local passed = 0
    for line in out:gmatch("[^\n]+") do
      if line:match("^hostile .*: ok$") then passed = passed + 1 end
    end
    assert.equal(9, passed, out)
  end)
end)
