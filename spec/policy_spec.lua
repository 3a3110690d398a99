-- qmp.policy.resume_on_io_error: against the scripted fake peer, then
-- against a real QEMU whose disk fails (blkdebug).
local qmp = require "qmp"
local fake = require "support.fake_qmp"
local qemu = require "support.qemu"
local tmp = require "support.tmp"

local EV = fake.event
local cleanup = require("support.cleanup")(after_each)

local _, _, vm_with = fake.bound(cleanup)

local function io_error(action, operation)
  return EV("BLOCK_IO_ERROR", ('{"device": "", "node-name": "disk0", "operation": "%s", "action": "%s", ' ..
                               '"reason": "Input/output error", "nospace": false}'):format(operation or "read", action))
end

local function status(s)
  return fake.reply(('{"status": "%s", "singlestep": false, "running": %s}'):format(s, tostring(s == "running")))
end

-- The fake answers query-name only if it is the next command: proof that
-- the policy sent nothing else (no cont) before it.
local MARK = { expect = "query-name", reply = fake.reply("{}") }

local function recorder()
  local lines = {}
  return lines, function(line) lines[#lines + 1] = line end
end

describe("qmp.policy.resume_on_io_error()", function()
  it("resumes after the delay with cont when query-status says io-error", function()
    local vm = vm_with({
      { send = io_error("stop") .. EV("STOP") },
      { expect = "query-status", reply = status("io-error") },
      { expect = "cont" }, { send = EV("RESUME") .. '{"return": {}, "id": %ID}\r\n' },
      MARK, { hold = 5 },
    })
    local lines, log = recorder()
    local resumed = {}
    local t0 = qmp.monotime()
    local p = qmp.policy.resume_on_io_error(vm, { delay = 0.05, log = log,
      on_resume = function(ev, v, attempt) resumed[#resumed + 1] = { ev.event, v, attempt, qmp.monotime() - t0 } end })
    assert(vm:run({ timeout = 5, done = function() return p.resumes == 1 end }))
    assert.equal(1, #resumed)
    assert.equal("BLOCK_IO_ERROR", resumed[1][1])
    assert.equal(vm, resumed[1][2])
    assert.equal(1, resumed[1][3])
    assert.is_true(resumed[1][4] >= 0.05)
    assert.same({ 1, 0, 1 }, { p.resumes, p.give_ups, p.errors_seen })
    assert.equal(1, #p.state.disk0.times)
    assert.equal("disk0: I/O error (read), VM paused; resuming in 0.05 s (attempt 1 of 3)", lines[1])
    assert.matches("cont", lines[2])
    assert(vm:execute("query-name"))
  end)

  for _, st in ipairs({ "paused", "running", "inmigrate" }) do
    it("does not resume when the VM status is " .. st, function()
      local vm = vm_with({
        { send = io_error("stop", "write") .. EV("STOP") },
        { expect = "query-status", reply = status(st) },
        MARK, { hold = 5 },
      })
      local lines, log = recorder()
      local p = qmp.policy.resume_on_io_error(vm, { delay = 0.01, log = log })
      assert(vm:run({ timeout = 5, done = function() return #lines >= 2 end }))
      assert.matches("not resuming", lines[2])
      assert.matches(st, lines[2])
      assert(vm:execute("query-name"))
      assert.same({ 0, 0, 1 }, { p.resumes, p.give_ups, p.errors_seen })
    end)
  end

  -- The event and the reply are the peer's: a name with a newline made a
  -- log of two lines, and a query-status reply that is not an object made
  -- the timer raise.
  it("logs the peer's names in one plain line, and leaves the VM alone on a malformed query-status", function()
    local vm = vm_with({
      { send = EV("BLOCK_IO_ERROR", '{"device": "", "node-name": "disk\\n0' .. ("x"):rep(100) .. '",'
                  .. ' "operation": "re\\u001bad", "action": "stop"}') .. EV("STOP") },
      { expect = "query-status", reply = fake.reply("5") },
      MARK, { hold = 5 },
    })
    local lines, log = recorder()
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    local p = qmp.policy.resume_on_io_error(vm, { delay = 0.01, log = log })
    assert(vm:run({ timeout = 5, done = function() return #lines >= 2 end }))
    assert.same({}, reports)
    local name = "disk\\n0" .. ("x"):rep(54) .. "..."
    assert.equal(name .. ": I/O error (re\\u001bad), VM paused; resuming in 0.01 s (attempt 1 of 3)", lines[1])
    assert.equal(name .. ': not resuming: VM status is unknown (query-status gave none), not "io-error"', lines[2])
    assert(vm:execute("query-name"))
    assert.same({ 0, 0, 1 }, { p.resumes, p.give_ups, p.errors_seen })
  end)

  it("ignores BLOCK_IO_ERROR with action report or ignore", function()
    local vm = vm_with({
      { send = io_error("report") .. io_error("ignore") .. EV("RESET", '{"guest": false, "reason": "host-qmp-system-reset"}') },
      MARK, { hold = 5 },
    })
    local seen = 0
    vm:on("RESET", function() seen = seen + 1 end)
    local p = qmp.policy.resume_on_io_error(vm, { delay = 0.01 })
    assert(vm:run({ timeout = 5, done = function() return seen == 1 end }))
    local ok, err = vm:run({ timeout = 0.1 })  -- time for a (wrong) resume to fire
    assert.is_nil(ok)
    assert.equal("timeout", err.kind)
    assert(vm:execute("query-name"))
    assert.same({ 0, 0, 0 }, { p.resumes, p.give_ups, p.errors_seen })
  end)

  it("gives up after `retries` resumes within the window, calling on_give_up once", function()
    local resumed = EV("RESUME") .. '{"return": {}, "id": %ID}\r\n'
    local vm = vm_with({
      { send = io_error("stop") .. EV("STOP") },
      { expect = "query-status", reply = status("io-error") },
      { expect = "cont" }, { send = resumed .. io_error("stop") .. EV("STOP") },
      { expect = "query-status", reply = status("io-error") },
      { expect = "cont" }, { send = resumed .. io_error("stop") .. io_error("stop") .. EV("STOP") },
      MARK, { hold = 5 },
    })
    local lines, log = recorder()
    local gave_up, attempts = {}, {}
    local p = qmp.policy.resume_on_io_error(vm, { retries = 2, delay = 0.01, window = 60, log = log,
      on_resume = function(_, _, attempt) attempts[#attempts + 1] = attempt end,
      on_give_up = function(ev, v) gave_up[#gave_up + 1] = { ev.event, v } end })
    assert(vm:run({ timeout = 5, done = function() return p.errors_seen == 4 end }))
    local ok = vm:run({ timeout = 0.1 })  -- nothing more may happen
    assert.is_nil(ok)
    assert(vm:execute("query-name"))
    assert.same({ 1, 2 }, attempts)
    assert.equal(1, #gave_up)
    assert.same({ "BLOCK_IO_ERROR", vm }, gave_up[1])
    assert.same({ 2, 1, 4 }, { p.resumes, p.give_ups, p.errors_seen })
    assert.is_true(p.state.disk0.gave_up)
    assert.matches("attempt 2 of 2", lines[3])
    assert.matches("^giving up: disk0: I/O error %(read%) after 2 resumes within 60 s", lines[5])
    assert.equal(5, #lines)
  end)

  it("backs off: delay * backoff^(n-1), at most max_delay", function()
    local resumed = EV("RESUME") .. '{"return": {}, "id": %ID}\r\n'
    local vm = vm_with({
      { send = io_error("stop") .. EV("STOP") },
      { expect = "query-status", reply = status("io-error") },
      { expect = "cont" }, { send = resumed .. io_error("stop") .. EV("STOP") },
      { expect = "query-status", reply = status("io-error") },
      { expect = "cont" }, { send = resumed .. io_error("stop") .. EV("STOP") },
      MARK, { hold = 5 },
    })
    local lines, log = recorder()
    local p = qmp.policy.resume_on_io_error(vm, { retries = 5, delay = 0.02, backoff = 3, max_delay = 0.1, log = log })
    assert(vm:run({ timeout = 5, done = function() return p.errors_seen == 3 end }))
    p:off()
    assert(vm:execute("query-name"))
    local waits = {}
    for _, l in ipairs(lines) do waits[#waits + 1] = l:match("resuming in (%S+) s") end
    assert.same({ "0.02", "0.06", "0.10" }, waits)  -- 0.02, 0.06, min(0.18, 0.1)
  end)

  it("stops with :off(): no resume, no more counting", function()
    local vm = vm_with({
      { send = io_error("stop") .. EV("STOP") }, { sleep = 0.3 },
      { send = io_error("stop") .. EV("STOP") },
      MARK, { hold = 5 },
    })
    local p = qmp.policy.resume_on_io_error(vm, { delay = 0.1 })
    assert(vm:run({ timeout = 5, done = function() return p.errors_seen == 1 end }))
    p:off()
    p:off()  -- idempotent
    local stops = 0
    vm:on("STOP", function() stops = stops + 1 end)
    assert(vm:run({ timeout = 5, done = function() return stops == 1 end }))
    local ok = vm:run({ timeout = 0.2 })
    assert.is_nil(ok)
    assert(vm:execute("query-name"))
    assert.same({ 0, 0, 1 }, { p.resumes, p.give_ups, p.errors_seen })
  end)

  it("reports a failed query-status through vm.on_error and goes on", function()
    local vm = vm_with({
      { send = io_error("stop") .. EV("STOP") },
      { expect = "query-status", reply = '{"error": {"class": "GenericError", "desc": "nope"}, "id": %ID}' },
      MARK, { hold = 5 },
    })
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    local p = qmp.policy.resume_on_io_error(vm, { delay = 0.01 })
    assert(vm:run({ timeout = 5, done = function() return #reports == 1 end }))
    assert.equal("qmp", reports[1].kind)
    assert.matches("nope", reports[1].message)
    assert.equal("GenericError", reports[1].cause.class)
    assert(vm:execute("query-name"))
    assert.equal(0, p.resumes)
    assert.equal(0, vm.stats.handler_errors)
  end)

  it("checks its options", function()
    local vm = vm_with({ { hold = 5 } })
    assert.has_error(function() qmp.policy.resume_on_io_error(vm, { retries = 1.5 }) end)
    assert.has_error(function() qmp.policy.resume_on_io_error(vm, { delay = -1 }) end)
    assert.has_error(function() qmp.policy.resume_on_io_error(vm, { on_give_up = 1 }) end)
    assert.has_error(function() qmp.policy.resume_on_io_error({}, {}) end)
  end)
end)

local disks = require "support.disks"

describe("resume_on_io_error on a real QEMU #qemu", function()
  local function start(once)
    local dir = tmp.dir("qmppol")
    cleanup(function() tmp.remove(dir) end)
    local machine = qemu.start({ args = disks.failing_disk(disks.boot_image(dir, disks.POWER_OFF), once) })
    cleanup(function() machine:stop() end)
    local vm = assert(qmp.connect(machine.sock, { timeout = TEST_TIMEOUT, name = "policy" }))
    cleanup(function() vm:close() end)
    return vm, machine
  end

  it("resumes once after a transient read error; the guest boots and powers off", function()
    local vm, machine = start("on")
    local shutdown
    vm:on("SHUTDOWN", function(ev) shutdown = ev end)
    local p = qmp.policy.resume_on_io_error(vm, { retries = 3, delay = 0.05 })
    assert(vm:execute("cont"))
    local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = function() return shutdown ~= nil end })
    -- QEMU exits on the guest's poweroff: the run may end with the connection.
    assert(ok or err.kind == "closed", tostring(err) .. "\n" .. machine:log())
    assert.is_truthy(shutdown, machine:log())
    assert.is_true(shutdown.guest)
    assert.same({ 1, 0, 1 }, { p.resumes, p.give_ups, p.errors_seen })
  end)

  it("gives up on a broken disk after `retries` resumes and leaves the VM paused", function()
    local vm = start("off")
    local gave_up = {}
    local p = qmp.policy.resume_on_io_error(vm, { retries = 3, delay = 0.05, window = 60,
      on_give_up = function(ev) gave_up[#gave_up + 1] = ev end })
    assert(vm:execute("cont"))
    assert(vm:run({ timeout = TEST_TIMEOUT, done = function() return #gave_up > 0 end }))
    local ok = vm:run({ timeout = 0.3 })  -- no further resume
    assert.is_nil(ok)
    assert.equal(1, #gave_up)
    assert.equal("disk0", gave_up[1]["node-name"])
    assert.equal(3, p.resumes)
    assert.equal(1, p.give_ups)
    assert.is_true(p.errors_seen >= 4)  -- one per failed request; the firmware has one in flight
    local st = assert(vm:execute("query-status"))
    assert.equal("io-error", st.status)
    assert.is_false(st.running)
  end)
end)
