--- Row 5: one 10 MiB reply shaped like query-qmp-schema (many small
-- objects).  Decode time: qmp.decoder (fed in 64 KiB chunks, then next())
-- against cJSON's parse alone in a small C program (cjson_parse.c), warm
-- against warm: qmp decodes in this process, after a warm-up round, the
-- chunks already in memory; cjson_parse parses the text in memory 1 + WARM
-- times and its figure is the median of the WARM parses after the first
-- (the first, cold one, in a fresh process, is shown apart).  Peak RSS of a
-- fresh lua5.4 decoding it (peak_rss.lua), against the size.
local corpus = require "bench.corpus"
local H = require "bench.harness"

local M = {}

local SIZE = 10 << 20
local WARM = 3

-- The reply in 64 KiB chunks, read before the clock starts.
local function read_chunks(path)
  local f = assert(io.open(path, "rb"))
  local chunks = {}
  for chunk in function() return f:read(64 * 1024) end do chunks[#chunks + 1] = chunk end
  f:close()
  return chunks
end

local function qmp_decode(chunks)
  local d = require("qmp").decoder()
  for i = 1, #chunks do d:feed(chunks[i]) end
  return assert(d:next())
end

-- cjson_parse's figures: the cold first parse and the median of the warm.
local function cjson_parse(exe, path)
  local out = assert(H.capture(H.quote(exe) .. " " .. H.quote(path) .. " " .. (1 + WARM)))
  local times = {}
  for t in out:gmatch("%S+") do times[#times + 1] = assert(tonumber(t), "cjson_parse: " .. out) end
  assert(#times == 1 + WARM, "cjson_parse printed " .. #times .. " times, not " .. (1 + WARM))
  local cold = table.remove(times, 1)
  return H.stats(times).median, cold
end

local function write_reply(path)
  local text, entities = corpus.schema_reply(SIZE)
  H.write(path, text)
  return #text, entities
end

local function peak_rss(which, path)
  local out, err = H.capture(("lua5.4 %s %s %s"):format(H.quote(H.bench_dir .. "/peak_rss.lua"), which, H.quote(path)))
  if not out then error("peak_rss.lua failed: " .. err, 0) end
  return assert(load(out:match("return {.*}")))()
end

function M.run()
  local path = H.dir() .. "/schema-reply.json"
  local size, entities = write_reply(path)
  collectgarbage("collect")
  H.say("  reply: %s, %d schema entities, one line", H.bytes(size), entities)
  local exe, why = H.compile("cjson_parse.c", true)
  if not exe then error(why, 0) end
  local chunks = read_chunks(path)
  local colds = {}
  local s = H.interleave("reply", {
    { name = "qmp.decoder", run = function()
        local t0 = os.clock()
        local msg = qmp_decode(chunks)
        local t = os.clock() - t0
        assert(#msg["return"] == entities, "wrong number of entities")
        return t
      end },
    { name = "cJSON parse", run = function()
        local warm, cold = cjson_parse(exe, path)
        colds[#colds + 1] = cold
        return warm
      end },
  }, math.min(H.rounds, 5))
  local q, c = H.stats(s["qmp.decoder"]), H.stats(s["cJSON parse"])
  local r = H.stats(H.ratios(s["cJSON parse"], s["qmp.decoder"]))
  local m = peak_rss("qmp", path)
  local rows = { {
    id = "5a", what = "10 MiB schema-like reply, decode time",
    qmp = H.spread(q, "seconds"), contender = H.spread(c, "seconds") .. " cJSON parse (C), warm",
    ratio = H.spread(r, "ratio"), target = "≥ 0.33× (≤ 3× cJSON)", met = r.median >= 1 / 3,
    note = ("qmp takes %.1f× cJSON's parse time, warm against warm (qmp after a warm-up round, cJSON the median "
            .. "of %d parses after a first in the same process); cJSON's cold first parse in a fresh process: %s")
           :format(q.median / c.median, WARM, H.spread(H.stats(colds), "seconds")),
  }, {
    id = "5b", what = "10 MiB schema-like reply, peak RSS decoding it",
    qmp = ("%s (%.1f× the message)"):format(H.bytes(m.peak), m.peak / m.size),
    target = "≤ 6× the message", met = m.peak <= 6 * m.size,
    note = ("VmHWM of the whole process (%s before reading)"):format(H.bytes(m.before)),
  } }
  if H.have_module("cjson") then
    local cj = peak_rss("cjson", path)
    rows[2].contender = ("%s (%.1f×) lua-cjson"):format(H.bytes(cj.peak), cj.peak / cj.size)
    rows[2].note = rows[2].note .. "; lua-cjson reads the whole text, then decodes it"
  end
  return rows
end

return M
