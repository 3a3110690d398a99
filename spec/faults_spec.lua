-- The fault catalogue, docs/faults.md: one describe per row that needed a
-- test of its own, named "fault #N: ...".  The other rows are proved by the
-- specs the table names; the last describe checks that the table names,
-- for every row, tests that exist.
local qmp = require "qmp"
local core = require "qmp.core"
local fake = require "support.fake_qmp"
local in_flight = require "support.in_flight"
local proc = require "support.proc"
local tmp = require "support.tmp"

local EV = fake.event
local OK = fake.reply("{}")
local REPLY = '{"return": {}, "id": %ID}\r\n'   -- a reply, for a send step
local opening = fake.opening
local monotime = qmp.monotime

local cleanup = require("support.cleanup")(after_each)

local serve, connect, client = fake.bound(cleanup)

-- qmp.connect to srv fails well before its timeout (opts.timeout, 5 s here):
-- the error.
local function refused_at_once(srv, opts)
  local t0 = monotime()
  local vm, err = qmp.connect(srv.path, opts)
  assert.is_nil(vm)
  assert.is_true(monotime() - t0 < 4, "waited for the timeout")
  return err
end

-- The peer answers command x with text (a send step): x fails as the
-- session ends on a protocol error.  That error, and the client.
local function protocol_error_for(text)
  local vm = client({ { expect = "x" }, { send = text }, { hold = 5 } })
  local ret, err = vm:execute("x")
  assert.is_nil(ret)
  assert.equal("closed", err.kind)
  assert.equal("protocol", err.cause.kind)
  return err.cause, vm
end

-- A value as text that tells every difference that matters here: sorted
-- keys, integers from floats, uint64 digits, and the event type.
local function show(v)
  if type(v) ~= "table" then return tostring(v) end
  local mt = getmetatable(v)
  local ok, text = pcall(core.encode, v, { sort = true })
  return (mt and mt.name and (mt.name .. " ") or "") .. (ok and text or tostring(v))
end

-- Every message a fresh decoder gives for the pieces, by next() or drain().
local function decode_pieces(pieces, how, interest)
  local d, out = core.decoder(), {}
  for _, piece in ipairs(pieces) do
    d:feed(piece)
    if how == "drain" then
      local list, _, err = d:drain(1000, interest)
      assert(err == nil, tostring(err))
      for _, m in ipairs(list) do out[#out + 1] = show(m) end
    else
      while true do
        local m, err = d:next()
        assert(err == nil, tostring(err))
        if not m then break end
        out[#out + 1] = show(m)
      end
    end
  end
  assert.equal(0, d:pending())
  return out
end

-- The pid of this process, and whether fd is open in it.
local function mypid()
  return tonumber(tmp.read("/proc/self/stat"):match("^(%d+)"))
end
local function fd_open(fd)
  local f = io.open("/proc/self/fdinfo/" .. fd, "r")
  if f then f:close() end
  return f ~= nil
end
-- The fds open now (after a full collection, so that no finalizer closes
-- one later), as a set.  Probed one by one, with no other process (a pipe
-- to one would be counted); the probe's own fd is the lowest free one, the
-- same before and after unless an fd was left open, which shows anyway.
local function fds()
  collectgarbage()
  collectgarbage()
  local set = {}
  for n = 0, 1023 do
    if fd_open(n) then set[n] = true end
  end
  return set
end
-- Every fd open now was open in before: nothing was left open.
local function no_new_fd(before)
  for fd in pairs(fds()) do
    if not before[fd] then
      local p = assert(io.popen("readlink /proc/" .. mypid() .. "/fd/" .. fd))
      local what = p:read("a")
      p:close()
      error("fd " .. fd .. " was left open: " .. what, 2)
    end
  end
end

local run, have = proc.run, proc.have

-- memcheck, with definite leaks counted as errors (exit status 99).
local VALGRIND = "valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite "

-- A Lua script run by lua5.4 under valgrind: checks that it ran to its end
-- and that valgrind found nothing.  Pending without valgrind.
local function runs_under_valgrind(script)
  if not have("valgrind") then
    pending("valgrind is not installed")
    return
  end
  local dir = tmp.dir("faultsvg")
  cleanup(function() tmp.remove(dir) end)
  tmp.write(dir .. "/script.lua", "package.path = " .. string.format("%q", package.path) ..
            "\npackage.cpath = " .. string.format("%q", package.cpath) .. "\n" .. script ..
            '\nprint("checked")\n')
  local status, out = run(VALGRIND .. "lua5.4 " .. tmp.quote(dir .. "/script.lua"))
  assert.equal(0, status, out)
  assert.matches("checked", out)
end

-- spec/support/faults_harness.c, compiled once (see there for its modes):
-- the command that runs a mode.
local harness = {}
local function harness_cmd(mode, ...)
  if not harness.exe and not harness.error then
    harness.dir = tmp.dir("faultsh")
    local exe = harness.dir .. "/faults_harness"
    local status, out = run("gcc -std=c99 -O2 -g -Wall -Wextra -Werror -pthread -o " .. tmp.quote(exe) ..
                            " spec/support/faults_harness.c $(pkg-config --cflags --libs lua5.4 libcjson)")
    if status == 0 then harness.exe = exe else harness.error = out end
  end
  assert(harness.exe, "cannot build spec/support/faults_harness.c:\n" .. tostring(harness.error))
  local words = { tmp.quote(harness.exe), mode, "spec/support/faults_harness.lua",
                  tmp.quote(package.path), tmp.quote(package.cpath) }
  for _, a in ipairs({ ... }) do words[#words + 1] = tmp.quote(a) end
  return table.concat(words, " ")
end
local function harness_run(mode, ...)
  return run(harness_cmd(mode, ...))
end
teardown(function() if harness.dir then tmp.remove(harness.dir) end end)

-- {==================== 2.1 transport and framing

describe("fault #1: a message split at every byte boundary", function()
  it("gives what one read gives, split inside CRLF, UTF-8, \\u escapes and numbers", function()
    local text = '{"event": "FAULTS_SPLIT", "data": {"s": "caf\xC3\xA9 \xF0\x9F\x98\x80", ' ..
                 '"e": "\\u00e9\\ud83d\\ude00", "n": 18446744073709551615, "f": -1.5e-3, "i": 12345}, ' ..
                 '"timestamp": {"seconds": 1, "microseconds": 2}}\r\n{"return": {"x": 1E2}, "id": 1}\r\n'
    finally(function() rawset(qmp.events, "FAULTS_SPLIT", nil) end)
    local whole = decode_pieces({ text }, "next")
    assert.equal(2, #whole)
    assert.matches("^FAULTS_SPLIT ", whole[1])
    assert.matches('"f":%-0.0015', whole[1])
    assert.matches('"n":18446744073709551615', whole[1])
    assert.matches('"x":100.0', whole[2])
    assert.same(whole, decode_pieces({ text }, "drain", { FAULTS_SPLIT = true }))
    for _, how in ipairs({ "next", "drain" }) do
      for at = 0, #text do
        assert.same(whole, decode_pieces({ text:sub(1, at), text:sub(at + 1) }, how), "split at byte " .. at)
      end
      local bytes = {}
      for i = 1, #text do bytes[i] = text:sub(i, i) end
      assert.same(whole, decode_pieces(bytes, how))
    end
  end)
end)

describe("fault #2: greeting, events and a reply coalesced into one read", function()
  it("delivers all of them, in stream order", function()
    local srv = serve({
      { send = EV("POWERDOWN") .. fake.greeting .. EV("RESET", '{"guest": false, "reason": "host-qmp-system-reset"}') },
      { expect = "qmp_capabilities" },
      { send = EV("STOP") .. REPLY .. EV("RESUME") },
      { expect = "query-status" },
      { send = EV("SUSPEND") .. '{"return": {"status": "running"}, "id": %ID}\r\n' .. EV("WAKEUP") .. EV("SHUTDOWN") },
      { hold = 5 },
    })
    local vm = connect(srv)
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev.event end)
    assert.equal("running", assert(vm:execute("query-status")).status)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 7 end }))
    assert.same({ "POWERDOWN", "RESET", "STOP", "RESUME", "SUSPEND", "WAKEUP", "SHUTDOWN" }, seen)
  end)
end)

describe("fault #4: a clean EOF between messages", function()
  it("fails the command in flight with closed, tells it from an EOF inside a message, keeps what came before", function()
    local vm = client({ { expect = "query-status" }, { send = EV("STOP") }, { close = true } })
    local ret, err = vm:execute("query-status")
    assert.is_nil(ret)
    assert.equal("closed", err.kind)
    assert.matches("connection closed by the peer", err.message)
    assert.not_matches("inside a message", err.message)
    assert.equal("closed", vm.state)
    assert.equal("STOP", assert(vm:wait("STOP", nil, 1)).event)
    local _, again = vm:execute("query-status")
    assert.equal("closed", again.kind)
  end)
end)

describe("fault #6: EINTR on every call #timing", function()
  it("retries poll, reads and writes, keeping the deadlines, under a signal every millisecond", function()
    local srv = serve(opening({
      { expect = "slow" }, { sleep = 0.3 }, { send = '{"return": "late", "id": %ID}\r\n' },
      { expect = "big", reply = fake.reply(tostring(4 << 20)) },
      { expect = "query-status", reply = fake.reply('{"status": "running"}') },
      { wait_close = true },
    }))
    local status, out = harness_run("eintr", srv.path)
    assert.equal(0, status, out .. "\n" .. srv:log():sub(1, 2000))
    local signals = tonumber(out:match("ok eintr: (%d+) signals"))
    assert.is_true(signals and signals > 500, out)   -- about a second of them
  end)
end)

describe("fault #7: a command larger than the socket takes at once", function()
  it("sends the rest in order, never interleaved with another coroutine's command #timing", function()
    local cqueues = require "cqueues"
    local srv = serve(opening({
      { wait_for = "read" },   -- the socket stays full until both commands are queued
      { expect = "big", reply = fake.reply('"big"') },
      { expect = "small", reply = fake.reply('"small"') },
      { wait_close = true },
    }))
    local vm = connect(srv, { timeout = 5, waiter = qmp.waiters.cqueues })
    local parts = {}
    for i = 1, 1 << 19 do parts[i] = string.format("%07d,", i) end   -- 4 MiB, numbered
    local data = table.concat(parts)
    local cq = cqueues.new()
    local big, small
    cq:wrap(function() big = { vm:execute("big", { data = data }) } end)
    assert(cq:step(0))   -- big is partly written and parks
    assert.is_nil(big)
    assert.equal("rw", vm:events())   -- the rest waits for room
    cq:wrap(function() small = { vm:execute("small") } end)
    assert(cq:step(0))
    assert.is_nil(small)   -- queued behind big
    srv:tell("read")
    local deadline = monotime() + 10
    while not (big and small) and monotime() < deadline do assert(cq:step(0.1)) end
    assert.same({ "big" }, big)
    assert.same({ "small" }, small)
    local lines = srv:received()
    assert.equal(3, #lines)
    local cmd = assert(qmp.decode(lines[2]))
    assert.equal("big", cmd.execute)
    assert.is_true(cmd.arguments.data == data, "the big command arrived changed")
    assert.equal("small", assert(qmp.decode(lines[3])).execute)
  end)
end)

describe("fault #9: a peer that never ends its first message", function()
  it("is stopped by max_message, and the fd is released #timing", function()
    local srv = serve({ { send = '{"QMP": {"version": "' .. ("x"):rep(300000) }, { hold = 5 } })
    local before = fds()
    local err = refused_at_once(srv, { timeout = 5, max_message = 65536 })
    assert.equal("toolarge", err.kind)
    assert.matches("65536", err.message)
    no_new_fd(before)
  end)
end)

describe("fault #10: a raw NUL byte in a message", function()
  it("ends the session with a protocol error, never a message cut short", function()
    local cause, vm = protocol_error_for('{"return": "a\0b", "id": %ID}\r\n')
    assert.matches("NUL byte", cause.message)
    assert.is_true(vm:closed())
  end)
end)

describe("fault #11: LF without CR, and stray CRs", function()
  it("reads LF-ended messages and takes a lone CR as whitespace, inside a message too", function()
    local text = '{"a": 1}\r{"b": 2}\n\r\r\n{"c":\r3}\r\r{\r\n"d"\r:\r[\r4\r]\r}\n'
    local want = { '{"a":1}', '{"b":2}', '{"c":3}', '{"d":[4]}' }
    assert.same(want, decode_pieces({ text }, "next"))
    local bytes = {}
    for i = 1, #text do bytes[i] = text:sub(i, i) end
    assert.same(want, decode_pieces(bytes, "drain"))
  end)
end)

describe("fault #13: a peer that is not QMP", function()
  for _, case in ipairs({
    { "an HMP monitor", "QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) ", "QEMU 7.2" },
    { "an HTTP server", "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1" },
    { "a JSON service", '{"jsonrpc": "2.0", "method": "hello"}\r\n', '"jsonrpc"' },
  }) do
    it("is refused at once with a protocol error quoting its first bytes: " .. case[1] .. " #timing", function()
      local err = refused_at_once(serve({ { send = case[2] }, { hold = 5 } }), { timeout = 5 })
      assert.equal("protocol", err.kind)
      assert.matches(case[3], err.message, 1, true)
    end)
  end
end)

describe("fault #14: a peer that accepts and never greets", function()
  it("times out, releases the fd, and a reconnecting client goes back to waiting without one", function()
    local srv = serve({ { hold = 10 } })
    local before = fds()
    local vm, err = qmp.connect(srv.path, { timeout = 0.3 })
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.matches("greeting", err.message)
    no_new_fd(before)
    local srv2 = serve({ { hold = 10 } })
    local c = qmp.client(srv2.path, { timeout = 0.2, reconnect = { min = 5, max = 5 } })
    cleanup(function() c:close() end)
    c.on_error = function() end
    local deadline = monotime() + 5
    while c.state ~= "reconnecting" and monotime() < deadline do c:run({ timeout = 0.05 }) end
    assert.equal("reconnecting", c.state)
    assert.equal(-1, c:pollfd())
    no_new_fd(before)
  end)
end)

describe("fault #15: a socket the process may not open", function()
  it("is refused with kind denied (EACCES), and without reconnect there is no retry", function()
    local srv = serve({ { hold = 10 } })
    local script = [[
      package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
      package.cpath = "./?.so;" .. package.cpath
      local qmp = require "qmp"
      local t0 = qmp.monotime()
      local vm, err = qmp.connect(os.getenv("QMP_FAULTS_SOCK"), { timeout = 5 })
      io.write(err.kind, "|", err.message, "|", qmp.monotime() - t0 < 1 and "fast" or "slow", "\n")
    ]]
    local cmd
    local _, uid = run("id -u")
    if tonumber(uid:match("^(%d+)")) == 0 then
      if not have("setpriv") then pending("root, and no setpriv to drop privileges") return end
      cmd = "setpriv --reuid=65534 --regid=65534 --clear-groups lua5.4 -e " .. tmp.quote(script)
    else
      local dir = srv.path:match("^(.*)/")
      os.execute("chmod 0 " .. tmp.quote(dir))
      cleanup(function() os.execute("chmod 700 " .. tmp.quote(dir)) end)
      cmd = "lua5.4 -e " .. tmp.quote(script)
    end
    local status, out = run("QMP_FAULTS_SOCK=" .. tmp.quote(srv.path) .. " " .. cmd)
    assert.equal(0, status, out)
    local kind, message, speed = out:match("^(%a+)|(.-)|(%a+)\n")
    assert.equal("denied", kind, out)
    assert.matches("Permission denied", message)
    assert.equal("fast", speed)
  end)
end)

-- }====================

-- {==================== 2.2 JSON content

describe("fault #17: invalid JSON in a well-framed message", function()
  it("ends the session with a protocol error that says where", function()
    local cause = protocol_error_for('{"return": {"a": 1,}, "id": %ID}\r\n')
    assert.matches("invalid JSON at byte 20 of a 36%-byte message", cause.message)
  end)
end)

describe("fault #18: a message that ends right after a comma (CVE-2023-53154)", function()
  it("never reads past the bytes held, in decode(), the stream decoder or drain()", function()
    runs_under_valgrind([[
      local core = require "qmp.core"
      for _, text in ipairs({ '{"1":1,', '{"1":1, ', '{"1":', '{"1', '{' }) do
        local v, err = core.decode(text)
        assert(v == nil and err.kind == "protocol", text)
        for _, how in ipairs({ "next", "drain" }) do
          local d = core.decoder()
          d:feed(text)
          if how == "next" then assert(d:next() == nil) else assert(#d:drain(10, {}) == 0) end
          assert(d:pending() == #text)
          d:feed('"x"}\n')
          local m = d:next()
          assert(m == nil or type(m) == "table")
        end
      end
    ]])
  end)
end)

describe("fault #20: a message that is JSON but not an object", function()
  for _, text in ipairs({ "[]", "1", '"s"', "null", "true" }) do
    it("ends the session with a protocol error: " .. text, function()
      local cause = protocol_error_for(text .. "\r\n")
      assert.matches("expected a JSON object", cause.message)
    end)
  end
end)

describe("fault #21: a million levels of nesting", function()
  it("is refused cleanly by decode(), the stream decoder and a client", function()
    local deep = ("["):rep(1000000)
    local v, err = core.decode(deep .. ("]"):rep(1000000))
    assert.is_nil(v)
    assert.matches("nesting", err.message)
    local d = core.decoder()
    d:feed('{"a":' .. deep)
    local m, err2 = d:next()
    assert.is_nil(m)
    assert.matches("nesting too deep", err2.message)
    local vm = client({ { expect = "x" }, { send = '{"return": ' .. deep }, { hold = 5 } })
    local _, err3 = vm:execute("x")
    assert.equal("closed", err3.kind)
    assert.matches("nesting too deep", err3.cause.message)
  end)
end)

describe("fault #22: the most amplifying messages under max_message #slow", function()
  -- A fresh lua5.4 decodes one 10 MiB message of many tiny values fed in
  -- 64 KiB pieces, as a connection does; it prints the growth of its peak
  -- RSS over what it held before (the text itself included).
  local PROBE = [[
    package.cpath = "./?.so;" .. package.cpath
    local core = require "qmp.core"
    local memory = dofile("spec/support/memory.lua")
    local item = os.getenv("QMP_FAULTS_ITEM")
    local n = ((10 << 20) - 40) // (#item + 1)
    local text = '{"return": [' .. (item .. ","):rep(n - 1) .. item .. '], "id": 1}\n'
    collectgarbage()
    local base = memory.rss()
    local d = core.decoder()
    for i = 1, #text, 65536 do d:feed(text:sub(i, i + 65535)) end
    local msg = assert(d:next())
    assert(#msg["return"] == n)
    io.write(#text, " ", memory.peak() - base, "\n")
  ]]

  for _, item in ipairs({ "0", '""', "{}", "[]", '{"a":0}' }) do
    it("keeps the peak under 40 times the message for 10 MiB of " .. item .. " #memory", function()
      local status, out = run("QMP_FAULTS_ITEM=" .. tmp.quote(item) .. " lua5.4 -e " .. tmp.quote(PROBE))
      assert.equal(0, status, out)
      local size, peak = out:match("^(%d+) (%-?%d+)\n")
      size, peak = tonumber(size), tonumber(peak)
      assert.is_truthy(size, out)
      assert.is_true(size <= 10 << 20)
      assert.is_true(peak < 40 * size, ("peak %.1f times the message"):format(peak / size))
    end)
  end
end)

describe("fault #23: numbers of 64 digits and more", function()
  it("decode as floats (infinity beyond the doubles), the same in every decoder", function()
    local cases = {
      { ("1"):rep(64), tonumber(("1"):rep(64) .. ".0") },
      { "-" .. ("9"):rep(65), -tonumber(("9"):rep(65) .. ".0") },
      { ("1"):rep(400), math.huge },
      { "0." .. ("1"):rep(100), tonumber("0." .. ("1"):rep(100)) },
    }
    for _, c in ipairs(cases) do
      local v = core.decode(c[1])
      assert.equal("float", math.type(v), c[1])
      assert.equal(c[2], v)
      local text = '{"event": "FAULTS_NUMBER", "data": {"n": ' .. c[1] .. '}, ' ..
                   '"timestamp": {"seconds": 1, "microseconds": 2}}\n'
      for _, how in ipairs({ "next", "drain" }) do
        local got = decode_pieces({ text }, how, { FAULTS_NUMBER = true })
        assert.equal(1, #got)
        local m = assert(core.decode(text))
        assert.equal(show(m), got[1])
        assert.equal("float", math.type(m.data.n))
      end
    end
    rawset(qmp.events, "FAULTS_NUMBER", nil)
  end)
end)

describe("fault #26: -0, 0123, 1. and 1e5", function()
  it("have one defined value each, the same in every decoder", function()
    local cases = {
      { "-0", "integer", 0 }, { "0123", "integer", 123 }, { "-01", "integer", -1 },
      { "1.", "float", 1.0 }, { "1e5", "float", 100000.0 }, { "1E+2", "float", 100.0 },
    }
    for _, c in ipairs(cases) do
      local v = core.decode(c[1])
      assert.equal(c[2], math.type(v), c[1])
      assert.equal(c[3], v, c[1])
      local text = '{"event": "FAULTS_LAX", "data": {"n": ' .. c[1] .. '}, "timestamp": {"seconds": 1, "microseconds": 2}}\n'
      local whole = decode_pieces({ text }, "next")
      assert.same(whole, decode_pieces({ text }, "drain", { FAULTS_LAX = true }))
      assert.equal(c[2], math.type(core.decode(text).data.n))
    end
    for _, bad in ipairs({ ".5", "+1", "1e", "--1", "0x10", "1.5.5" }) do
      assert.is_nil(core.decode(bad), bad)
    end
    rawset(qmp.events, "FAULTS_LAX", nil)
  end)
end)

describe("fault #30: invalid UTF-8", function()
  it("passes through decoding as bytes, and is refused before anything is sent", function()
    assert.equal("\xff\xfe\xc0\x80", core.decode('"\xff\xfe\xc0\x80"'))
    local vm, srv = client({ { expect = "x", reply = fake.reply('"caf\xff"') }, { wait_close = true } })
    assert.equal("caf\xff", assert(vm:execute("x")))
    assert.has_error(function() qmp.encode("caf\xff") end)
    local ok, msg = pcall(vm.execute, vm, "y", { name = "\xc0\x80" })
    assert.is_false(ok)
    assert.matches("invalid UTF%-8", msg)
    vm:close()
    assert.is_true(srv:wait(5))
    assert.equal(2, #srv:received())   -- qmp_capabilities and x: y never left
  end)
end)

describe("fault #31: duplicate keys", function()
  it("keep the last one, in replies, events and every decoder", function()
    assert.same({ a = 2 }, core.decode('{"a":1,"a":2}'))
    local text = '{"event": "STOP", "event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}\n' ..
                 '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": 1}, "data": {"x": 2}}\n' ..
                 '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": 1, "y": "a", "x": 3}}\n' ..
                 '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": {"a": 1}, "x": [4]}}\n'
    local whole = decode_pieces({ text }, "next")
    assert.matches("^RESUME ", whole[1])
    assert.matches('"x":2', whole[2])
    assert.matches('{"x":3,"y":"a"}', whole[3], 1, true)
    assert.matches('{"x":[4]}', whole[4], 1, true)
    assert.same(whole, decode_pieces({ text }, "drain"))
    assert.same(whole, decode_pieces({ text }, "drain", { RESUME = true, STOP = true }))
    local vm = client({
      { expect = "x" }, { send = '{"return": 1, "return": 2, "id": "not-ours", "id": %ID}\r\n' },
      { hold = 5 },
    })
    assert.equal(2, assert(vm:execute("x")))
    assert.equal(0, vm.stats.unknown)
  end)
end)

describe("fault #32: keys that mean something to Lua", function()
  it("stay plain string keys of plain tables", function()
    local v = core.decode('{"__index": 1, "": 2, "1": 3, "__gc": 4, "__close": 5, "__mode": "k", "__name": "x"}')
    assert.is_nil(getmetatable(v))
    assert.is_nil(v[1])
    assert.equal(3, v["1"])
    assert.equal(2, v[""])
    assert.equal(1, v.__index)
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    assert.equal(7, n)
    local ev = core.decode('{"event": "STOP", "data": {"__index": {"x": 1}, "__call": 2}}')
    assert.is_nil(getmetatable(ev.data))
    assert.equal(1, ev.data.__index.x)
    local parts = {}
    for i = 1, 100000 do parts[i] = ('"k%d": %d'):format(i, i) end
    local big = assert(core.decode("{" .. table.concat(parts, ", ") .. "}"))
    n = 0
    for k, x in pairs(big) do
      n = n + 1
      assert(k == "k" .. x)
    end
    assert.equal(100000, n)
  end)
end)

describe("fault #33: a BOM or control bytes before a message", function()
  it("are refused by decode() and end the stream; inside a message they are whitespace, as cJSON has it", function()
    for _, text in ipairs({ "\xEF\xBB\xBF{}", "\1{}", "\31 {}" }) do
      local v, err = core.decode(text)
      assert.is_nil(v)
      assert.matches("expected a JSON value at byte 0", err.message)
      local d = core.decoder()
      d:feed(text .. "\n")
      local m, err2 = d:next()
      assert.is_nil(m)
      assert.matches("expected a JSON object", err2.message)
    end
    local d = core.decoder()
    d:feed('{"a": 1}\n\2{"b": 2}\n')
    assert.same({ a = 1 }, d:next())
    assert.matches("expected a JSON object", select(2, d:next()).message)
    assert.same({ a = 1 }, core.decode('{\1"a"\2:\31 1}'))
    assert.same({ '{"a":1}' }, decode_pieces({ '{\1"a"\2:\31 1}\n' }, "next"))
    assert.same({ a = 1 }, core.decode(' \t\r\n{"a": 1} \t\r\n'))
  end)
end)

describe("fault #34: keys in another case", function()
  it("are never taken for return, id or event", function()
    local vm = client({
      { expect = "x" }, { send = '{"Return": {}, "id": %ID}\r\n' },
      { expect = "y" },
      { send = '{"return": 1, "ID": %ID}\r\n{"Event": "STOP"}\r\n{"return": "ok", "id": %ID}\r\n' },
      { hold = 5 },
    })
    local ret, err = vm:execute("x")
    assert.is_nil(ret)
    assert.equal("protocol", err.kind)
    assert.matches("neither return nor error", err.message)
    assert.equal("ok", assert(vm:execute("y")))
    assert.equal(2, vm.stats.unknown)
    assert.equal(0, vm.stats.events)
  end)
end)

-- }====================

-- {==================== 2.3 the QMP protocol

describe("fault #35: a greeting with defects or with unknown members", function()
  local VERSION = '"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}'
  for _, case in ipairs({
    { "no QMP member", '{"qmp": {' .. VERSION .. ', "capabilities": []}}' },
    { "QMP not an object", '{"QMP": ["oob"]}' },
    { "capabilities missing", '{"QMP": {' .. VERSION .. '}}' },
    { "capabilities an object", '{"QMP": {' .. VERSION .. ', "capabilities": {}}}' },
    { "capabilities a string", '{"QMP": {' .. VERSION .. ', "capabilities": "oob"}}' },
  }) do
    it("refuses a greeting with " .. case[1], function()
      local srv = serve({ { send = case[2] .. "\r\n" }, { hold = 5 } })
      local vm, err = qmp.connect(srv.path, { timeout = 5 })
      assert.is_nil(vm)
      assert.equal("protocol", err.kind)
      assert.matches("expected the QMP greeting", err.message)
    end)
  end

  it("ignores members it does not know", function()
    local srv = serve({
      { send = '{"QMP": {' .. VERSION .. ', "capabilities": ["oob", "x-future"], "x-new": {"a": 1}}, "x-top": 1}\r\n' },
      { expect = "qmp_capabilities", expect_args = '"enable":%["oob"%]', reply = OK },
      { wait_close = true },
    })
    local vm = connect(srv)
    assert.is_true(vm.oob)
    assert.equal(1, vm.greeting["x-top"])
  end)
end)

describe("fault #38: replies whose id is not ours, or answered twice", function()
  it("are dropped and counted, and the session goes on", function()
    local vm = client({
      { expect = "q" },
      { send = '{"return": 1, "id": {"a": 1}}\r\n{"return": 2, "id": [1]}\r\n{"return": 3, "id": null}\r\n' ..
               '{"return": 4, "id": true}\r\n{"return": 5, "id": 1.5}\r\n' ..
               '{"return": "mine", "id": %ID}\r\n{"return": "again", "id": %ID}\r\n' },
      { expect = "r", reply = fake.reply('"r"') },
      { hold = 5 },
    })
    assert.equal("mine", assert(vm:execute("q")))
    assert.equal("r", assert(vm:execute("r")))
    assert.equal(6, vm.stats.unknown)
    assert.equal("ready", vm.state)
  end)
end)

describe("fault #39: an error reply without an id", function()
  local PARSE_ERROR = '{"error": {"class": "GenericError", "desc": "JSON parse error, \\\\u0000 is not supported"}}\r\n'

  it("with no command in flight is dropped and counted", function()
    local vm = client({ { send = PARSE_ERROR }, { expect = "x", reply = fake.reply('"x"') }, { hold = 5 } })
    assert(vm:run({ timeout = 5, done = function() return vm.stats.unknown == 1 end }))
    assert.equal("x", assert(vm:execute("x")))
    assert.equal(1, vm.stats.unknown)
  end)

  -- Commands a and b in flight, then error_line: the causes both got.
  local function two_in_flight(error_line)
    local srv = serve(opening({ { expect = "a" }, { expect = "b" }, { send = error_line }, { hold = 5 } }))
    local vm = connect(srv, { timeout = 5, waiter = in_flight.waiter })
    local results, causes = in_flight.execute(vm, { "a", "b" }), {}
    for _, name in ipairs({ "a", "b" }) do
      local r = results[name]
      assert.is_nil(r[1], name)
      assert.equal("closed", r[2].kind)
      assert.equal("protocol", r[2].cause.kind)
      causes[#causes + 1] = r[2].cause.message
    end
    assert.equal("closed", vm.state)
    return causes
  end

  it("with two commands in flight ends the session: both fail, naming the cause", function()
    for _, cause in ipairs(two_in_flight(PARSE_ERROR)) do
      assert.matches("without an id %(GenericError: JSON parse error.*2 commands are in flight", cause)
    end
  end)

  it("with two commands in flight quotes the peer's class and desc in one short line", function()
    local desc = "line 1\\nline 2 " .. ("x"):rep(10000)
    for _, cause in ipairs(two_in_flight('{"error": {"class": "Bad\\u0001Class", "desc": "' .. desc .. '"}}\r\n')) do
      assert.matches("without an id %(Bad\\u0001Class: line 1\\nline 2 x+%.%.%.%) while 2 commands are in flight", cause)
      assert.is_true(#cause < 400, cause)
    end
  end)
end)

describe("fault #40: a reply with neither return nor error, or a malformed error", function()
  it("fails that command only, with kind protocol; the session goes on", function()
    local vm = client({
      { expect = "a", reply = '{"id": %ID}' },
      { expect = "b", reply = '{"error": "boom", "id": %ID}' },
      { expect = "c", reply = '{"error": {"desc": "no class"}, "id": %ID}' },
      { expect = "d", reply = '{"error": {"class": "GenericError", "desc": 5}, "id": %ID}' },
      { expect = "e", reply = '{"error": {"class": "GenericError", "desc": "fine"}, "id": %ID}' },
      { expect = "f", reply = fake.reply('"f"') },
      { hold = 5 },
    })
    local _, err = vm:execute("a")
    assert.equal("protocol", err.kind)
    assert.matches("neither return nor error", err.message)
    for _, name in ipairs({ "b", "c", "d" }) do
      local ret, e = vm:execute(name)
      assert.is_nil(ret)
      assert.equal("protocol", e.kind, name)
      assert.matches("error member without a string class and desc", e.message)
    end
    local _, qerr = vm:execute("e")
    assert.equal("qmp", qerr.kind)
    assert.equal("GenericError", qerr.class)
    assert.equal("f", assert(vm:execute("f")))
    assert.equal("ready", vm.state)
  end)
end)

describe("fault #42: many events before, during and after a command", function()
  it("delivers every one, in stream order, and the reply", function()
    local function events(from, to)
      local parts = {}
      for i = from, to do parts[#parts + 1] = EV("RTC_CHANGE", '{"offset": ' .. i .. '}') end
      return table.concat(parts)
    end
    local vm = client({
      { send = events(1, 300) },
      { expect = "x" },
      { send = events(301, 600) .. '{"return": "done", "id": %ID}\r\n' .. events(601, 900) },
      { hold = 5 },
    })
    local offsets = {}
    vm:on("RTC_CHANGE", function(ev) offsets[#offsets + 1] = ev.offset end)
    assert.equal("done", assert(vm:execute("x")))
    assert(vm:run({ timeout = 5, done = function() return #offsets >= 900 end }))
    for i = 1, 900 do assert(offsets[i] == i, "event " .. i .. " is " .. tostring(offsets[i])) end
    assert.equal(900, vm.stats.events)
    assert.equal(0, vm.stats.overflow)
  end)
end)

describe("fault #43: unknown names and members, no data, no clock", function()
  it("are delivered as they came", function()
    finally(function() rawset(qmp.events, "__com.vendor_FAULT", nil) end)
    local vm = client({
      { send = '{"event": "__com.vendor_FAULT", "data": {"new": 1}, "extra": 2, ' ..
               '"timestamp": {"seconds": -1, "microseconds": -1}}\r\n' ..
               '{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}\r\n' ..
               '{"event": "RESUME"}\r\n' ..
               '{"event": "RESET", "data": null, "timestamp": {"seconds": 1.5, "microseconds": "x"}}\r\n' },
      { hold = 5 },
    })
    local seen = {}
    vm:on("*", function(ev) seen[#seen + 1] = ev end)
    assert(vm:run({ timeout = 5, done = function() return #seen >= 4 end }))
    local x, stop, resume, reset = seen[1], seen[2], seen[3], seen[4]
    assert.equal("__com.vendor_FAULT", x.event)
    assert.is_false(getmetatable(x).known)
    assert.equal(1, x.new)
    assert.equal(2, rawget(x, "extra"))
    assert.equal(-1, x.timestamp.seconds)
    assert.is_nil(x:time())
    assert.same({}, stop.data)
    assert.near(1.000002, stop:time(), 1e-9)
    assert.is_nil(rawget(resume, "timestamp"))
    assert.is_nil(resume:time())
    assert.equal(core.null, rawget(reset, "data"))
    assert.is_nil(reset:time())
    for _, ev in ipairs(seen) do
      assert.matches(ev.event, tostring(ev), 1, true)
    end
    assert.matches("^%(no time%) __com.vendor_FAULT", tostring(x))
  end)
end)

describe("fault #44: an event whose name is not a non-empty string", function()
  -- Runs the command "go", then the loop to the first event delivered: the
  -- reports to vm.on_error, and the names of the events delivered.
  local function go_and_collect(vm)
    local reports, seen = {}, {}
    vm.on_error = function(err) reports[#reports + 1] = err end
    vm:on("*", function(ev) seen[#seen + 1] = ev.event end)
    assert(vm:execute("go"))
    assert(vm:run({ timeout = 5, done = function() return #seen >= 1 end }))
    return reports, seen
  end
  it("is dropped, reported and counted in stats.malformed; the session goes on", function()
    local vm = client({
      { expect = "go" },
      { send = '{"event": 5, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n{"event": ""}\r\n' ..
               '{"event": null}\r\n{"event": {"a": 1}}\r\n' ..
               '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": ""}\r\n' .. EV("STOP") .. REPLY },
      { expect = "x", reply = fake.reply('"x"') },
      { hold = 5 },
    })
    local reports, seen = go_and_collect(vm)
    assert.same({ "STOP" }, seen)
    assert.equal("x", assert(vm:execute("x")))
    assert.equal(5, vm.stats.malformed)
    assert.equal(1, vm.stats.events)
    assert.equal(5, #reports)
    for _, r in ipairs(reports) do
      assert.equal("protocol", r.kind)
      assert.matches("not a non%-empty string", r.message)
    end
  end)

  -- Found by the protocol fuzzer: with opts.events, the fast path skipped
  -- an event named "" as one outside the set (counted in stats.events and
  -- stats.skipped, never reported).
  it("is not skipped as an unwanted name by an events interest set", function()
    local vm = client({
      { expect = "go" },
      { send = '{"event": ""}\r\n{"timestamp": {"seconds": 1, "microseconds": 2}, "event": ""}\r\n'
               .. EV("RESUME") .. EV("STOP") .. REPLY },
      { hold = 5 },
    }, { events = { "STOP" } })
    local reports, seen = go_and_collect(vm)
    assert.same({ "STOP" }, seen)
    assert.equal(2, vm.stats.malformed)
    assert.equal(2, vm.stats.events)
    assert.equal(1, vm.stats.skipped)
    assert.equal(2, #reports)
    for _, r in ipairs(reports) do assert.matches("not a non%-empty string", r.message) end
  end)

  -- Found by the protocol fuzzer's campaign: the report named the member
  -- names with %q, which writes a newline in a name as a backslash and a
  -- newline: a report of two lines, with the peer's bytes in it.
  it("is reported in one plain line whatever its member names hold", function()
    local vm = client({
      { expect = "go" },
      { send = '{"event": 5, "da\\n\\u0001ta\\t": 1, "' .. ("m"):rep(100) .. '": 2}\r\n' .. EV("STOP") .. REPLY },
      { hold = 5 },
    })
    local reports, seen = go_and_collect(vm)
    assert.same({ "STOP" }, seen)
    assert.equal(1, #reports)
    local text = tostring(reports[1])
    assert.falsy(text:find("[%c\128-\255]"), text)
    assert.matches('"da\\n\\u0001ta\\t"', text)
    assert.matches('"' .. ("m"):rep(37) .. '%.%.%."', text)
    assert.falsy(text:find(("m"):rep(38), 1, true), text)
  end)
end)

-- Names beginning "qmp." are the client's own events (qmp.connected, ...),
-- which QAPI cannot name: from the peer, one would pass for the client's.
describe("an event from the peer named like the client's own (qmp.*)", function()
  local OWN = EV("qmp.disconnected", '{"generation": 1}') .. '{"event": "qmp\\u002ereconnected"}\r\n'
  for _, opts in ipairs({ {}, { events = { "STOP", "qmp.disconnected", "qmp.reconnected" } } }) do
    it("is dropped, reported and counted in stats.malformed" .. (opts.events and ", wanted or not" or ""), function()
      local vm = client({
        { expect = "go" },
        { send = OWN .. EV("STOP") .. REPLY },
        { hold = 5 },
      }, opts)
      local reports, own, seen = {}, 0, {}
      vm.on_error = function(err) reports[#reports + 1] = err end
      vm:on("qmp.disconnected", function() own = own + 1 end)
      vm:on("qmp.reconnected", function() own = own + 1 end)
      vm:on("STOP", function(ev) seen[#seen + 1] = ev.event end)
      assert(vm:execute("go"))
      assert(vm:run({ timeout = 5, done = function() return #seen >= 1 end }))
      assert.equal(0, own)
      assert.equal(2, vm.stats.malformed)
      assert.equal(2, #reports)
      for _, r in ipairs(reports) do
        assert.equal("protocol", r.kind)
        assert.matches("named like the client's own (qmp.*)", r.message, 1, true)
      end
    end)
  end

  it("covers every name the client gives its own events", function()
    for _, name in ipairs(require("qmp.events").synthetic_names) do assert.equal("qmp.", name:sub(1, 4)) end
  end)
end)

describe("fault #46: a throttled burst", function()
  it("is state, not a count: the resume policy resumes a burst of one disk once", function()
    assert.is_true(qmp.events.RTC_CHANGE.throttled)
    local function io_error()
      return EV("BLOCK_IO_ERROR", '{"device": "", "node-name": "disk0", "operation": "write", "action": "stop", ' ..
                                  '"reason": "No space left on device", "nospace": true}')
    end
    local vm = client({
      { send = io_error():rep(5) .. EV("STOP") },
      { expect = "query-status", reply = fake.reply('{"status": "io-error", "running": false}') },
      { expect = "cont" }, { send = EV("RESUME") .. REPLY },
      { expect = "query-name", reply = OK },   -- only if nothing else was sent before it
      { hold = 5 },
    })
    local p = qmp.policy.resume_on_io_error(vm, { delay = 0.01 })
    assert(vm:run({ timeout = 5, done = function() return p.resumes == 1 end }))
    assert.is_nil(vm:run({ timeout = 0.1 }))
    assert(vm:execute("query-name"))
    assert.same({ 1, 5 }, { p.resumes, p.errors_seen })
  end)
end)

-- }====================

-- {==================== 2.4 handlers

describe("fault #49: handlers that call back into the connection", function()
  it("run one after another, never nested, over 200 events each answered by a command", function()
    local steps = { { send = EV("RTC_CHANGE", '{"offset": 1}') } }
    for i = 1, 200 do
      steps[#steps + 1] = { expect = "query-status" }
      steps[#steps + 1] = { send = '{"return": {"status": "running"}, "id": %ID}\r\n' ..
                                   EV("RTC_CHANGE", '{"offset": ' .. (i + 1) .. '}') }
    end
    steps[#steps + 1] = { hold = 10 }
    local vm = client(steps, { timeout = 10 })
    local log, depths = {}, {}
    local function depth()
      local n = 0
      while debug.getinfo(n + 2, "l") do n = n + 1 end
      return n
    end
    vm:on("RTC_CHANGE", function(ev, v)
      log[#log + 1] = "begin " .. ev.offset
      depths[#depths + 1] = depth()
      if ev.offset == 1 then
        assert(v:step())   -- a step from inside a handler runs no handler
        assert.equal(1, #log)
      end
      if ev.offset <= 200 then assert.equal("running", assert(v:execute("query-status")).status) end
      log[#log + 1] = "end " .. ev.offset
    end)
    assert(vm:run({ timeout = 10, done = function() return #log >= 402 end }))
    for i = 1, 201 do
      assert.equal("begin " .. i, log[2 * i - 1])
      assert.equal("end " .. i, log[2 * i])
    end
    for i = 2, #depths do assert.equal(depths[1], depths[i], "the stack grew at event " .. i) end
  end)
end)

describe("fault #50: a handler that closes the connection", function()
  it("ends the loop with closed, releases the fd, and nothing raises", function()
    local vm = client({ { send = EV("STOP") .. EV("RESUME") .. EV("RESET", '{"guest": false, "reason": "host-qmp-system-reset"}') },
                        { hold = 5 } })
    local fd = vm:pollfd()
    local seen = {}
    vm:on("*", function(ev, v)
      seen[#seen + 1] = ev.event
      if ev.event == "STOP" then
        v:close()
        collectgarbage()
      end
    end)
    local ok, err = vm:run({ timeout = 5 })
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    assert.equal("STOP", seen[1])
    assert.is_true(vm:closed())
    assert.equal(-1, vm:pollfd())
    assert.is_false(fd_open(fd))
    local _, again = vm:execute("query-status")
    assert.equal("closed", again.kind)
  end)
end)

-- }====================

-- {==================== 2.5 Lua and C resources

describe("fault #56: cJSON's own allocations failing", function()
  it("give kind memory, leak nothing and leave the stream usable, at every allocation", function()
    if not have("valgrind") then pending("valgrind is not installed") return end
    local status, out = run(VALGRIND .. harness_cmd("cjson"))
    assert.equal(0, status, out)
    assert.matches("ok cjson", out)
  end)
end)

describe("fault #57: connections left to the garbage collector or to lua_close", function()
  it("have their fd closed exactly once", function()
    local unix = require "socket.unix"
    local dir = tmp.dir("faultsgc")
    cleanup(function() tmp.remove(dir) end)
    local path = dir .. "/s.sock"
    local listener = assert(unix.stream())
    assert(listener:bind(path))
    assert(listener:listen(8))
    cleanup(function() listener:close() end)
    -- Each in a function of its own, so that no stack slot keeps the object.
    -- A raw connection, dropped:
    local function dropped()
      local conn, connected = core.open_unix(path)
      require("support.conn").finish(conn, connected)
      assert.is_true(fd_open(conn:fileno()))
      return conn:fileno()
    end
    local fd = dropped()
    collectgarbage()
    collectgarbage()
    assert.is_false(fd_open(fd))
    -- A client closed (twice), collected once its fd number may have gone
    -- to another socket: its finalizer must not close that one.
    local srv = serve(opening({ { wait_close = true } }))
    local function closed()
      local vm = assert(qmp.connect(srv.path, { timeout = 5 }))
      local n = vm:pollfd()
      vm:close()
      vm:close()
      local _, err = vm:execute("query-status")
      assert.equal("closed", err.kind)
      return n
    end
    fd = closed()
    assert.is_false(fd_open(fd))
    local other = assert(unix.stream())
    cleanup(function() other:close() end)
    assert(other:connect(path))
    collectgarbage()
    collectgarbage()
    assert.is_true(fd_open(math.tointeger(other:getfd())), "a finalizer closed an fd it no longer owned")
    assert(other:send("still open"))
    local status, out = harness_run("close", path)
    assert.equal(0, status, out)
    assert.matches("ok close: 4 fds closed by lua_close", out)
  end)
end)

describe("fault #58: a <close> client and an error in its block", function()
  it("releases the fd as the error unwinds", function()
    local srv = serve(opening({ { wait_close = true } }))
    local fd
    local ok, err = pcall(function()
      local vm <close> = assert(qmp.connect(srv.path, { timeout = 5 }))
      fd = vm:pollfd()
      error("boom")
    end)
    assert.is_false(ok)
    assert.matches("boom", err)
    assert.is_false(fd_open(fd))
    assert.is_true(srv:wait(5))
  end)

  it("closes the decoder's to-be-closed slot right whatever the stack depth (valgrind)", function()
    runs_under_valgrind([[
      local core = require "qmp.core"
      local msg = '{"event": "STOP", "data": {"a": [1, 2, {"b": 18446744073709551615}]}, ' ..
                  '"timestamp": {"seconds": 1, "microseconds": 2}}\n{"return": {"x": "y"}, "id": 1}\n'
      local function at(depth, fn, ...)
        if depth == 0 then return fn(...) end
        local a, b, c, d, e, f, g, h = 1, 2, 3, 4, 5, 6, 7, 8   -- slots the stack must hold
        local r = { at(depth - 1, fn, ...) }
        return table.unpack(r, 1, (a + b + c + d + e + f + g + h) // 36)
      end
      for depth = 0, 300 do
        assert(at(depth, core.decode, msg:match("^[^\n]*")))
        local d = core.decoder()
        d:feed(msg .. msg)
        assert(at(depth, d.next, d))
        assert(#at(depth, d.drain, d, 10) == 3)
        assert(at(depth, core.decode, "[1,") == nil)
      end
    ]])
  end)
end)

describe("fault #59: a child process", function()
  it("does not inherit the monitor socket", function()
    local vm = client({ { hold = 5 } })
    local fd = vm:pollfd()
    local p = assert(io.popen("readlink /proc/" .. mypid() .. "/fd/" .. fd))
    local target = p:read("l")
    p:close()
    assert.matches("^socket:%[%d+%]$", target)
    p = assert(io.popen("sh -c 'for f in /proc/$$/fd/*; do readlink \"$f\"; done'"))
    local inherited = p:read("a")
    p:close()
    assert.matches("pipe:", inherited)   -- the listing works: the child's stdout is seen
    assert.is_nil(inherited:find(target, 1, true), "the child holds " .. target)
  end)
end)

describe("fault #61: a NUL byte in a command's string", function()
  it("raises before anything is sent; a backslash before u0000 is text and is sent", function()
    local vm, srv = client({ { expect = "y", expect_args = '"s":"a\\\\u0000"', reply = OK }, { wait_close = true } })
    local ok, msg = pcall(vm.execute, vm, "x", { s = "a\0b" })
    assert.is_false(ok)
    assert.matches("faults_spec%.lua:%d+: qmp: execute: x: a string in the command holds a NUL byte", msg)
    ok, msg = pcall(vm.execute, vm, "x", { ["k\0"] = 1 })
    assert.is_false(ok)
    assert.matches("faults_spec%.lua:%d+: qmp: execute: x: a string in the command holds a NUL byte", msg)
    assert(vm:execute("y", { s = "a\\u0000" }))
    vm:close()
    assert.is_true(srv:wait(5))
    assert.equal(2, #srv:received())
  end)
end)

describe("fault #62: two Lua states in two threads", function()
  it("decode and encode at once without disturbing each other", function()
    -- nothing process-wide: no cJSON error pointer, no cJSON hooks
    local p = assert(io.popen("cat csrc/*.c csrc/*.h"))
    local src = p:read("a")
    p:close()
    assert.is_true(#src > 10000)
    assert.is_nil(src:find("cJSON_GetErrorPtr", 1, true))
    assert.is_nil(src:find("cJSON_InitHooks", 1, true))
    local status, out = harness_run("threads", "2")
    assert.equal(0, status, out)
    assert.matches("ok threads thread 1\nok threads thread 2\n", out)
  end)
end)

describe("fault #64: a thread with a small C stack", function()
  it("decodes at the full depth in 128 KiB (musl's default), and does everything in 384 KiB", function()
    local status, out = harness_run("stack", "128", "decode")
    assert.equal(0, status, out)
    status, out = harness_run("stack", "384", "all")
    assert.equal(0, status, out)
  end)
end)

-- }====================

-- {==================== the table

describe("docs/faults.md", function()
  -- The names of the describes and its of a spec file: the first string
  -- literal of each call, unescaped; "prefix" when the call adds to it (a
  -- name made in a loop), else "exact".
  local function names_in(path)
    local src = tmp.read(path)
    if not src then return nil end
    local names = {}
    for _, word in ipairs({ "describe", "it" }) do
      for p in src:gmatch("%f[%w_]" .. word .. "%s*%(%s*()[\"']") do
        local q, i = src:sub(p, p), p + 1
        while src:sub(i, i) ~= q do
          i = i + (src:sub(i, i) == "\\" and 2 or 1)
          assert(i <= #src, "an unfinished string in " .. path)
        end
        local name = assert(load("return " .. src:sub(p, i)))()
        names[name] = src:match("^%s*%.%.", i + 1) and "prefix" or "exact"
      end
    end
    return names
  end

  -- Is name one of the file's test names (or one made from a prefix)?
  local function known(names, name)
    if names[name] then return true end
    for n, how in pairs(names) do
      if how == "prefix" and name:sub(1, #n) == n and #name > #n then return true end
      -- the doc may leave out busted tags at the end (" #timing")
      local tag, untagged = "%s+#%a[%w_%-]*$", n
      while untagged:find(tag) do untagged = untagged:gsub(tag, "") end
      if untagged == name then return true end
    end
    return false
  end

  -- The references of a proof cell: { { file, name }, ... }.
  local function references(cell)
    local refs, file, pos = {}, nil, 1
    while true do
      local at, _, mark = cell:find("([`\"])", pos)
      if not at then return refs end
      local close = cell:find(mark, at + 1, true)
      assert(close, "an unclosed " .. mark .. " in: " .. cell)
      local text = cell:sub(at + 1, close - 1)
      if mark == "`" then
        if text:match("^spec/.+%.lua$") then file = text end
      else
        assert(file, "a test name before any spec file: " .. text)
        refs[#refs + 1] = { file, text }
      end
      pos = close + 1
    end
  end

  it("names, for every row from 1 to the last, tests that exist", function()
    local doc = assert(tmp.read("docs/faults.md"))
    local rows, files = {}, {}
    for line in doc:gmatch("[^\n]+") do
      local n = line:match("^| (%d+) |")
      if n then
        n = tonumber(n)
        assert.is_nil(rows[n], "row " .. n .. " twice")
        local cells = {}
        for c in (line .. "|"):gmatch("%s*([^|]*[^|%s])%s*|") do cells[#cells + 1] = c end
        assert.equal(4, #cells, "row " .. n .. " has not 4 cells")
        rows[n] = cells[4]
      end
    end
    local last = 0   -- rows are numbered 1 to the last, none missing
    for n in pairs(rows) do last = math.max(last, n) end
    assert.is_true(last >= 64, "rows end at " .. last)
    for n = 1, last do
      local cell = rows[n]
      assert(cell, "no row " .. n)
      local refs = references(cell)
      assert(#refs > 0, "row " .. n .. " names no test")
      for _, ref in ipairs(refs) do
        local file, name = ref[1], ref[2]
        if files[file] == nil then files[file] = names_in(file) or false end
        assert(files[file], "row " .. n .. ": no file " .. file)
        assert(known(files[file], name), ("row %d: %s has no test named %q"):format(n, file, name))
      end
    end
    assert.is_nil(rows[0])
    -- and every describe here is where its row says
    for name in pairs(names_in("spec/faults_spec.lua")) do
      local n = tonumber(name:match("^fault #(%d+): "))
      if n then
        assert(rows[n]:find('"' .. name .. '"', 1, true), "row " .. n .. " does not name " .. name)
      end
    end
  end)
end)

-- }====================
