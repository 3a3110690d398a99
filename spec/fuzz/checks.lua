-- The properties the fuzz harnesses check, one function per harness.
-- Each takes the fuzzer's input (a string) and returns nothing when the
-- property holds, or a string saying how it failed (the harness then
-- aborts: a finding).  Embedded into each harness at build time; the
-- harness passes the qmp.core module table as the chunk's argument.
local core = ...

local type, next, rawget, getmetatable, tostring, pcall = type, next, rawget, getmetatable, tostring, pcall
local mathtype = math.type

-- Deep, raw equality: integers and floats differ, metatables must match,
-- a qmp.uint64 equals one with the same digits.
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then return mathtype(a) == mathtype(b) and a == b end
  if type(a) == "userdata" then
    return getmetatable(a) == getmetatable(b) and (a == b or tostring(a) == tostring(b))
  end
  if type(a) ~= "table" then return a == b end
  if getmetatable(a) ~= getmetatable(b) then return false end
  for k, v in next, a do
    if not same(v, rawget(b, k)) then return false end
  end
  for k in next, b do
    if rawget(a, k) == nil then return false end
  end
  return true
end

local function show(item)
  if item == nil then return "nothing" end
  if item.err then return "error " .. tostring(item.err) end
  local ok, text = pcall(core.encode, item.msg, { sort = true })
  return ok and text or tostring(item.msg)
end

-- A message that is not JSON is reported once and the stream goes on; any
-- other error (framing, toolarge) stays and ends the stream.
local function sticky(err)
  return not (err.message:find("^invalid JSON") or err.message:find("^trailing data"))
end

-- An input that starts with a byte >= 0x80 (no JSON message can) carries a
-- header: that byte, then (its low 3 bits + 1) chunk sizes of 1..256 bytes.
-- Bits 3-6 of the first byte are left to the harness (cfg).  Any other
-- input is all text, fed in the default chunk sizes.
local DEFAULT_SIZES = { 1, 7, 64, 3, 4096 }

local function header(input)
  local b = input:byte(1)
  if b == nil or b < 0x80 then return DEFAULT_SIZES, nil, input end
  local sizes = {}
  for i = 1, (b & 7) + 1 do sizes[i] = (input:byte(1 + i) or 0) + 1 end
  return sizes, b >> 3 & 15, input:sub(#sizes + 2)
end

-- text cut in pieces of the sizes, in turn.
local function pieces(text, sizes)
  local list, pos, i = {}, 1, 0
  while pos <= #text do
    i = i % #sizes + 1
    list[#list + 1] = text:sub(pos, pos + sizes[i] - 1)
    pos = pos + sizes[i]
  end
  return list
end

-- Everything d:next() gives for the pieces: a list of { msg = } | { err = },
-- ending at a sticky error.  reference: through a reference decoder (the
-- framer and cJSON for every message, never the quick scan), the one the
-- quick paths are compared with.
local function through_next(list, opts, reference)
  local d, out, k = (reference and core.reference_decoder or core.decoder)(opts), {}, 0
  while true do
    local msg, err = d:next()
    if msg ~= nil then out[#out + 1] = { msg = msg }
    elseif err then
      out[#out + 1] = { err = err }
      if sticky(err) then return out end
    else
      k = k + 1
      if list[k] == nil then return out end
      d:feed(list[k])
    end
  end
end

local checks = {}

checks.same = same   -- spec/fastpath_spec.lua compares with it too
checks.through_next = through_next   -- and decodes its pieces with it

-- (a) The framer and decoder: any chunking gives what the whole text gives,
-- through a decoder and through a reference decoder alike.  A message over
-- max_message may be refused as too large before its bad byte is seen, so
-- a sticky error matches a toolarge one.
function checks.stream(input)
  local sizes, cfg, text = header(input)
  local opts = cfg and cfg > 0 and { max_message = 1 << (cfg + 2) } or nil
  for _, reference in ipairs({ false, true }) do
    local whole = through_next({ text }, opts, reference)
    local chunked = through_next(pieces(text, sizes), opts, reference)
    for i = 1, math.max(#whole, #chunked) do
      local x, y = whole[i], chunked[i]
      local agree = x and y and (x.msg ~= nil and y.msg ~= nil and same(x.msg, y.msg)
        or x.err and y.err and (x.err.kind == y.err.kind
          or sticky(x.err) and sticky(y.err) and (x.err.kind == "toolarge" or y.err.kind == "toolarge")))
      if not agree then
        return ("%smessage %d: %s whole, %s chunked"):format(reference and "reference decoder, " or "", i,
                                                              show(x), show(y))
      end
    end
  end
end

-- (b) One-shot decode: a value or nil plus a protocol error; a value encodes
-- or raises (strings that are not UTF-8, infinities), never crashes; an
-- object decodes to the same value through a decoder.
function checks.oneshot(input)
  local v, err = core.decode(input)
  if v == nil then
    if getmetatable(err) ~= core.Error or err.kind ~= "protocol" then
      return "decode failed without a protocol error: " .. tostring(err)
    end
    return
  end
  pcall(core.encode, v)
  pcall(core.encode, v, { pretty = true, sort = true })
  -- The stream decoder takes a big object apart, a member at a time (the
  -- fuzzers' build makes "big" a few bytes): it must give what the whole
  -- parse gives.
  if type(v) == "table" and input:find("^[ \t\r\n]*{") then
    local d = core.decoder()
    d:feed(input)
    local msg, e = d:next()
    if msg == nil or not same(v, msg) then
      return ("the decoder gave %s, decode %s"):format(show({ msg = msg, err = e }), show({ msg = v }))
    end
  end
end

-- What encode may refuse of a decoded value: JSON strings need not be
-- UTF-8 for cJSON, and a number too large for a double reads as infinity.
local function refusable(msg)
  return msg:find("invalid UTF%-8") or msg:find("NaN or infinity")
end

-- (c) decode -> encode -> decode: the same value, the same sorted text,
-- compact and pretty.
function checks.roundtrip(input)
  local v = core.decode(input)
  if v == nil then return end
  local ok, text = pcall(core.encode, v, { sort = true })
  if not ok then
    if refusable(tostring(text)) then return end
    return "encode refused a decoded value: " .. tostring(text)
  end
  for _, opts in ipairs { { sort = true }, { sort = true, pretty = true } } do
    local out = opts.pretty and core.encode(v, opts) or text
    local v2, err = core.decode(out)
    if v2 == nil then return ("encoded text does not decode (%s): %s"):format(tostring(err), out) end
    if not same(v, v2) then return "decoded value differs after a round trip: " .. text end
    local text2 = core.encode(v2, { sort = true })
    if text2 ~= text then return ("round trip changed the text: %s, then %s"):format(text, text2) end
  end
end

-- The names an interest set may hold: events of the seeds, and odd ones.
local NAMES = { "STOP", "RESUME", "SHUTDOWN", "RTC_CHANGE", "BLOCK_IO_ERROR", "POWERDOWN", "", "qmp.connected" }
local LIMITS = { 1, 2, 3, 7, 256, 100000 }

-- The same as through_next through d:drain(limit, interest), limits taken
-- in turn from LIMITS; also the events skipped.
local function through_drain(list, interest, first_limit, opts)
  local d, out, skipped, k, l = core.decoder(opts), {}, 0, 0, first_limit
  while true do
    l = l % #LIMITS + 1
    local items, sk, err = d:drain(LIMITS[l], interest)
    for i = 1, #items do out[#out + 1] = { msg = items[i] } end
    skipped = skipped + sk
    if err then
      out[#out + 1] = { err = err }
      if sticky(err) then
        local again, sk2, err2 = d:drain(1, interest)
        if #again ~= 0 or sk2 ~= 0 or not err2 or err2.message ~= err.message then
          return out, skipped, "a sticky error did not come again: " .. tostring(err)
        end
        return out, skipped
      end
    elseif #items + sk == 0 then
      k = k + 1
      if list[k] == nil then return out, skipped end
      d:feed(list[k])
    end
  end
end

-- The same as through_next, taking the messages by next() and by drain(l)
-- in turn (l from LIMITS, from first_limit on): what next() decoded ahead
-- goes into the list first.  Before each next(), buffered() (which frames
-- the next message) must tell whether it gives one; else the third result
-- says it did not.
local function through_mixed(list, first_limit, opts)
  local d, out, k, l, turn = core.decoder(opts), {}, 0, first_limit, 0
  while true do
    turn = turn + 1
    local items, err
    if turn % 2 == 1 then
      local buffered = d:buffered()
      local msg
      msg, err = d:next()
      if buffered ~= (msg ~= nil or err ~= nil) then
        return out, nil, ("buffered() said %s before message %d"):format(tostring(buffered), #out + 1)
      end
      items = { msg }
    else
      l = l % #LIMITS + 1
      local got, _, e = d:drain(LIMITS[l])
      items, err = got, e
    end
    for i = 1, #items do out[#out + 1] = { msg = items[i] } end
    if err then
      out[#out + 1] = { err = err }
      if sticky(err) then return out end
    elseif #items == 0 then
      k = k + 1
      if list[k] == nil then return out end
      d:feed(list[k])
    end
  end
end

local function same_item(x, y)
  if x.err or y.err then
    return x.err ~= nil and y.err ~= nil and x.err.kind == y.err.kind and x.err.message == y.err.message
      and getmetatable(x.err) == core.Error and getmetatable(y.err) == core.Error
  end
  return same(x.msg, y.msg)
end
checks.same_item, checks.sticky = same_item, sticky   -- spec/fastpath_spec.lua too

-- An event the Lua filter (_on_event) drops for this interest set.
local function unwanted(item, interest)
  local name = item.msg and type(item.msg) == "table" and rawget(item.msg, "event")
  return type(name) == "string" and not interest[name]
end

-- (d) The fast paths against the full path (a reference decoder's next()):
-- next(), drain without an interest set and both in turn give exactly what
-- it gives;
-- with one, drain leaves out only events the Lua filter would drop, and
-- counts each one it leaves out.  The header's
-- cfg picks the first limit (its low 3 bits) and, with its bit 3, a small
-- max_message for both paths: 8 + the second byte after the header, so the
-- fast path's size cap meets the framer's "too large"; the first byte after
-- the header is the interest set.
function checks.fastpath(input)
  local sizes, cfg, text = header(input)
  local mask, opts = 3, nil  -- STOP, RESUME
  if cfg then
    mask = text:byte(1) or 0
    text = text:sub(2)
    if cfg & 8 ~= 0 then
      opts = { max_message = 8 + (text:byte(1) or 0) }
      text = text:sub(2)
    end
  end
  local interest = {}
  for i, name in ipairs(NAMES) do
    if mask & (1 << (i - 1)) ~= 0 then interest[name] = true end
  end
  local list, first = pieces(text, sizes), (cfg or 0) % 8 % #LIMITS
  local full = through_next(list, opts, true)
  local quick = through_next(list, opts)
  for i = 1, math.max(#full, #quick) do
    if not (full[i] and quick[i] and same_item(full[i], quick[i])) then
      return ("message %d: %s by the full path, %s by next()"):format(i, show(full[i]), show(quick[i]))
    end
  end
  local mixed, _, told = through_mixed(list, first, opts)
  if told then return told end
  for i = 1, math.max(#full, #mixed) do
    if not (full[i] and mixed[i] and same_item(full[i], mixed[i])) then
      return ("message %d: %s by the full path, %s by next() and drain() in turn"):format(i, show(full[i]),
                                                                                            show(mixed[i]))
    end
  end
  local fast, skipped, why = through_drain(list, nil, first, opts)
  if why then return why end
  if skipped ~= 0 then return "skipped without an interest set" end
  for i = 1, math.max(#full, #fast) do
    if not (full[i] and fast[i] and same_item(full[i], fast[i])) then
      return ("no interest set, message %d: %s by the full path, %s by drain()"):format(i, show(full[i]),
                                                                                          show(fast[i]))
    end
  end
  fast, skipped, why = through_drain(list, interest, first, opts)
  if why then return why end
  local j, left_out = 1, 0
  for i, item in ipairs(full) do
    if fast[j] and same_item(item, fast[j]) then
      j = j + 1
    elseif unwanted(item, interest) then
      left_out = left_out + 1
    else
      return ("message %d differs: %s, then %s"):format(i, show(item), show(fast[j]))
    end
  end
  if j <= #fast then return "drain gave more: " .. show(fast[j]) end
  if left_out ~= skipped then
    return ("%d events left out, %d counted as skipped"):format(left_out, skipped)
  end
end

return checks
