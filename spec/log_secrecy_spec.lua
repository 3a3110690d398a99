-- Message contents never reach a log unless opts.trace is set (README
-- "Security"): commands can carry passwords and keys, replies and events
-- guest data.  A client is run through commands, replies, events, an error
-- reply, a late and a foreign reply, a handler that raises, a full listener,
-- a malformed event, the I/O-error policy, a message that is not JSON and
-- the reconnect after it, with everything the library could log captured:
-- vm.on_error's default (stderr) and its error's fields, print, warn, the
-- policy's log.  A secret placed in an argument, a reply, event data and an
-- error's text must appear in none of it, and in the trace when there is one.
local qmp = require "qmp"
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)

local SECRET = "s3cr3tXYZZY7"   -- no pattern characters: the peer matches it as a pattern
local EV = fake.event
local OK = fake.reply("{}")

local function script()
  local q = '"' .. SECRET .. '"'
  return fake.opening({
    { expect = "set-secret", expect_args = SECRET, reply = fake.reply('{"token": ' .. q .. '}') },
    { send = EV("DEVICE_TRAY_MOVED", '{"device": ' .. q .. ', "id": ' .. q .. ', "tray-open": true}')
          .. EV("DEVICE_TRAY_MOVED", '{"device": ' .. q .. ', "id": ' .. q .. ', "tray-open": false}')
          .. '{"event": 5, "data": {"x": ' .. q .. '}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'
          .. '{"return": ' .. q .. ', "id": "someone-else"}\r\n'
          .. EV("BLOCK_IO_ERROR", '{"device": "", "node-name": "disk0", "operation": "read", "action": "stop", '
                                   .. '"nospace": false, "reason": ' .. q .. '}') },
    { expect = "bad", reply = '{"error": {"class": "GenericError", "desc": "no such thing: ' .. SECRET .. '"}, "id": %ID}' },
    { expect = "slow", save = "slow" },
    { expect = "ping" },                                      -- sent once slow's caller gave up
    { send = fake.reply(q, "slow") .. "\r\n" .. fake.reply("{}") .. "\r\n" },
    { send = '{"return": ' .. SECRET .. '}\r\n' },   -- not JSON: the connection is lost
    { accept = true },
    { greet = true },
    { expect = "qmp_capabilities", reply = OK },
    { expect = "query-status", reply = fake.reply('{"status": "running", "running": true, "singlestep": false}') },
    { send = EV("RTC_CHANGE", '{"offset": 1, "qom-path": ' .. q .. '}') },
    { hold = 10 },
  })
end

-- Run the script, with a trace or without.  Returns what went to logs and
-- what went to the trace, each as one string.
local function run(with_trace)
  local logged, traced = {}, {}
  local function log(...)
    local parts = table.pack(...)
    for i = 1, parts.n do logged[#logged + 1] = tostring(parts[i]) end
  end
  local stderr, print_, warn_ = io.stderr, print, warn
  io.stderr = { write = function(self, ...) log(...) return self end }   -- luacheck: ignore
  print, warn = log, log                                                   -- luacheck: ignore
  cleanup(function() io.stderr, print, warn = stderr, print_, warn_ end)   -- luacheck: ignore

  local srv = fake.serve(script(), cleanup)
  local vm = assert(qmp.connect(srv.path, {
    timeout = 5, reconnect = { min = 0.01, max = 0.05 },
    trace = with_trace and function(direction, text) traced[#traced + 1] = direction .. " " .. text end or nil,
  }))
  cleanup(function() vm:close() end)
  local default_on_error = vm.on_error
  vm.on_error = function(err, v)   -- what a user's on_error could log: the fields too
    log(err.traceback)
    return default_on_error(err, v)
  end
  local p = qmp.policy.resume_on_io_error(vm, { retries = 0, log = log })
  local l <close> = vm:listen("DEVICE_TRAY_MOVED", nil, { max_queue = 1 })
  vm:on("DEVICE_TRAY_MOVED", function() error("handler failed on purpose") end)
  local back, rtc, down = false, false, nil
  vm:on("qmp.disconnected", function(ev) down = ev end)
  vm:on("qmp.reconnected", function() back = true end)
  vm:on("RTC_CHANGE", function() rtc = true end)

  -- The caller gets what is the caller's.
  assert.equal(SECRET, assert(vm:execute("set-secret", { password = SECRET })).token)
  local _, err = vm:execute("bad", { path = SECRET })
  assert.equal("qmp", err.kind)
  assert.matches(SECRET, err.desc)
  _, err = vm:execute("slow", { key = SECRET }, { timeout = 0.1 })
  assert.equal("timeout", err.kind)
  assert(vm:execute("ping"))
  assert(vm:run({ timeout = 5, done = function() return back and rtc end }))

  -- The error that ended the connection quotes the bytes that are not JSON:
  -- for the script to see, never logged.
  assert.equal("protocol", down.kind)
  assert.matches("invalid JSON", down.reason)
  assert.equal(1, vm.stats.stale)
  assert.equal(1, vm.stats.unknown)
  assert.is_true(vm.stats.handler_errors >= 2)
  assert.equal(1, l.dropped)
  assert.equal(1, p.give_ups)
  local text = table.concat(logged, "\n")
  -- The capture saw the library's reports: they are there, just without contents.
  assert.matches("handler failed on purpose", text)
  assert.matches("overflow", text)
  assert.matches(": protocol: ", text)   -- the event whose name is not a string
  assert.matches("giving up: disk0", text)
  return text, table.concat(traced, "\n")
end

describe("logs and message contents", function()
  it("log no argument, reply, event datum or error text without opts.trace", function()
    local logged = run(false)
    assert.is_nil(logged:find(SECRET, 1, true), "a secret reached a log:\n" .. logged)
  end)

  it("trace them all when opts.trace is set, and log them nowhere else", function()
    local logged, traced = run(true)
    assert.is_nil(logged:find(SECRET, 1, true), "a secret reached a log:\n" .. logged)
    local function traced_line(pattern)
      for line in traced:gmatch("[^\n]+") do
        if line:find(pattern) and line:find(SECRET, 1, true) then return true end
      end
      return false
    end
    assert.is_true(traced_line('^out .*"set%-secret"'), traced)   -- an argument
    assert.is_true(traced_line('^in .*"token"'), traced)           -- a reply
    assert.is_true(traced_line('^in .*"DEVICE_TRAY_MOVED"'), traced) -- event data
    assert.is_true(traced_line('^in .*"GenericError"'), traced)     -- an error's text
    assert.is_true(traced_line('^in .*"RTC_CHANGE"'), traced)       -- after the reconnect
  end)
end)

describe("log lines under a hostile peer", function()
  -- A tiny schema in query-qmp-schema's shape (QEMU masks type names as numbers).
  local SCHEMA = [==[[
    {"name": "str", "meta-type": "builtin", "json-type": "string"},
    {"name": "0", "meta-type": "object", "members": []},
    {"name": "1", "meta-type": "object", "members": [{"name": "device", "type": "str"}, {"name": "action", "type": "9"}]},
    {"name": "9", "meta-type": "enum", "values": ["ignore", "report", "stop"]},
    {"name": "STOP", "meta-type": "event", "arg-type": "0"},
    {"name": "__com.example_DISK", "meta-type": "event", "arg-type": "1"}
  ]]==]

  -- #timing: decoding and validating megabytes within vm:run's 5 s is a
  -- wall-clock bound that valgrind on a loaded machine does not keep.
  it("stay short and on one line whatever the peer sends: validate's reports, the policy's, the event names #timing", function()
    local big = ("x"):rep(1 << 20)
    local many = {}
    for i = 1, 10000 do many[i] = ('"m%d": 1'):format(i) end
    local srv = fake.serve({
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-qmp-schema", reply = fake.reply(SCHEMA) },
      { send = EV("__com.example_DISK", '{"device": "d0", "action": "' .. big .. '", "' .. big .. '": 1}')
            .. EV("__com.example_DISK", '{"device": "d0", "action": "stop", ' .. table.concat(many, ", ") .. '}')
            .. EV(big)
            .. EV("BLOCK_IO_ERROR", '{"device": "", "node-name": "disk0", "operation": "read", "action": "stop"}')
            .. EV("STOP") },
      { expect = "query-status", reply = '{"error": {"class": "GenericError", "desc": "a\\nb ' .. big .. '"}, "id": %ID}' },
      { hold = 10 },
    }, cleanup)
    local vm = fake.connect(srv, cleanup, { timeout = 5, validate = true })
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    qmp.policy.resume_on_io_error(vm, { delay = 0.01 })
    assert(vm:run({ timeout = 5, done = function() return #reports >= 5 end }))
    local kinds = {}
    for _, err in ipairs(reports) do
      local line = tostring(err)
      assert.is_true(#line < 4096, ("a %d-byte report: %s..."):format(#line, line:sub(1, 200)))
      assert.falsy(line:find("[%c\128-\255]"), line)   -- one plain line
      kinds[#kinds + 1] = err.kind
      if err.problems then assert.is_true(#err.problems <= 20, #err.problems) end
    end
    table.sort(kinds)
    assert.same({ "qmp", "schema", "schema", "schema", "schema" }, kinds)
    assert.equal(4, vm.stats.invalid)   -- DISK twice, the long name, BLOCK_IO_ERROR (not in this schema)
  end)
end)

describe("a handler's failure", function()
  it("names the event in one plain line whatever the peer named it", function()
    local srv = fake.serve({ { greet = true }, { expect = "qmp_capabilities", reply = OK },
                             { send = EV("BAD\\nNAME\\u001b[2J" .. ("X"):rep(100)) }, { hold = 5 } }, cleanup)
    local vm = fake.connect(srv, cleanup, { timeout = 5 })
    local reports = {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    vm:on("*", function() error("no such disk", 0) end)
    assert(vm:run({ timeout = 5, done = function() return #reports >= 1 end }))
    local line = tostring(reports[1])
    assert.equal("handler", reports[1].kind)
    assert.matches("^handler: handler for BAD\\nNAME\\u001b%[2JX+%.%.%. failed: no such disk$", line)
    assert.is_true(#line < 120, line)
  end)
end)

describe("qmp.errors.quote, which every report quoting the peer's text uses", function()
  it("keeps one line: control bytes and bytes that are not UTF-8 show escaped, printable UTF-8 as it is", function()
    assert.equal('a\\nb\\u0000c\195\169d"e\'\\xff', qmp.errors.quote('a\nb\0c\195\169d"e\'\255', 64))
    assert.equal("plain text, kept: [x] {y} #1", qmp.errors.quote("plain text, kept: [x] {y} #1", 64))
    assert.equal("5", qmp.errors.quote(5, 64))
  end)

  it("cuts a longer text to max bytes, ending in ...", function()
    assert.equal(("x"):rep(10), qmp.errors.quote(("x"):rep(10), 10))
    assert.equal(("x"):rep(7) .. "...", qmp.errors.quote(("x"):rep(11), 10))
    local ok, msg = pcall(qmp.errors.quote, "x", 2)
    assert.is_false(ok)
    assert.matches("log_secrecy_spec%.lua:%d+: qmp.errors.quote: max must be an integer >= 3", msg)
  end)
end)
