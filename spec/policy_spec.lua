-- qmp.policy.resume_on_io_error: against the scripted fake peer, then
-- against a real QEMU whose disk fails (blkdebug): resuming, giving up,
-- and leaving alone a pause that is not the error's.
local qmp = require "qmp"
local fake = require "support.fake_qmp"
local proc = require "support.proc"
local qemu = require "support.qemu"
local tmp = require "support.tmp"

local EV = fake.event
local cleanup = require("support.cleanup")(after_each)

local _, connect, vm_with = fake.bound(cleanup)

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

describe("resume_on_io_error leaves alone a pause that is not the error's, on a real QEMU #qemu", function()
  local DELAY = 0.5

  -- A QEMU with the failing disk, a client and the policy; with two = true,
  -- a second QMP monitor on the same QEMU and a client on it (someone else).
  local function start(two, opts)
    local dir = tmp.dir("qmpv2p")
    cleanup(function() tmp.remove(dir) end)
    local args = disks.failing_disk(disks.boot_image(dir, disks.SPIN), "on")
    local other_sock = dir .. "/other.sock"
    if two then
      args[#args + 1] = "-qmp"
      args[#args + 1] = "unix:" .. other_sock .. ",server=on,wait=off"
    end
    local machine = qemu.start({ args = args })
    cleanup(function() machine:stop() end)
    opts = opts or {}
    opts.timeout, opts.name = 5, "policy"
    local vm = connect(machine.sock, opts)
    local other
    if two then
      assert(proc.wait_until(function() return proc.listening(other_sock) end, 5))
      other = connect(other_sock, { timeout = 5, name = "other" })
    end
    local lines = {}
    local p = qmp.policy.resume_on_io_error(vm, { delay = DELAY, retries = 3,
      log = function(line) lines[#lines + 1] = line end })
    local errors_at, stops = nil, 0
    vm:on("BLOCK_IO_ERROR", function() errors_at = errors_at or qmp.monotime() end)
    vm:on("STOP", function() stops = stops + 1 end)
    -- Run until the error and its own STOP have been handled.
    local function until_paused()
      local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = function() return p.errors_seen == 1 and stops == 1 end })
      assert(ok, tostring(err) .. "\n" .. machine:log())
      assert.equal("io-error", assert(vm:execute("query-status")).status)
      return errors_at
    end
    -- Run until the policy's timer is well past due, and nothing ends it.
    local function past_delay()
      local left = errors_at + DELAY + 0.2 - qmp.monotime()
      if left > 0 then
        local ok, err = vm:run({ timeout = left })
        assert.is_nil(ok)
        assert.equal("timeout", err.kind)
      end
    end
    return vm, p, lines, until_paused, past_delay, other, machine
  end

  it("resumes an I/O-error pause when nobody interferes (control)", function()
    local vm, p, lines, until_paused = start(false)
    assert(vm:execute("cont"))
    local t0 = until_paused()
    assert(vm:run({ timeout = TEST_TIMEOUT, done = function() return p.resumes == 1 end }))
    assert.is_true(qmp.monotime() - t0 >= DELAY - 0.01)
    assert.equal(2, vm:commands_sent("cont"))
    assert.matches("^disk0: I/O error %(read%), VM paused; resuming in 0.50 s %(attempt 1 of 3%)$", lines[1])
    assert.equal("disk0: cont sent (attempt 1 of 3)", lines[2])
    local st = assert(vm:execute("query-status"))
    assert.equal("running", st.status)
    assert.is_true(st.running)
  end)

  it("does not resume after an operator's stop through the same client during the delay", function()
    local vm, p, lines, until_paused, past_delay = start(false)
    assert(vm:execute("cont"))
    until_paused()
    -- QEMU ignores stop on a VM that is not running: no STOP event, the
    -- status stays io-error; only the policy's own bookkeeping can tell.
    assert(vm:execute("stop"))
    local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = function() return #lines >= 2 end })
    assert(ok, tostring(err))
    assert.equal("disk0: not resuming: stop was sent through this client during the delay", lines[2])
    past_delay()
    assert.equal(1, vm:commands_sent("cont"))  -- the script's own
    assert.equal(0, p.resumes)
    local st = assert(vm:execute("query-status"))
    assert.is_false(st.running)
    assert.equal("io-error", st.status)
    assert.equal(2, #lines)
  end)

  it("does not resume when stop goes out through this client while its query-status is in flight", function()
    -- Two coroutines share the client (cqueues): one runs the dispatch loop,
    -- where the policy's timer fires; the other, the operator, sends stop
    -- once the policy has asked for the status.  QEMU is frozen (SIGSTOP)
    -- from the moment query-status goes out until stop has gone out too, so
    -- it takes them in that order: query-status (io-error), then stop
    -- (nothing to stop: the VM is not running).  A cont after that would
    -- undo the operator's stop.
    local cqueues = require "cqueues"
    local condition = require "cqueues.condition"
    local asked, wire, pid = condition.new(), {}, nil
    local vm, p, lines, until_paused, past_delay, _, machine = start(false, { waiter = qmp.waiters.cqueues,
      trace = function(direction, text)
        if not pid or direction ~= "out" then return end
        local name = text:match('"execute"%s*:%s*"([^"]+)"')
        wire[#wire + 1] = name
        if name == "query-status" and #wire == 1 then
          proc.kill(pid, "STOP")
          asked:signal()
        elseif name == "stop" then
          proc.kill(pid, "CONT")
        end
      end })
    cleanup(function() proc.kill(machine.pid, "CONT") end)
    assert(vm:execute("cont"))
    until_paused()
    pid = machine.pid
    local cq = cqueues.new()
    local ran, stopped
    cq:wrap(function() ran = { vm:run({ timeout = TEST_TIMEOUT, done = function() return #lines >= 2 end }) } end)
    cq:wrap(function()
      if asked:wait(TEST_TIMEOUT) then stopped = { vm:execute("stop") } end
    end)
    local deadline = qmp.monotime() + TEST_TIMEOUT
    while not (ran and stopped) and qmp.monotime() < deadline do assert(cq:step(0.1)) end
    pid = nil
    proc.kill(machine.pid, "CONT")
    assert.is_truthy(ran, "the dispatch loop did not end")
    assert.is_true(ran[1], tostring(ran[2]))
    assert.is_truthy(stopped and stopped[1], "stop was not sent or failed")
    assert.same({ "query-status", "stop" }, { wire[1], wire[2] }, "sent: " .. table.concat(wire, ", "))
    past_delay()
    local st = assert(vm:execute("query-status"))
    assert.is_false(st.running, "the policy resumed the VM over the operator's stop: " .. table.concat(lines, " | ")
                                .. "; sent: " .. table.concat(wire, ", "))
    assert.equal(0, p.resumes)
    assert.equal("disk0: not resuming: stop was sent through this client during the delay", lines[2])
  end)

  it("does not resume when another monitor resumes and stops the VM during the delay", function()
    local vm, p, lines, until_paused, past_delay, other = start(true)
    assert(other:execute("cont"))   -- this client sends no cont at all
    until_paused()
    local acted = false
    -- Someone else, while this client's loop runs, well inside the delay.
    vm:after(DELAY / 10, function()
      assert(other:execute("cont"))
      assert(other:wait("RESUME", nil, 5))
      assert(other:execute("stop"))
      assert(other:wait("STOP", nil, 5))
      acted = true
    end)
    local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = function() return acted and #lines >= 2 end })
    assert(ok, tostring(err))
    assert.equal("disk0: not resuming: the VM was resumed by someone else", lines[2])
    past_delay()
    assert.equal(0, vm:commands_sent("cont"))
    assert.equal(0, p.resumes)
    local st = assert(vm:execute("query-status"))
    assert.is_false(st.running)
    assert.equal("paused", st.status)
    assert.equal(2, #lines)
  end)
end)
