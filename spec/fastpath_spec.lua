-- The fast receive paths against the full path: the same bytes through
-- d:drain / conn:drain and d:next / conn:take, which use the quick scan,
-- and through a reference decoder's next() (the framer and cJSON for every
-- message) give the same values (metatables included) and the same errors.
-- With an interest set, drain leaves out only events that the set does not
-- hold, and counts them.
local core = require "qmp.core"
require "qmp.events"  -- installs the event types (core.events[name])
local qmp = require "qmp"
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)

local type, rawget, getmetatable, tostring, error = type, rawget, getmetatable, tostring, error

local fixture = require("support.fixtures").read

-- The fuzzers' comparisons (spec/fuzz/checks.lua), shared with this spec.
local checks = assert(loadfile("spec/fuzz/checks.lua"))(core)

local function show(item)
  if item == nil then return "nothing" end
  if item.err then return "error " .. tostring(item.err) end
  local ok, text = pcall(core.encode, item.msg)
  return ok and text or tostring(item.msg)
end

-- Two results ({ msg = } | { err = }) alike; whether an error stays (a
-- framing error) or ends only its message (bad JSON): the fuzzers' own.
local same_item, sticky = checks.same_item, checks.sticky

-- The pieces text is fed in: sizes from size().
local function feeder(text, size)
  local pos = 1
  return function()
    if pos > #text then return nil end
    local n = size()
    local piece = text:sub(pos, pos + n - 1)
    pos = pos + n
    return piece
  end
end

-- Everything d:next() gives for the pieces: a list of { msg = } | { err = },
-- ending at a sticky error (the fuzzers' own); reference: a reference
-- decoder's.
local function through_next(text, size, opts, reference)
  local list = {}
  for piece in feeder(text, size) do list[#list + 1] = piece end
  return checks.through_next(list, opts, reference)
end

-- The same through d:drain(limit(), interest); also the events skipped.
local function through_drain(text, size, interest, limit, opts)
  local d, pieces, out, skipped = core.decoder(opts), feeder(text, size), {}, 0
  while true do
    local list, sk, err = d:drain(limit(), interest)
    for i = 1, #list do out[#out + 1] = { msg = list[i] } end
    skipped = skipped + sk
    if err then
      out[#out + 1] = { err = err }
      if sticky(err) then
        local again, sk2, err2 = d:drain(limit(), interest)
        if #again ~= 0 or sk2 ~= 0 or not err2 or err2.message ~= err.message then
          error("a sticky error did not come again", 2)
        end
        return out, skipped
      end
    elseif #list + sk == 0 then
      local piece = pieces()
      if not piece then return out, skipped end
      d:feed(piece)
    end
  end
end

-- An event the Lua filter (_on_event) drops for this interest set.
local function unwanted(item, interest)
  local name = item.msg and rawget(item.msg, "event")
  return type(name) == "string" and not interest[name]
end

-- fast must be full without some events outside the interest set, as many
-- as skipped; returns how many of full's events the Lua filter would drop.
local function check_skips(full, fast, skipped, interest, where)
  local j, left_out, drops = 1, 0, 0
  for i, item in ipairs(full) do
    if unwanted(item, interest) then drops = drops + 1 end
    if fast[j] and same_item(item, fast[j]) then
      j = j + 1
    elseif unwanted(item, interest) then
      left_out = left_out + 1
    else
      error(("%s: message %d differs: %s, then %s"):format(where, i, show(item), show(fast[j])), 2)
    end
  end
  if j <= #fast then error(where .. ": drain gave more: " .. show(fast[j]), 2) end
  if left_out ~= skipped then
    error(("%s: %d events left out, %d counted as skipped"):format(where, left_out, skipped), 2)
  end
  return drops
end

local function check_same(full, fast, where, how)
  for i = 1, math.max(#full, #fast) do
    if not (full[i] and fast[i] and same_item(full[i], fast[i])) then
      error(("%s: message %d: %s by the full path, %s by %s"):format(where, i, show(full[i]), show(fast[i]),
                                                                    how or "drain()"), 2)
    end
  end
end

local INTERESTS = {
  {},                                             -- nothing wanted
  { STOP = true },
  { RESUME = true, X_EV = true },
  { RTC_CHANGE = true, BLOCK_IO_ERROR = true, SHUTDOWN = true },
}

local LIMITS = { 1, 2, 3, 7, 256, 100000 }

-- Compare both paths on text fed in pieces whose sizes come from
-- size_fn(), a new size() for each path, with random limits from rng.
local function compare(text, size_fn, rng, opts, where)
  local full = through_next(text, size_fn(), opts, true)
  check_same(full, through_next(text, size_fn(), opts), where, "next()")
  local limit = function() return LIMITS[rng(#LIMITS)] end
  check_same(full, (through_drain(text, size_fn(), nil, limit, opts)), where .. ", no interest set")
  local results = {}
  for k, interest in ipairs(INTERESTS) do
    local fast, skipped = through_drain(text, size_fn(), interest, limit, opts)
    local drops = check_skips(full, fast, skipped, interest, where .. ", interest set " .. k)
    results[k] = { skipped = skipped, drops = drops }
  end
  return full, results
end

-- A deterministic generator, so that any failure can be replayed.
local function lcg(seed)
  return function(n)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n + 1
  end
end

local function ts(i)
  return ('{"seconds": %d, "microseconds": %d}'):format(1700000000 + i, (i * 7919) % 1000000)
end

-- Realistic events as QEMU writes them: a timestamp first, then the name
-- and the data (hyper-v uint64s, VNC nesting, escapes, floats).
local DATA = {
  RTC_CHANGE = function(i) return ('{"offset": %d, "qom-path": "/machine/unattached/device[%d]"}'):format(i % 100 - 50, i % 30) end,
  BLOCK_IO_ERROR = function(i) return ('{"device": "virtio-disk%d", "node-name": "#block%d", "operation": "write", '
    .. '"action": "report", "nospace": true, "reason": "No space left on device"}'):format(i % 4, i) end,
  BLOCK_JOB_COMPLETED = function(i) return ('{"device": "drive0", "len": %d, "offset": %d, "speed": 0, "type": "mirror"}')
    :format(10737418240 + i, 10737418240 + i) end,
  GUEST_PANICKED = function() return '{"action": "pause", "info": {"type": "hyper-v", "arg1": 18446744072635809792, '
    .. '"arg2": 9223372036854775808, "arg3": 0, "arg4": -9223372036854775808, "arg5": 18446744073709551615}}' end,
  VNC_CONNECTED = function(i) return ('{"server": {"host": "127.0.0.1", "service": "5900", "family": "ipv4", '
    .. '"websocket": false, "auth": "none"}, "client": {"host": "10.0.0.%d", "service": "%d", "family": "ipv4", '
    .. '"websocket": false, "sasl_username": "dom\\\\user \\"x\\" \\u00e9\\ud83d\\ude00", "x509_dname": "CN=a/b\\/c"}}')
    :format(i % 255, 40000 + i) end,
  MIGRATION_PASS = function(i) return ('{"pass": %d}'):format(i) end,
  MIGRATION = function(i) return ('{"status": "active", "progress": %d.5e-1, "ratio": 1E3, "list": [1, [], {}, null, true]}')
    :format(i) end,
  JOB_STATUS_CHANGE = function(i) return ('{"status": "running", "id": "job%d"}'):format(i) end,
  STOP = false, RESUME = false,
  SHUTDOWN = function() return '{"guest": true, "reason": "guest-shutdown"}' end,
}
local NAMES = {}
for name in pairs(DATA) do NAMES[#NAMES + 1] = name end
table.sort(NAMES)

local function realistic(i, rng)
  local name = NAMES[rng(#NAMES)]
  local data = DATA[name] and (', "data": ' .. DATA[name](i)) or ""
  return ('{"timestamp": %s, "event": "%s"%s}'):format(ts(i), name, data)
end

-- Events and messages off QEMU's usual shape: each must come out exactly
-- as the full path gives it.
local ODD = {
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "ST\\u004fP"}',   -- escaped name
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "\\u0052ESUME", "data": {}}',
  '{"event": 7, "data": {"a": 1}}',                                             -- not a string
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": null}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": ["STOP"]}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X_EV", "data": {"event": "STOP", '
    .. '"n": {"event": "RESUME", "l": [{"event": "STOP"}]}}}',                   -- nested "event" keys
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "event": "RESUME"}',   -- last one wins
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME", "event": "STOP"}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "ev\\u0065nt": "STOP"}',   -- a key spelled with an escape
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "ev\\u0065nt": "RESUME"}',
  '{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}',           -- the name first
  '{"data": {"a": 1}, "event": "STOP"}',                                          -- neither first
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": 01}}',   -- cJSON takes 01
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": -.5, "y": 1.}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": 1e999, "y": -0, "z": 0.0}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": '
    .. ("9"):rep(70) .. '}}',                                                     -- too long for cJSON
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "tab\there"}}',   -- raw control
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "\\ud83d\\ude00"}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "caf\xc3\xa9 \xff"}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": ' .. ("["):rep(70) .. ("]"):rep(70) .. '}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1, "a": 2}}',
  '{\t"timestamp" :{"seconds":1,"microseconds":2}\r\n,"event":"STOP" ,\n"data" : { } }',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "", "data": {"a": true, "b": false, "c": null}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP\\"x", "data": {}}',
  '{"timestamp": {}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}}',
  '{}',
  '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}',
  '{"return": {}, "id": 1}',
  '{"return": [], "id": "event"}',
  '{"id": 3, "error": {"class": "GenericError", "desc": "x"}}',
  '{"return": {"event": "STOP"}, "event": "RESUME"}',
  -- timestamps off QEMU's shape, and data of any kind
  '{"timestamp": {"microseconds": 2, "seconds": 1}, "event": "STOP"}',
  '{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "STOP", "data": {}}',
  '{"timestamp": {"seconds": -0, "microseconds": 0}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1.5, "microseconds": 2}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1e3, "microseconds": 2}, "event": "STOP"}',
  '{"timestamp": {"seconds": 01, "microseconds": 2}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1, "microseconds": 2, "nanoseconds": 3}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1, "seconds": 2, "microseconds": 3}, "event": "STOP"}',
  '{"timestamp": {"seconds": "1", "microseconds": 2}, "event": "STOP"}',
  '{"timestamp": [1, 2], "event": "STOP"}',
  '{"timestamp": {"seconds": 123456789012345678, "microseconds": -123456789012345678}, "event": "STOP"}',
  '{"timestamp": {"seconds": 9223372036854775807, "microseconds": 18446744073709551615}, "event": "STOP"}',
  '{"timestamp": {"seconds": 9999999999999999999, "microseconds": -9999999999999999999}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "timestamp": {"seconds": 3, "microseconds": 4}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": 5}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": [1, 2.5, "x", [], {}]}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": "text"}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": null}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "data": {"x": 1.25}, "event": "STOP"}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {}, "data": {"a": 1}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "extra": 1}',
  '{"event": "STOP", "data": {"a": 1}}',
  '{"event": "STOP", "data": {"a": 1}, "timestamp": {"seconds": 1, "microseconds": 2}}',
  -- flat data (plain members, read from the bytes) and its edges
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"i": 123456789012345678, '
    .. '"j": -123456789012345678, "k": 1234567890123456789, "u": 18446744073709551615, "z": -0, "o": 0}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "", "t": "null", '
    .. '"cafÃ©": "ÿ", "a": true, "a": "again", "b": false, "c": null}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data":{ "a" :1 ,"b":	"x" }}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1, "b": "x\\ty"}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1, "k\\u0065y": 2}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1, "b": {"c": 2}}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1, "b": 2.0}}',
}

-- Not JSON, yet framed: an error once, then the stream goes on.
local BAD = {
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1,}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "\\ud83d"}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a" 1}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": [tru]}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP" "data": {}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"x": 1-2}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": [1}}}',   -- ] for }
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1]}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": 1},}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"a": nul}}',
}

-- Framing errors, which end a stream.
local FATAL = {
  'x',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "\\x"}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "\\u0000"}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {"s": "a\0b"}}',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\0',
  '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": ' .. ("["):rep(1001) .. ("]"):rep(1001) .. '}',
  '[1]',
}

local SEPARATORS = { "\n", "\r\n", "", " \n\t" }

-- A stream of n messages: realistic events, then (odd) the odd ones and
-- the bad ones among them, and (fatal) one framing error near the end.
local function stream(n, rng, odd, fatal)
  local parts = {}
  for i = 1, n do
    parts[#parts + 1] = realistic(i, rng)
    if odd and i % 7 == 0 then parts[#parts + 1] = ODD[rng(#ODD)] end
    if odd and i % 53 == 0 then parts[#parts + 1] = BAD[rng(#BAD)] end
    parts[#parts + 1] = SEPARATORS[rng(#SEPARATORS)]
  end
  if fatal then
    parts[#parts + 1] = fatal
    parts[#parts + 1] = realistic(n + 1, rng) .. "\n"
  end
  return table.concat(parts)
end

describe("the fast receive path", function()
  describe("d:next() and d:drain() against the full path", function()
    it("agrees on the QEMU 7.2 fixtures, compact and pretty=on, at every chunk size", function()
      for _, name in ipairs({ "qemu-7.2-session.txt", "qemu-7.2-pretty.txt" }) do
        local text = fixture(name)
        local rng = lcg(#text)
        local events
        for size = 1, #text do
          local full, results = compare(text, function() return function() return size end end, rng, nil,
                                        name .. " in pieces of " .. size)
          -- every event of these is plain QEMU output: each one a set drops is skipped unparsed
          for k, r in ipairs(results) do
            assert(r.skipped == r.drops, ("%s, interest set %d: %d dropped, %d skipped"):format(name, k, r.drops, r.skipped))
          end
          events = events or results[1].drops
          assert(#full == 16)
        end
        assert.equal(5, events)
      end
    end)

    it("agrees on every odd and bad message, alone and after a good one, at every chunk size", function()
      local cases = {}
      for _, list in ipairs({ ODD, BAD, FATAL }) do
        for _, text in ipairs(list) do cases[#cases + 1] = text end
      end
      for c, text in ipairs(cases) do
        text = realistic(c, lcg(c)) .. "\r\n" .. text .. "\n" .. realistic(c + 1, lcg(c))
        local rng = lcg(c)
        for size = 1, #text, (#text > 400 and 7 or 1) do
          compare(text, function() return function() return size end end, rng, nil,
                  ("case %d in pieces of %d"):format(c, size))
        end
      end
    end)

    it("agrees on integers of every length to 21 digits, and on what follows their digits", function()
      -- the quick scan reads digits 8 at a time: every length, with each
      -- byte that can end (or spoil) an integer after the last digit
      local texts = {}
      for len = 1, 21 do
        local digits = ("1234567890"):rep(3):sub(1, len)
        for _, n in ipairs({ digits, "-" .. digits, "0" .. digits }) do
          for _, after in ipairs({ "", ".5", "e1", "E+2", " ", ":", "9", "/", "a" }) do
            texts[#texts + 1] = ('{"timestamp": {"seconds": %s%s, "microseconds": %s}, "event": "STOP"}\n')
              :format(n, after, n)
            texts[#texts + 1] = ('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", '
              .. '"data": {"i": %s%s, "s": "x"}}\n'):format(n, after)
          end
        end
      end
      local rng = lcg(21)
      for i = 1, #texts, 40 do  -- in batches: a bad one ends only its own message
        local text = table.concat(texts, "", i, math.min(#texts, i + 39))
        compare(text, function() return function() return 65536 end end, rng, nil, "integers from text " .. i)
        compare(text, function() local r = lcg(i) return function() return r(16) end end, rng, nil,
                "integers from text " .. i .. " in small pieces")
      end
    end)

    it("agrees on long mixed streams in random pieces, and skips every plain event a set leaves out", function()
      for seed = 1, 6 do
        local rng = lcg(seed)
        local text = stream(1500, rng, seed > 1, seed > 3 and FATAL[rng(#FATAL)] or nil)
        -- each path gets the same pieces: a new generator with the same seed
        local sizes = { function() local r = lcg(seed) return function() return r(64) end end,
                        function() local r = lcg(seed) return function() return r(4096) end end,
                        function() return function() return 65536 end end }
        for s, size_fn in ipairs(sizes) do
          local full, results = compare(text, size_fn, rng, nil, ("seed %d, sizes %d"):format(seed, s))
          assert(#full >= 1500)
          if seed == 1 then  -- realistic events only: all of them are decided before cJSON
            for k, r in ipairs(results) do
              assert(r.skipped == r.drops and (k > 1 or r.skipped == 1500),
                     ("interest set %d: %d dropped, %d skipped"):format(k, r.drops, r.skipped))
            end
          end
        end
      end
    end)

    it("agrees when messages are longer than max_message", function()
      local rng = lcg(99)
      local text = stream(200, rng, true)
      for _, max in ipairs({ 150, 300, 1000 }) do
        for _, size in ipairs({ 1, 13, 4096 }) do
          compare(text, function() return function() return size end end, rng, { max_message = max },
                  ("max_message %d, pieces of %d"):format(max, size))
        end
      end
    end)
  end)

  describe("d:drain() on odd events", function()
    local function drained(text, interest)
      local d = core.decoder()
      d:feed(text)
      local list, skipped, err = d:drain(100, interest)
      assert.is_nil(err)
      return list, skipped
    end

    it("leaves a name with escapes, a non-string name and a second name to the full path", function()
      local list, skipped = drained(table.concat({ ODD[1], ODD[3], ODD[7], ODD[9] }, "\n"), { RESUME = true })
      assert.equal(0, skipped)
      assert.equal(4, #list)
      assert.equal("STOP", list[1].event)
      assert.equal(core.events.STOP, getmetatable(list[1]))
      assert.equal(7, list[2].event)
      assert.is_nil(getmetatable(list[2]))
      assert.equal("RESUME", list[3].event)  -- the last "event" wins, as in the full path
      assert.equal("STOP", rawget(list[4], "event"))
    end)

    it("skips by the top-level name only, never by an \"event\" inside the data", function()
      local list, skipped = drained(ODD[6] .. ODD[6], { STOP = true, RESUME = true })
      assert.equal(2, skipped)
      assert.equal(0, #list)
      list, skipped = drained(ODD[6], { X_EV = true })
      assert.equal(0, skipped)
      assert.equal("STOP", list[1].data.event)
      assert.equal("RESUME", list[1].data.n.event)
    end)

    it("skips pretty=on events, and replies are never skipped", function()
      local list, skipped = drained(fixture("qemu-7.2-pretty.txt"), {})
      assert.equal(5, skipped)
      assert.equal(11, #list)
      for _, msg in ipairs(list) do assert.is_nil(rawget(msg, "event")) end
    end)

    it("reports a bad message in an event nobody wants, as the full path does", function()
      local d = core.decoder()
      d:feed(realistic(1, lcg(1)) .. "\n" .. BAD[1] .. "\n" .. realistic(2, lcg(2)) .. "\n")
      local list, skipped, err = d:drain(100, {})
      assert.equal(1, skipped)
      assert.equal(0, #list)
      assert.equal("protocol", err.kind)
      assert.matches("^invalid JSON", err.message)
      list, skipped, err = d:drain(100, {})
      assert.same({ 0, 1 }, { #list, skipped })
      assert.is_nil(err)
    end)

    it("counts a skipped event against the limit", function()
      local d = core.decoder()
      local text = stream(10, lcg(5))
      d:feed(text)
      local total = 0
      for _ = 1, 10 do
        local list, skipped = d:drain(1, {})
        assert.equal(0, #list)
        assert.equal(1, skipped)
        total = total + skipped
      end
      assert.equal(10, total)
      assert.same({}, (d:drain(1, {})))
    end)
  end)

  describe("conn:drain() against conn:take()", function()
    local function unix_pair() return require("support.conn").unix_pair(cleanup) end

    -- Everything conn gives through get(conn) -> list, skipped, err | nil
    -- (nothing now), once the peer has sent text and closed.  This process
    -- writes as well as reads, so it never waits: it writes what the socket
    -- takes, then reads.
    local function read_all(text, get)
      local conn, peer = unix_pair()
      peer:settimeout(TEST_TIMEOUT)
      local out, skipped, sent = {}, 0, 0
      local deadline = core.monotime() + TEST_TIMEOUT
      while true do
        assert(core.monotime() < deadline, "the stream did not end")
        if sent < #text then  -- no more than the socket takes: we are the reader too
          peer:settimeout(0)
          local last, _, partial = peer:send(text, sent + 1, math.min(#text, sent + 100000))
          sent = last or partial or sent
          if sent == #text then peer:shutdown("send") end
        end
        local list, sk, err = get(conn)
        if list then
          for i = 1, #list do out[#out + 1] = { msg = list[i] } end
          skipped = skipped + sk
          if err then
            out[#out + 1] = { err = err }
            if err.kind == "closed" or sticky(err) then return out, skipped end
          end
        end
      end
    end

    local function by_take(conn)
      local msg, err = conn:take()
      if msg == false then return nil end
      if msg == nil then return {}, 0, err end
      return { msg }, 0
    end

    it("gives the same messages and the same end, with and without an interest set", function()
      local rng = lcg(7)
      for _, fatal in ipairs({ false, FATAL[2] }) do
        local text = stream(3000, rng, true, fatal or nil) .. (fatal and "" or '{"partial": ')
        local full = read_all(text, by_take)
        assert.equal(fatal and "protocol" or "closed", full[#full].err.kind)
        -- take() gives the full path's messages, then says how the stream ended
        local reference = checks.through_next({ text }, nil, true)
        if not fatal then reference[#reference + 1] = full[#full] end
        check_same(reference, full, "conn:take", "take()")
        check_same(full, (read_all(text, function(conn) return conn:drain(LIMITS[rng(#LIMITS)]) end)),
                   "conn:drain")
        for k, interest in ipairs(INTERESTS) do
          local fast, skipped = read_all(text, function(conn) return conn:drain(LIMITS[rng(#LIMITS)], interest) end)
          check_skips(full, fast, skipped, interest, "conn:drain, interest set " .. k)
        end
      end
    end)

    it("fills the caller's list again, and says truly when the set holds every listed event", function()
      local rng = lcg(11)
      local text = stream(3000, rng, true)
      local full = read_all(text, by_take)
      for k, interest in ipairs(INTERESTS) do
        local mine = { "stale", "stale", "stale" }  -- what a list held before goes
        local all_wanted = 0
        local fast, skipped = read_all(text, function(conn)
          local list, sk, err, events, wanted = conn:drain(LIMITS[rng(#LIMITS)], interest, mine)
          assert.equal(mine, list)
          assert.is_nil(next(list, #list > 0 and #list or nil), "the list holds more than the messages")
          local held = 0
          for i = 1, #list do
            local name = list[i].event
            if type(name) == "string" and interest[name] then held = held + 1 end
          end
          assert.is_true(events <= #list and wanted <= held,
                         ("%d listed, %d in the set, but wanted = %d"):format(#list, held, wanted))
          if #list > 0 and wanted == #list then all_wanted = all_wanted + 1 end
          local copy = {}
          for i = 1, #list do copy[i] = list[i] end
          return copy, sk, err
        end)
        check_skips(full, fast, skipped, interest, "conn:drain into a list, interest set " .. k)
        if next(interest) then assert.is_true(all_wanted > 0, "no batch was known to be wanted whole") end
      end
    end)
  end)
end)

describe("a client with opts.events", function()
  local function ev(name, i)
    return ('{"timestamp": %s, "event": "%s", "data": {"i": %d}}\r\n'):format(ts(i), name, i)
  end

  -- A fake QEMU that sends burst right after negotiation, then waits.
  local function serve(burst)
    local srv = fake.start({ { greet = true }, { expect = "qmp_capabilities", reply = fake.reply("{}") },
                             { send = burst }, { wait_close = true } })
    cleanup(function() srv:stop() end)
    return srv
  end

  local function burst(n)
    local parts, names = {}, { "RTC_CHANGE", "STOP", "BLOCK_IO_ERROR", "RESUME" }
    for i = 1, n do parts[i] = ev(names[i % 4 + 1], i) end
    return table.concat(parts)
  end

  -- Run vm until it has seen n events (received, skipped or not) and its
  -- handlers have had every one (the client may read ahead of them).
  local function until_events(vm, n)
    assert(vm:run({ timeout = TEST_TIMEOUT,
                    done = function() return vm.stats.events >= n and not vm._dispatch:pending() end }))
  end

  it("skips the events outside a list of names undecoded, and counts every event", function()
    local srv = serve(burst(1000))
    local vm = assert(qmp.client(srv.path, { timeout = 5, events = { "STOP", "BLOCK_IO_ERROR" } }))
    cleanup(function() vm:close() end)
    local seen = {}
    vm:on("*", function(e) seen[#seen + 1] = e end)
    until_events(vm, 1000)
    assert.equal("qmp.connected", seen[1].event)
    assert.equal(501, #seen)
    for i = 2, #seen do
      assert.is_true(seen[i].event == "STOP" or seen[i].event == "BLOCK_IO_ERROR")
      assert.equal(core.events[seen[i].event], getmetatable(seen[i]))
    end
    assert.equal(1000, vm.stats.events)
    assert.equal(500, vm.stats.skipped)
    assert.is_table(vm._interest_set)
  end)

  it("gives the same events and counts with a glob, filtered after decoding", function()
    local srv = serve(burst(400))
    local vm = assert(qmp.client(srv.path, { timeout = 5, events = { "STOP", "BLOCK_IO_*" } }))
    cleanup(function() vm:close() end)
    local seen = {}
    vm:on("*", function(e) seen[#seen + 1] = e end)
    until_events(vm, 400)
    assert.is_nil(vm._interest_set)
    assert.equal(201, #seen)
    assert.equal(200, vm.stats.skipped)
  end)

  it("takes a single name, and lets a tracer see every message", function()
    local srv = serve(burst(40))
    local traced = 0
    local vm = assert(qmp.client(srv.path, { timeout = 5, events = "RESUME",
                                          trace = function(dir) if dir == "in" then traced = traced + 1 end end }))
    cleanup(function() vm:close() end)
    local seen = 0
    vm:on("RESUME", function() seen = seen + 1 end)
    until_events(vm, 40)
    assert.equal(10, seen)
    assert.equal(30, vm.stats.skipped)
    assert.equal(42, traced)  -- the greeting, the capabilities reply and every event
  end)

  it("announces the connection before the events that follow negotiation in the same read", function()
    for _, events in ipairs({ false, { "STOP" } }) do
      local srv = serve(burst(20))
      local vm = assert(qmp.client(srv.path, { timeout = 5, events = events or nil }))
      cleanup(function() vm:close() end)
      local seen = {}
      vm:on("*", function(e) seen[#seen + 1] = e.event end)
      until_events(vm, 20)
      assert.equal("qmp.connected", seen[1])
      assert.equal(events and 6 or 21, #seen)
    end
  end)
end)
