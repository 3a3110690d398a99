-- Reconnecting after the monitor goes away: fake peer and a restarted real QEMU.
local qmp = require "qmp"
local fake = require "support.fake_qmp"
local qemu = require "support.qemu"
local tmp = require "support.tmp"

local cleanup = require("support.cleanup")(after_each)
local OK = fake.reply("{}")

describe("opts.reconnect", function()
  it("reports the disconnect, reconnects, renegotiates and resyncs the status", function()
    local srv = fake.start({
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-version" }, { send = fake.event("STOP") }, { close = true },
      { accept = true },
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-status", reply = fake.reply('{"status": "io-error", "running": false}') },
      { hold = 10 },
    })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } }))
    cleanup(function() vm:close() end)
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    -- The command in flight fails with kind closed.
    local ret, err = vm:execute("query-version")
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 3 end }))
    assert.equal("STOP", seen[1].event)
    assert.equal("qmp.disconnected", seen[2].event)
    assert.equal(1, seen[2].generation)
    assert.equal(qmp.events["qmp.disconnected"], getmetatable(seen[2]))
    assert.equal("qmp.reconnected", seen[3].event)
    assert.equal(2, seen[3].generation)
    assert.equal("io-error", seen[3].status)
    assert.equal(2, vm.generation)
    assert.is_false(vm:closed())
  end)

  it("takes a resync reply of any shape: qmp.reconnected without a status", function()
    local srv = fake.start({
      { greet = true }, { expect = "qmp_capabilities", reply = OK }, { close = true },
      { accept = true },
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-status", reply = fake.reply("5") },
      { hold = 10 },
    })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } }))
    cleanup(function() vm:close() end)
    local back
    vm:on("qmp.reconnected", function(ev) back = ev end)
    assert(vm:run({ timeout = 5, done = function() return back ~= nil end }))
    assert.equal(2, back.generation)
    assert.is_nil(back.status)
    assert.equal("ready", vm.state)
  end)

  it("keeps retrying while the socket is missing, and stops on close()", function()
    local srv = fake.start({ { greet = true }, { expect = "qmp_capabilities", reply = OK }, { close = true } })
    cleanup(function() srv:stop() end)
    local vm = assert(qmp.connect(srv.path, { timeout = 1, reconnect = { min = 0.01, max = 0.02 } }))
    local ev = assert(vm:wait("qmp.disconnected", nil, 5))
    assert.equal("closed", ev.kind)
    assert.is_true(srv:wait(5))
    assert.is_nil(vm:wait("qmp.reconnected", nil, 0.2))
    assert.equal("reconnecting", vm.state)
    assert.is_false(vm:closed())
    local _, cerr = vm:execute("query-status")
    assert.equal("closed", cerr.kind)
    assert.matches("reconnect pending.*next attempt %(#%d+%) in [%d.]+ s; last error: refused: no socket", cerr.message)
    vm:close()
    assert.equal("closed", vm.state)
    local _, err = vm:run({ timeout = 1 })
    assert.equal("closed", err.kind)
  end)

  it("raises on bad reconnect options", function()
    assert.has_error(function() qmp.connect("/tmp/x.sock", { reconnect = { min = 0 } }) end)
    assert.has_error(function() qmp.connect("/tmp/x.sock", { reconnect = { min = 2, max = 1 } }) end)
  end)
end)

describe("reconnecting to a restarted real QEMU #qemu", function()
  it("sees the old QEMU go and the new one come, with a new generation", function()
    local dir = tmp.dir("restart")
    cleanup(function() tmp.remove(dir) end)
    local first = qemu.start({ dir = dir })
    cleanup(function() first:stop() end)
    local vm = assert(qmp.connect(first.sock, { timeout = 5, reconnect = { min = 0.05, max = 0.5 } }))
    cleanup(function() vm:close() end)
    assert(vm:execute("cont"))
    assert(vm:wait("RESUME", nil, 5))
    first:stop()
    local gone = assert(vm:wait("qmp.disconnected", nil, 10))
    assert.equal(1, gone.generation)
    local second = qemu.start({ dir = dir })
    cleanup(function() second:stop() end)
    local back = assert(vm:wait("qmp.reconnected", nil, 10))
    assert.equal(2, back.generation)
    assert.equal("prelaunch", back.status)   -- the new QEMU has not started its CPUs
    assert.equal("prelaunch", assert(vm:execute("query-status")).status)
  end)
end)
