-- vm:report(err): trouble of a policy's or a script's own, with no caller
-- to return to, goes where the client's own goes: to vm.on_error.
local errors = require "qmp.errors"
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)
local _, _, client = fake.bound(cleanup)

-- What fn writes on io.stderr, as one string.
local function stderr_of(fn)
  local written, real = {}, io.stderr
  rawset(io, "stderr", { write = function(_, ...) for _, s in ipairs({ ... }) do written[#written + 1] = s end end })
  local ok, why = pcall(fn)
  rawset(io, "stderr", real)
  assert(ok, why)
  return table.concat(written)
end

describe("vm:report", function()
  it("hands the error and the client to vm.on_error", function()
    local vm = client({ { hold = 5 } })
    local got = {}
    vm.on_error = function(err, who) got[#got + 1] = { err, who } end
    local e = errors.new("io", "my policy's trouble")
    vm:report(e)
    assert.equal(1, #got)
    assert.equal(e, got[1][1])
    assert.equal(vm, got[1][2])
  end)

  it("writes one line on stderr by default, the peer's bytes escaped", function()
    local vm = client({ { hold = 5 } }, { timeout = 5, name = "vm1" })
    local text = stderr_of(function() vm:report(errors.new("io", "bad\27[2J thing")) end)
    assert.equal("qmp: vm1: io: bad\\u001b[2J thing\n", text)
  end)

  it("reports an on_error that raises on stderr, and returns", function()
    local vm = client({ { hold = 5 } }, { timeout = 5, name = "vm1" })
    vm.on_error = function() error("oops", 0) end
    local text = stderr_of(function() vm:report(errors.new("io", "x")) end)
    assert.equal("qmp: vm1: handler: on_error failed: oops\n", text)
  end)

  it("raises without an error", function()
    local vm = client({ { hold = 5 } })
    local ok, why = pcall(vm.report, vm)
    assert.is_false(ok)
    assert.matches("qmp: report: expected an error", why, 1, true)
  end)
end)
