-- The Lua side of faults_harness.c: one function per mode, run in a fresh
-- Lua state; each returns true, or nil and why.  See faults_harness.c.
local M = {}

local function fail(fmt, ...)
  error(string.format(fmt, ...), 2)
end

-- Check a condition inside a mode's function: raises why (run() reports it).
local function check(ok, fmt, ...)
  if not ok then fail(fmt, ...) end
end

local fixture = require("support.fixtures").read

-- {==================== threads (row 62)

-- Decoding, in both decoders, good and bad messages (cJSON's error paths
-- included), and encoding, over and over; every result checked.
function M.threads(index)
  local core = require "qmp.core"
  local qmp = require "qmp"
  local session = fixture("qemu-7.2-session.txt")
  local reply = '{"return": {"n": 18446744073709551615, "i": 9007199254740993, "f": 0.5, ' ..
                '"s": "caf\\u00e9", "a": [1, [2, [3]], {}], "t": ' .. index .. '}, "id": "qmp#' .. index .. '"}'
  local bad = { '{"a":1,}', '{"a": tru}', "{'a':1}", '{"a":"\\ud800"}', '[1,2' }
  local sorted = { sort = true }
  local want = core.encode(assert(core.decode(reply)), sorted)
  for round = 1, 2000 do
    local v = assert(core.decode(reply))
    check(core.encode(v, sorted) == want, "round %d: reply decoded to %s", round, core.encode(v, sorted))
    check(tostring(v["return"].n) == "18446744073709551615" and v["return"].i == 9007199254740993
          and v["return"].t == index, "round %d: wrong numbers", round)
    for _, text in ipairs(bad) do
      local x, err = core.decode(text)
      check(x == nil and err and err.kind == "protocol", "round %d: %s was accepted", round, text)
    end
    if round % 50 == 0 then  -- the whole recorded session through the stream decoder, in pieces
      local d = core.decoder()
      local n, pos, size = 0, 1, 1 + (round // 50) % 97
      while pos <= #session do
        d:feed(session:sub(pos, pos + size - 1))
        pos = pos + size
        while true do
          local msg, err = d:next()
          check(err == nil, "round %d: %s", round, tostring(err))
          if not msg then break end
          n = n + 1
        end
      end
      check(n == 16, "round %d: %d messages of the session", round, n)
      local ev = assert(qmp.decode('{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}'))
      check(getmetatable(ev) == qmp.events.STOP, "round %d: an untyped STOP", round)
    end
  end
  return true
end

-- }====================

-- {==================== stack (row 64)

-- The deepest values the module accepts and the first it refuses, decoded
-- (both decoders) and, unless part is "decode", encoded (compact, then
-- sorted and pretty): the most C stack the module ever needs.
function M.stack(_, part)
  local core = require "qmp.core"
  local function depth(v)
    local n = 0
    while type(v) == "table" do n = n + 1; v = v[1] or v.a end
    return n
  end
  local arrays = ("["):rep(1000) .. ("]"):rep(1000)
  local objects = ('{"a":'):rep(999) .. "[]" .. ("}"):rep(999)
  for _, text in ipairs({ arrays, objects }) do
    local v = assert(core.decode(text))
    check(depth(v) == 1000, "decoded %d levels", depth(v))
    local x, err = core.decode("[" .. text .. "]")
    check(x == nil and err and err.message:find("nesting", 1, true), "1001 levels were accepted")
    local d = core.decoder()
    d:feed(text:sub(1, 1) == "{" and (text .. "\n") or ('{"a":' .. text:sub(2, -2) .. "}\n"))
    local msg
    msg, err = d:next()
    check(msg and depth(msg) == 1000, "1000 levels from the stream decoder: %s", tostring(err))
    d = core.decoder()
    d:feed('{"a":' .. text .. "}\n")
    msg, err = d:next()
    check(msg == nil and err and err.message:find("nesting", 1, true),
          "1001 levels from the stream decoder: %s", tostring(err))
    if part ~= "decode" then
      for _, opts in ipairs({ {}, { sort = true, pretty = true } }) do
        check(depth(core.decode(core.encode(v, opts))) == 1000, "1000 levels encoded")
      end
    end
  end
  -- 1000 levels each over 64 KiB: the stream decoder takes big containers
  -- apart, one inside another, only so deep
  local s = '"' .. ("x"):rep(70000) .. '"'
  for _, text in ipairs({ ('{"a":'):rep(1000) .. s .. ("}"):rep(1000),
                          '{"a":' .. ("["):rep(999) .. s .. ("]"):rep(999) .. "}" }) do
    local d = core.decoder()
    d:feed(text .. "\n")
    local msg, err = d:next()
    check(msg and depth(msg) == 1000, "1000 big levels from the stream decoder: %s", tostring(err))
  end
  return true
end

-- }====================

-- {==================== eintr (row 6)

-- Against the fake peer at path (spec/faults_spec.lua scripts it): a reply
-- that comes late, a wait that times out, a command far larger than the
-- socket buffer, poll and sleep, all while signals interrupt every call.
function M.eintr(path)
  local core = require "qmp.core"
  local qmp = require "qmp"
  local vm, err = qmp.connect(path, { timeout = 5 })
  check(vm, "connect: %s", tostring(err))
  vm.on_error = function() end
  local t0 = qmp.monotime()
  local ret
  ret, err = vm:execute("slow")
  check(ret == "late", "slow: %s", tostring(err))
  check(qmp.monotime() - t0 >= 0.2, "the late reply came too soon")
  local big = ("x"):rep(4 << 20)
  ret, err = vm:execute("big", { data = big })
  check(ret == #big, "big: %s", tostring(ret or err))
  t0 = qmp.monotime()
  local ev
  ev, err = vm:wait("FAULTS_NEVER", nil, 0.3)
  local took = qmp.monotime() - t0
  check(ev == nil and err.kind == "timeout", "wait: %s", tostring(ev or err))
  check(took >= 0.3 and took < 1.5, "a 0.3 s wait took %.3f s", took)
  t0 = qmp.monotime()
  check(#core.poll({ vm:pollfd() }, 0.2) == 0, "poll found something to read")
  took = qmp.monotime() - t0
  check(took >= 0.2 and took < 1.2, "a 0.2 s poll took %.3f s", took)
  t0 = qmp.monotime()
  core.sleep(0.2)
  took = qmp.monotime() - t0
  check(took >= 0.2 and took < 1.2, "a 0.2 s sleep took %.3f s", took)
  check(assert(vm:execute("query-status")).status == "running", "query-status")
  vm:close()
  return true
end

-- }====================

-- {==================== close (row 57)

-- Connections left open for lua_close: three raw ones (connected from the
-- listen backlog of the peer at path) and a client still connecting.
KEEP = {}
function M.close(path)
  local core = require "qmp.core"
  local qmp = require "qmp"
  local fds = {}
  for i = 1, 3 do
    local conn, connected = core.open_unix(path)
    check(conn, "open_unix: %s", tostring(connected))
    KEEP[i] = conn
    fds[i] = conn:fileno()
  end
  local vm = qmp.client(path, { timeout = 5 })
  KEEP[4] = vm
  fds[4] = vm:fileno()
  check(fds[4] >= 0, "the client has no fd")
  return true, fds
end

-- }====================

-- {==================== cjson (row 56)

local MESSAGES = {
  '{"timestamp": {"seconds": 1795288011, "microseconds": 599184}, "event": "BLOCK_IO_ERROR", ' ..
    '"data": {"device": "", "nospace": false, "node-name": "disk0", "reason": "Input/output error", ' ..
    '"operation": "read", "action": "stop"}}',
  '{"return": [{"name": "a", "props": {"x": [1, 2.5, "s", null, true], "n": 18446744073709551615}}, ' ..
    '{"name": "b", "props": {}}], "id": "qmp#7"}',
  -- over 64 KiB: the stream decoder parses it a member at a time
  '{"return": ["' .. ("x"):rep(70000) .. '", {"a": 1, "b": [1, 2.5, null]}, ["' .. ("y"):rep(70000) ..
    '"]], "id": "qmp#8"}',
}

-- What a failed call gave: "ok" with the value, or the error's message.
local function outcome(ok, v, err)
  if not ok then return "raised", tostring(v) end
  if v == nil then return "error", err end
  return "ok", v
end

local function same(a, b)
  local core = require "qmp.core"
  return core.encode(a, { sort = true }) == core.encode(b, { sort = true })
end

-- The error for a message cJSON could not build: kind "memory", never a
-- word of bad JSON.  (A Lua allocation failing would raise instead: this
-- harness fails none.)
local function is_oom(how, e)
  return how == "error" and type(e) == "table" and e.kind == "memory"
    and e.message:find("out of memory", 1, true) ~= nil
end

-- Every allocation cJSON makes for each message, made to fail in turn
-- (once, then from there on): the call fails cleanly, nothing leaks, and
-- a stream decoder goes on with the next message.
function M.cjson()
  local core = require "qmp.core"
  local points = 0
  for mi, text in ipairs(MESSAGES) do
    local expected = assert(core.decode(text))
    for _, persistent in ipairs({ false, true }) do
      local n = 0
      while true do
        n = n + 1
        check(n < 10000, "message %d: no end to the failure points", mi)
        fail_cjson(n, persistent)
        local how, v = outcome(pcall(core.decode, text))
        local seen = fail_cjson(0)
        check(cjson_live() == 0, "message %d, allocation %d: %d cJSON blocks left", mi, n, cjson_live())
        if seen < n then  -- ran without reaching the n-th allocation
          check(how == "ok" and same(v, expected), "message %d: %s without a failure", mi, how)
          break
        end
        points = points + 1
        check(how ~= "ok", "message %d, allocation %d failed, yet decode() gave a value", mi, n)
        check(is_oom(how, v), "message %d, allocation %d: not told as out of memory: %s %s",
              mi, n, how, tostring(v))
        -- the stream decoder: the message fails, the next one comes
        local d = core.decoder()
        d:feed(text .. "\n" .. text .. "\n")
        fail_cjson(n, persistent)
        local how2, v2 = outcome(pcall(d.next, d))
        fail_cjson(0)
        check(cjson_live() == 0, "message %d, allocation %d: cJSON blocks left by next()", mi, n)
        check(how2 ~= "ok" or same(v2, expected), "message %d: next() gave another value", mi)
        if how2 ~= "ok" then
          check(is_oom(how2, v2), "message %d, allocation %d: next(): %s %s", mi, n, how2, tostring(v2))
        end
        local after = d:next()
        check(after and same(after, expected), "message %d, allocation %d: the next message is lost", mi, n)
        -- drain(): the batch ends at the failed message, with the error
        d = core.decoder()
        d:feed(text .. "\n" .. text .. "\n" .. text .. "\n")
        fail_cjson(n, persistent)
        local ok3, list, _, err3 = pcall(d.drain, d, 10)
        fail_cjson(0)
        check(ok3, "message %d, allocation %d: drain() raised %s", mi, n, tostring(list))
        check(cjson_live() == 0, "message %d, allocation %d: cJSON blocks left by drain()", mi, n)
        local got = #list
        if err3 then check(is_oom("error", err3), "drain(): %s", tostring(err3)) end
        for _, m in ipairs(list) do check(same(m, expected), "drain() gave another value") end
        local rest = d:drain(10)
        got = got + #rest
        check(got == (err3 and 2 or 3), "message %d, allocation %d: drain() gave %d of 3 (err %s)",
              mi, n, got, tostring(err3))
      end
    end
  end
  check(points > 20, "only %d failure points", points)
  return true
end

-- }====================

return M
