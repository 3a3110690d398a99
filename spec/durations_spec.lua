-- Every duration the API takes goes through one check (qmp.errors.check_duration):
-- NaN and negative numbers raise at the caller's line, and so does
-- math.huge where it cannot mean "no limit" (a timer, a back-off, a delay).
-- Before the check, NaN passed every `t < 0` test: vm:after(0/0, f) never
-- fired and held every later timer back while vm:timeout() said 0 (run
-- spun), listener:wait(0/0) and loop:run{ timeout = 0/0 } never returned,
-- reconnect = { min = 0/0 } never reconnected.
local qmp = require "qmp"
local errors = require "qmp.errors"
local tmp = require "support.tmp"

local cleanup = require("support.cleanup")(after_each)

local NAN, HUGE = 0 / 0, math.huge

-- How the message shows each bad value.
local function shown(v)
  if v ~= v then return "NaN" end
  return v == HUGE and "math.huge" or tostring(v)
end

-- A client that is never connected (nothing listens): every check comes
-- before anything would be waited for.
local function client()
  local dir = tmp.dir("qmpdur")
  cleanup(function() tmp.remove(dir) end)
  local vm = assert(qmp.client(dir .. "/nobody.sock", { reconnect = true }))
  cleanup(function() vm:close() end)
  return vm, dir
end

-- fn(value) must raise, at the line where it is defined (a one-line
-- function: the line of the call), a message naming `what` and the value.
local function raises_at_caller(fn, value, what)
  local ok, msg = pcall(fn, value)
  assert.is_false(ok, ("%s = %s was accepted"):format(what, shown(value)))
  msg = tostring(msg)
  local line = debug.getinfo(fn, "S").linedefined
  assert.equal(tostring(line), msg:match("durations_spec%.lua:(%d+):"), msg)
  assert(msg:find(what, 1, true), ("%q does not name %s"):format(msg, what))
  assert(msg:find("not " .. shown(value), 1, true), ("%q does not show %s"):format(msg, shown(value)))
end

-- Each case: { what the message names, function(v) that passes v where the
-- duration goes, math.huge refused too }.
local function check_all(cases)
  for _, case in ipairs(cases) do
    local what, fn, finite = case[1], case[2], case[3]
    raises_at_caller(fn, NAN, what)
    raises_at_caller(fn, -1, what)
    if finite then raises_at_caller(fn, HUGE, what) end
  end
end

describe("errors.check_duration()", function()
  it("takes a number of seconds and gives it back; nil only when optional", function()
    assert.equal(1.5, errors.check_duration("f", "t", 1.5))
    assert.equal(0, errors.check_duration("f", "t", 0))
    assert.is_nil(errors.check_duration("f", "t", nil, { optional = true }))
    assert.equal(HUGE, errors.check_duration("f", "t", HUGE, { infinite = true }))
    assert.has_error(function() errors.check_duration("f", "t", nil) end, "f: t must be a number of seconds >= 0, not nil")
    assert.has_error(function() errors.check_duration("f", "t", "1") end,
                     'f: t must be a number of seconds >= 0, not a string')
    assert.has_error(function() errors.check_duration("f", "t", 0, { positive = true }) end,
                     "f: t must be a number of seconds > 0, not 0")
    assert.has_error(function() errors.check_duration("f", "t", HUGE) end,
                     "f: t must be a number of seconds >= 0, not math.huge (it would never come)")
    assert.has_error(function() errors.check_duration("f", "t", -HUGE, { infinite = true }) end,
                     "f: t must be a number of seconds >= 0 or math.huge (no limit), not -math.huge")
  end)
end)

describe("a duration that is NaN, negative or (where it cannot mean no limit) infinite", function()
  it("raises at the caller's line from qmp.connect, qmp.client, qmp.replay and qmp.record.run", function()
    local _, dir = client()
    local path = dir .. "/nobody.sock"
    local lines = {
      '{"qmp-recording":1,"name":"hand","started":"2026-01-01T00:00:00Z"}',
      '{"t":0.001,"dir":"in","msg":{"QMP":{"version":{"qemu":{"micro":0,"minor":2,"major":7},"package":""},"capabilities":[]}}}',
    }
    check_all({
      { "timeout", function(v) qmp.connect(path, { timeout = v }) end },
      { "timeout", function(v) qmp.client(path, { timeout = v }) end },
      { "reconnect.min", function(v) qmp.client(path, { reconnect = { min = v } }) end, true },
      { "reconnect.max", function(v) qmp.client(path, { reconnect = { min = 0.1, max = v } }) end, true },
      { "timeout", function(v) qmp.replay(lines, { timeout = v }) end },
      { "timeout", function(v) qmp.record.run(path, dir .. "/rec", { timeout = v }) end },
    })
    assert.is_nil(io.open(dir .. "/rec"), "record.run made its file before checking its options")
  end)

  it("raises at the caller's line from commands, waits, listeners, timers and runs", function()
    local vm = client()
    local l = vm:listen("STOP")
    check_all({
      { "timeout", function(v) vm:execute("query-status", nil, { timeout = v }) end },
      { "timeout", function(v) vm:execute_oob("migrate-pause", nil, { timeout = v }) end },
      { "timeout", function(v) vm:hmp("info status", { timeout = v }) end },
      { "timeout", function(v) vm:wait("STOP", nil, v) end },
      { "timeout", function(v) vm:wait("STOP", v) end },
      { "timeout", function(v) vm:listen("STOP", nil, { timeout = v }) end },
      { "timeout", function(v) l:wait(v) end },
      { "seconds", function(v) vm:after(v, function() end) end, true },
      { "timeout", function(v) vm:run({ timeout = v }) end },
      { "timeout", function(v) vm:schema(v) end },
      { "timeout", function(v) qmp.loop({ vm }):run({ timeout = v }) end },
    })
    assert.is_nil(vm:timeout() == 0 and "a timer is due" or nil)   -- no bad timer was kept
  end)

  it("raises at the caller's line from vm:job_wait and the resume policy", function()
    local vm = client()
    local function policy(opts) return qmp.policy.resume_on_io_error(vm, opts) end
    check_all({
      { "timeout", function(v) vm:job_wait("j", { timeout = v }) end },
      { "interval", function(v) vm:job_wait("j", { interval = v }) end, true },
      { "window", function(v) policy({ window = v }) end },
      { "delay", function(v) policy({ delay = v }) end, true },
      { "max_delay", function(v) policy({ max_delay = v }) end, true },
    })
    -- backoff is a factor, not seconds: NaN and infinity are refused alike
    for _, v in ipairs({ NAN, HUGE, 0.5 }) do
      local ok, msg = pcall(policy, { backoff = v })
      assert.is_false(ok, tostring(v))
      assert.matches("durations_spec%.lua:%d+: qmp.policy.resume_on_io_error: backoff must be", msg)
    end
    assert.equal(0, vm:handlers())   -- nothing was registered on the way
  end)

  it("takes math.huge as no limit where a timeout means one", function()
    local vm = client()
    -- not connected: these return at once, whatever their timeout
    local ret, err = vm:execute("query-status", nil, { timeout = HUGE })
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    local l <close> = vm:listen("STOP", nil, { timeout = HUGE })
    l:close()
    ret, err = l:wait(HUGE)
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    local loop = qmp.loop({ vm })
    assert.is_true(loop:run({ timeout = HUGE, done = function() return true end }))
    assert.is_true(vm:run({ timeout = HUGE, done = function() return true end }))
    assert(qmp.policy.resume_on_io_error(vm, { window = HUGE })):off()
  end)
end)
