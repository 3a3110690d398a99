-- The cases spec/support/allocfail.c runs: each mode is a list of cases.
-- decode, stream, resume: { name, setup = function(n) -> f, args..., check }
--   allocfail calls f(args...) while the Nth Lua allocation fails, then
--   check(ok, results... | error) without failures: true, or nil and why.
-- hostile, reentry: { name, run = function() -> true | nil, why }, run once.
local core = require "qmp.core"
require "qmp.events"
local fixtures = require "support.fixtures"

-- {====================================================== }
-- Comparing decoded values

local function show(v)
  if type(v) == "string" then return string.format("%q", v:sub(1, 60)) end
  if math.type(v) then return math.type(v) .. " " .. tostring(v) end
  return tostring(v)
end

-- nil when b is a exactly (integers vs floats, uint64 digits, metatables),
-- else where they differ.
local function diff(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then return path .. ": " .. show(a) .. " vs " .. show(b) end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) or a ~= b then return path .. ": " .. show(a) .. " vs " .. show(b) end
    return nil
  end
  if type(a) == "userdata" and getmetatable(a) == core.uint64_mt then
    if getmetatable(b) ~= core.uint64_mt or tostring(a) ~= tostring(b) then
      return path .. ": " .. tostring(a) .. " vs " .. show(b)
    end
    return nil
  end
  if type(a) ~= "table" then
    if rawequal(a, b) then return nil end
    return path .. ": " .. show(a) .. " vs " .. show(b)
  end
  if getmetatable(a) ~= getmetatable(b) then return path .. ": different metatables" end
  for k, v in next, a do
    local d = diff(v, rawget(b, k), path .. "." .. tostring(k))
    if d then return d end
  end
  for k in next, b do
    if rawget(a, k) == nil then return path .. "." .. tostring(k) .. ": unexpected" end
  end
  return nil
end

local function all_messages(d)
  local out = {}
  while true do
    local msg, err = d:next()
    if err then return nil, tostring(err) end
    if msg == nil then return out end
    out[#out + 1] = msg
  end
end

local function stream(text)
  local d = core.decoder()
  d:feed(text)
  return d
end

local function is_memory_error(e)
  return e == "not enough memory"
end
-- }======================================================

-- {====================================================== }
-- Texts

-- Like a query-qmp-schema reply: about 1 KiB of nested objects and arrays.
local SCHEMA = [[{"return": [{"name": "query-status", "ret-type": "1", "meta-type": "command", "arg-type": "0"},
{"name": "STOP", "meta-type": "event", "arg-type": "0"}, {"name": "0", "members": [], "meta-type": "object"},
{"name": "1", "members": [{"name": "running", "type": "bool"}, {"name": "singlestep", "type": "bool"},
{"name": "status", "type": "2"}], "meta-type": "object"}, {"name": "2", "meta-type": "enum",
"values": ["debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
"finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
"guest-panicked", "colo"], "members": [{"name": "debug"}, {"name": "inmigrate"}]},
{"name": "query-version", "ret-type": "3", "meta-type": "command", "arg-type": "0"},
{"name": "3", "members": [{"name": "qemu", "type": "4"}, {"name": "package", "type": "str"}],
"meta-type": "object"}, {"name": "4", "members": [{"name": "major", "type": "int"},
{"name": "minor", "type": "int"}, {"name": "micro", "type": "int"}], "meta-type": "object"},
{"name": "int", "json-type": "int", "meta-type": "builtin"}, {"name": "null", "json-type": "null",
"meta-type": "builtin", "default": null, "features": ["deprecated", "unstable"]}], "id": 17}]]

-- An event with integers of every size: the uint64 path allocates a box.
local BIG = '{"timestamp": {"seconds": 1795288011, "microseconds": 599184}, "event": "GUEST_PANICKED", ' ..
  '"data": {"action": "pause", "info": {"type": "hyper-v", "arg1": 18446744073709551615, ' ..
  '"arg2": 9223372036854775808, "arg3": 9007199254740993, "arg4": -9223372036854775808, ' ..
  '"arg5": 12, "ratio": 0.5, "msg": "crash \\"1\\" at -2", "more": [18446744073709551614, 1e3, null]}}}'

local SESSION = fixtures.read("qemu-7.2-session.txt")
local PRETTY = fixtures.read("qemu-7.2-pretty.txt")
local REPLY = '{"return": {}, "id": 8}'

-- Checks that the expected values are right, not merely what the decoder gives.
do
  local big = assert(core.decode(BIG))
  local info = big.data.info
  assert(getmetatable(big) == core.events.GUEST_PANICKED)
  assert(getmetatable(info.arg1) == core.uint64_mt and tostring(info.arg1) == "18446744073709551615")
  assert(getmetatable(info.arg2) == core.uint64_mt and tostring(info.arg2) == "9223372036854775808")
  assert(math.type(info.arg3) == "integer" and info.arg3 == 9007199254740993)
  assert(math.type(info.arg4) == "integer" and info.arg4 == math.mininteger)
  assert(math.type(info.arg5) == "integer" and info.ratio == 0.5)
  assert(tostring(info.more[1]) == "18446744073709551614" and math.type(info.more[2]) == "float")
  assert(info.more[3] == core.null and info.msg == 'crash "1" at -2')
  local schema = assert(core.decode(SCHEMA))
  assert(#schema["return"] == 10 and schema.id == 17 and schema["return"][10].default == core.null)
  assert(#assert(all_messages(stream(SESSION))) == 16)
  assert(#assert(all_messages(stream(PRETTY))) == 16)
end

local function expect(text) return assert(core.decode(text)) end
-- }======================================================

-- A case for one text through core.decode().
local function decode_case(name, text)
  local expected = expect(text)
  return {
    name = name,
    setup = function() return core.decode, text end,
    check = function(ok, v, err)
      if not ok then
        if not is_memory_error(v) then return nil, "error " .. tostring(v) end
        v, err = core.decode(text)  -- again, without failures
      end
      if v == nil then return nil, tostring(err) end
      local d = diff(expected, v)
      if d then return nil, d end
      return true
    end,
  }
end

-- An event of a name never seen before each run: the decoder has the Lua
-- layer create its type while allocations fail.
local function new_event_case()
  local name
  return {
    name = "event of a new type",
    setup = function(n)
      name = "ALLOCFAIL_NEW_" .. n
      return core.decode, '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "' .. name .. '"}'
    end,
    check = function(ok, v)
      if not ok then
        if not is_memory_error(v) then return nil, "error " .. tostring(v) end
        v = core.decode('{"event": "' .. name .. '"}')
      end
      local T = rawget(core.events, name)
      if type(T) ~= "table" or getmetatable(v) ~= T or T.name ~= name then
        return nil, "no type for " .. name
      end
      if type(rawget(v, "data")) ~= "table" or next(rawget(v, "data")) ~= nil then
        return nil, "data is not {}"
      end
      return true
    end,
  }
end

-- A case for a text of several messages drained from a fresh decoder.
local function stream_case(name, text)
  local expected = assert(all_messages(stream(text)))
  return {
    name = name,
    setup = function() return all_messages, stream(text) end,
    check = function(ok, list, err)
      if not ok then
        if not is_memory_error(list) then return nil, "error " .. tostring(list) end
        list, err = all_messages(stream(text))  -- a fresh decoder, without failures
      end
      if list == nil then return nil, err end
      local d = diff(expected, list)
      if d then return nil, d end
      return true
    end,
  }
end

-- A case for one d:next() that fails: the same decoder must go on with the
-- messages after it (giving the failed one again is allowed).
local function resume_case(name, first, rest)
  local text = first .. "\r\n" .. table.concat(rest, "\r\n") .. "\r\n"
  local expected = assert(all_messages(stream(text)))
  local d
  return {
    name = name,
    setup = function()
      d = stream(text)
      return d.next, d
    end,
    check = function(ok, msg, err)
      local list
      if ok then
        if msg == nil then return nil, "no message: " .. tostring(err) end
        list, err = all_messages(d)
        if list == nil then return nil, "after the first message: " .. err end
        table.insert(list, 1, msg)
      else
        if not is_memory_error(msg) then return nil, "error " .. tostring(msg) end
        list, err = all_messages(d)
        if list == nil then return nil, "the decoder broke after a memory error: " .. err end
        if #list == #expected - 1 then table.insert(list, 1, expected[1]) end  -- dropped: allowed
      end
      local dd = diff(expected, list)
      if dd then return nil, dd end
      return true
    end,
  }
end

-- {====================================================== }
-- Hostile inputs

local function expect_error(v, err, kind, pattern)
  kind = kind or "protocol"
  if v ~= nil then return nil, "no error" end
  if type(err) ~= "table" or err.kind ~= kind then return nil, "wrong error: " .. tostring(err) end
  if pattern and not err.message:find(pattern, 1, true) then return nil, "wrong message: " .. err.message end
  return true
end

-- Feed text in pieces of size bytes, calling next() after each: the first
-- error, or the messages.
local function chunked(text, size, opts)
  local d = core.decoder(opts)
  local out = {}
  for i = 1, #text, size do
    d:feed(text:sub(i, i + size - 1))
    while true do
      local msg, err = d:next()
      if err then return nil, err, d end
      if msg == nil then break end
      out[#out + 1] = msg
    end
  end
  return out, nil, d
end

local function deep_array(n) return ("["):rep(n) .. ("]"):rep(n) end

local HOSTILE = {
  { name = "200000 nested arrays, decode()", run = function()
      local ok, why = expect_error(nil, select(2, core.decode(("["):rep(200000))), "protocol", "nesting")
      if not ok then return nil, why end
      return expect_error(core.decode(deep_array(200000)))
    end },
  { name = "200000 nested objects, decoder", run = function()
      local _, err, d = chunked('{"a":' .. ('{"a":'):rep(200000), 65536)
      local ok, why = expect_error(nil, err, "protocol", "nesting too deep")
      if not ok then return nil, why end
      return expect_error(d:next())
    end },
  { name = "depth 1000 accepted, 1001 rejected", run = function()
      if type(core.decode(deep_array(1000))) ~= "table" then return nil, "1000 rejected" end
      local ok, why = expect_error(nil, select(2, core.decode(deep_array(1001))), "protocol", "nesting")
      if not ok then return nil, why end
      local list, err = chunked('{"a":' .. deep_array(999) .. '}\n{"b":' .. deep_array(999) .. "}\n", 7)
      if not list or #list ~= 2 then return nil, "stream depth 1000: " .. tostring(err) end
      return expect_error(nil, select(2, chunked('{"a":' .. deep_array(1000) .. "}", 7)), "protocol")
    end },
  { name = "16 MiB string with escapes", run = function()
      local piece = 'abc\\"\\\\\\u00e9\\ud83d\\ude00\\n0123456789'
      local s = piece:rep((16 << 20) // #piece)
      local want = ('abc"\\\xC3\xA9\xF0\x9F\x98\x80\n0123456789'):rep((16 << 20) // #piece)
      local v = core.decode('{"s":"' .. s .. '","n":18446744073709551615}')
      if type(v) ~= "table" or v.s ~= want or tostring(v.n) ~= "18446744073709551615" then
        return nil, "decode()"
      end
      local list, err = chunked('{"s":"' .. s .. '"}\n', 65536, { max_message = 32 << 20 })
      if not list or #list ~= 1 or list[1].s ~= want then return nil, "decoder: " .. tostring(err) end
      return true
    end },
  { name = "bad escapes, \\u0000 and NUL bytes split everywhere", run = function()
      for _, text in ipairs({ '{"a":"\\x"}', '{"a":"\\u00G0"}', '{"a":"\\u0000"}', '{"a":"\0"}',
                              '{"a":1\0}', '{"a":"\\ud83d\\u0000"}' }) do
        for size = 1, #text do
          local _, err = chunked(text, size)
          local ok, why = expect_error(nil, err, "protocol")
          if not ok then return nil, string.format("%q", text) .. ": " .. why end
        end
        local ok, why = expect_error(core.decode(text))
        if not ok then return nil, why end
      end
      return true
    end },
  { name = "invalid JSON and lone surrogates, then a good message", run = function()
      local d = core.decoder()
      d:feed('{"a":1,}\n{"b":"\\ud83d"}\n{"c":"\\udc00x"}\n{"d":[1 2]}\n{"e":18446744073709551615}\n')
      for _ = 1, 4 do
        local ok, why = expect_error(d:next())
        if not ok then return nil, why end
      end
      local v = d:next()
      if type(v) ~= "table" or tostring(v.e) ~= "18446744073709551615" then return nil, "lost the good message" end
      local ok, why = expect_error(core.decode('{"a":1} x'))
      if not ok then return nil, why end
      return true
    end },
  { name = "a never-ending message against max_message", run = function()
      local mib = 1 << 20
      local d = core.decoder({ max_message = mib })
      local chunk = ("x"):rep(mib)
      d:feed('{"s":"')
      local first
      for i = 1, 100 do
        d:feed(chunk)
        local msg, err = d:next()
        if msg ~= nil then return nil, "a message" end
        if err then
          if err.kind ~= "toolarge" then return nil, tostring(err) end
          first = first or i
        end
      end
      if first ~= 1 then return nil, "toolarge only after chunk " .. tostring(first) end
      if d:pending() > mib + 6 then return nil, "holds " .. d:pending() .. " bytes" end
      return true
    end },
  { name = "long numbers", run = function()
      for _, text in ipairs({ ("9"):rep(70), "-" .. ("9"):rep(70), ("1"):rep(400), "1" .. ("0"):rep(400) .. ".5",
                              "1e99999", "-", "1e", "--1", "0x10", "1.e5", ".5" }) do
        local v, err = core.decode(text)
        if v == nil and (type(err) ~= "table" or err.kind ~= "protocol") then return nil, text end
        if v ~= nil and math.type(v) ~= "float" and math.type(v) ~= "integer" then return nil, text end
      end
      return true
    end },
  { name = "the QEMU fixtures fed byte by byte, and split in two", run = function()
      for _, text in ipairs({ SESSION, PRETTY, BIG .. "\n" .. SCHEMA .. "\n" }) do
        local whole = assert(all_messages(stream(text)))
        local list = assert(chunked(text, 1))
        local dd = diff(whole, list)
        if dd then return nil, "byte by byte: " .. dd end
        for at = 0, #text, 16 do
          local d = core.decoder()
          d:feed(text:sub(1, at))
          local a = assert(all_messages(d))
          d:feed(text:sub(at + 1))
          for _, m in ipairs(assert(all_messages(d))) do a[#a + 1] = m end
          dd = diff(whole, a)
          if dd then return nil, "split at " .. at .. ": " .. dd end
        end
      end
      return true
    end },
}
-- }======================================================

-- {====================================================== }
-- Finalizers: Lua code that runs in the middle of a decode

-- A message big enough for the collector to run finalizers while it is being
-- decoded; every entry has an integer only its digits give exactly.
local function big_message(n)
  local parts = {}
  for i = 1, n do
    parts[i] = string.format('"k%d":[%d,"%s",18446744073709551615]', i, i, ("x"):rep(i % 50))
  end
  return "{" .. table.concat(parts, ",") .. "}", n
end

local function check_big(msg, n)
  if type(msg) ~= "table" then return nil, "no message" end
  for i = 1, n do
    local e = msg["k" .. i]
    if type(e) ~= "table" or e[1] ~= i or tostring(e[3]) ~= "18446744073709551615" then
      return nil, "entry " .. i .. " is wrong"
    end
  end
  return true
end

-- d:next() while finalizers wait to run; the first one to run during that
-- call runs fin(d) (protected).  Returns next()'s results, then the results
-- of fin, or nil when no finalizer ran during the call.
local function next_with_finalizers(d, fin)
  local inside, got = false, nil
  collectgarbage("collect")
  for _ = 1, 200 do
    setmetatable({}, { __gc = function()
      if inside and not got then got = table.pack(pcall(fin, d)) end
    end })
  end
  inside = true
  local msg, err = d:next()
  inside = false
  return msg, err, got
end

local REENTRY = {
  { name = "a finalizer feeds the decoder being decoded", run = function()
      local text, n = big_message(30000)
      local d = stream(text .. "\n")
      local msg, err, got = next_with_finalizers(d, function(dd) dd:feed(("x"):rep(1 << 23)) end)
      if not got then return nil, "no finalizer ran during d:next(): make the message bigger" end
      if msg == nil then return nil, "d:next(): " .. tostring(err) end
      return check_big(msg, n)
    end },
  { name = "a finalizer reads the decoder being decoded", run = function()
      local text, n = big_message(30000)
      local d = stream(text .. "\n" .. REPLY .. "\n")
      local msg, err, got = next_with_finalizers(d, function(dd) return dd:next() end)
      if not got then return nil, "no finalizer ran during d:next(): make the message bigger" end
      if msg == nil then return nil, "d:next(): " .. tostring(err) end
      local ok, why = check_big(msg, n)
      if not ok then return nil, why end
      -- the reply comes once: to the finalizer or to the next d:next()
      local delivered = {}
      if got[1] and type(got[2]) == "table" then delivered[1] = got[2] end
      local rest, rerr = all_messages(d)
      if not rest then return nil, "the decoder broke: " .. rerr end
      for _, m in ipairs(rest) do delivered[#delivered + 1] = m end
      local dd = diff({ expect(REPLY) }, delivered)
      if dd then return nil, "the reply after it: " .. dd end
      return true
    end },
  -- buffered() frames (and caches) the next message: during a walk it must
  -- refuse, like next(), and the reply after must still come exactly once.
  { name = "a finalizer asks buffered() of the decoder being decoded", run = function()
      local text, n = big_message(30000)
      local d = stream(text .. "\n" .. REPLY .. "\n")
      local msg, err, got = next_with_finalizers(d, function(dd) return dd:buffered() end)
      if not got then return nil, "no finalizer ran during d:next(): make the message bigger" end
      if got[1] then return nil, "buffered() answered during a walk" end
      if msg == nil then return nil, "d:next(): " .. tostring(err) end
      local ok, why = check_big(msg, n)
      if not ok then return nil, why end
      if not d:buffered() then return nil, "buffered() misses the reply" end
      local rest, rerr = all_messages(d)
      if not rest then return nil, "the decoder broke: " .. rerr end
      local dd = diff({ expect(REPLY) }, rest)
      if dd then return nil, "the reply after it: " .. dd end
      if d:buffered() then return nil, "buffered() after the last message" end
      return true
    end },
}
-- }======================================================

return {
  decode = {
    decode_case("schema reply", SCHEMA),
    decode_case("event with big integers", BIG),
    decode_case("100 nested arrays", deep_array(100)),
    decode_case("session as one array",
      "[" .. table.concat((function()
        local t = {}
        for line in SESSION:gmatch("[^\r\n]+") do t[#t + 1] = line end
        return t
      end)(), ",") .. "]"),
    new_event_case(),
  },
  stream = {
    stream_case("QEMU session", SESSION),
    stream_case("QEMU session, pretty", PRETTY),
    stream_case("big integers and schema", BIG .. "\n" .. SCHEMA .. "\n" .. BIG),
  },
  resume = {
    resume_case("big integers, then more", BIG, { SCHEMA, REPLY }),
    resume_case("schema, then more", SCHEMA, { BIG, REPLY }),
    resume_case("event, then a reply", '{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}',
                { REPLY }),
  },
  hostile = HOSTILE,
  reentry = REENTRY,
}
