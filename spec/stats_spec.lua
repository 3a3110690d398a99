-- vm.stats: the read-only union of the counters each part keeps (the
-- sessions' and the dispatcher's).  Every counter the README names is
-- there, pairs() lists them all, a write raises, and the sessions' counters
-- add up over reconnects.
local qmp = require "qmp"
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)
local _, _, client = fake.bound(cleanup)
local EV = fake.event
local OK = fake.reply("{}")

-- README, "The connection": vm.stats.
local COUNTERS = { "events", "replies", "stale", "unknown", "overflow", "skipped", "handler_errors",
                   "invalid", "malformed" }

local function listed(stats)
  local names = {}
  for name, n in pairs(stats) do
    assert.equal("integer", math.type(n), name)
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

describe("vm.stats", function()
  it("has every counter the README names, each listed by pairs()", function()
    local vm = client({ { hold = 5 } })
    local sorted = { table.unpack(COUNTERS) }
    table.sort(sorted)
    assert.same(sorted, listed(vm.stats))
    assert.equal(1, vm.stats.replies)   -- qmp_capabilities
    for _, name in ipairs(COUNTERS) do
      if name ~= "replies" then assert.equal(0, vm.stats[name], name) end
    end
    assert.is_nil(vm.stats.nonesuch)
  end)

  it("raises on a write, new counter or old, and keeps the counts", function()
    local vm = client({ { hold = 5 } })
    local ok, why = pcall(function() vm.stats.events = 0 end)
    assert.is_false(ok)
    assert.matches("_spec%.lua:%d+: qmp: vm%.stats is read%-only", why)   -- at the caller's line
    assert.is_false((pcall(function() vm.stats.mine = 1 end)))
    assert.equal(1, vm.stats.replies)
    assert.is_nil(rawget(vm.stats, "mine"))
  end)

  it("shows each part's counters as they change: the session's and the dispatcher's", function()
    local vm = client({ { send = EV("STOP") .. EV("RESUME") }, { hold = 5 } })
    vm.on_error = function() end
    vm:on("RESUME", function() error("a failing handler") end)
    local before = vm.stats.handler_errors
    assert(vm:run({ timeout = 5, done = function() return vm.stats.handler_errors > before end }))
    assert.equal(2, vm.stats.events)           -- the session's
    assert.equal(1, vm.stats.handler_errors)   -- the dispatcher's
    local seen = {}
    for name, n in pairs(vm.stats) do seen[name] = n end
    assert.equal(2, seen.events)
    assert.equal(1, seen.handler_errors)
  end)

  it("adds up the sessions' counters over a reconnect", function()
    local srv = fake.start({
      { greet = true }, { expect = "qmp_capabilities", reply = OK }, { send = EV("STOP") }, { close = true },
      { accept = true },
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-status", reply = fake.reply('{"status": "running", "running": true}') },
      { send = EV("RESUME") }, { hold = 10 },
    })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } }))
    cleanup(function() vm:close() end)
    assert(vm:run({ timeout = 5, done = function() return vm.stats.events == 2 end }))
    assert.equal(2, vm.generation)
    assert.equal(3, vm.stats.replies)   -- qmp_capabilities twice, query-status
  end)
end)
