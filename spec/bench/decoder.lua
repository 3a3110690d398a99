--- Rows 3 and 3b: qmp.decoder over 200k mixed events fed in 64 KiB chunks,
-- taken by d:drain(256) (row 3) and one message at a time by d:next() (row
-- 3b), against what a Lua user would write: find the "\n" boundaries in
-- Lua, then cjson.decode + setmetatable (a type table per name).  CPU time;
-- all read the chunks from the same file (the reading alone is shown too),
-- in interleaved rounds.
local H = require "bench.harness"

local M = {}

local CHUNK = 64 * 1024

local function chunks(path)
  local f = assert(io.open(path, "rb"))
  return function()
    local s = f:read(CHUNK)
    if not s then f:close() end
    return s
  end
end

local function read_only(path)
  local n = 0
  for chunk in chunks(path) do n = n + #chunk end
  return n
end

local function with_qmp(path)
  local d = require("qmp").decoder()
  local n = 0
  for chunk in chunks(path) do
    d:feed(chunk)
    while true do  -- the bulk API: a batch of messages per call
      local list, _, err = d:drain(256)
      assert(not err, tostring(err))
      if #list == 0 then break end
      n = n + #list
    end
  end
  return n
end

local function with_qmp_next(path)
  local d = require("qmp").decoder()
  local n = 0
  for chunk in chunks(path) do
    d:feed(chunk)
    while true do  -- one message per call, as a script reading a stream would
      local msg, err = d:next()
      if msg == nil then
        assert(not err, tostring(err))
        break
      end
      n = n + 1
    end
  end
  return n
end

local function with_cjson(path)
  local decode = require("cjson").decode
  local find, sub, setmetatable = string.find, string.sub, setmetatable
  local types, n, rest = {}, 0, ""
  for chunk in chunks(path) do
    local buf = rest .. chunk
    local pos = 1
    while true do
      local nl = find(buf, "\n", pos, true)
      if not nl then break end
      local msg = decode(sub(buf, pos, nl))
      local name = msg.event
      local T = types[name]
      if not T then
        T = { name = name }
        T.__index = T
        types[name] = T
      end
      setmetatable(msg, T)
      n = n + 1
      pos = nl + 1
    end
    rest = sub(buf, pos)
  end
  return n
end

function M.run()
  local ok, why = H.have_module("cjson")
  if not ok then error("lua-cjson is needed for the contender (apt-get install lua-cjson): " .. why, 0) end
  local n = H.size(200000)
  local path = H.corpus_file(n)
  local function timed(name, decode)
    return function()
      local t0 = os.clock()
      local got = decode(path)
      local t = os.clock() - t0
      assert(got == n, ("%s decoded %d messages, not %d"):format(name, got, n))
      return t
    end
  end
  local s = H.interleave("decoder", {
    { name = "qmp.decoder", run = timed("qmp.decoder", with_qmp) },
    { name = "split+cjson", run = timed("split+cjson", with_cjson) },
    { name = "qmp next()", run = timed("qmp next()", with_qmp_next) },
    { name = "reading alone", run = function()
        local t0 = os.clock()
        read_only(path)
        return os.clock() - t0
      end },
  })
  local c = H.stats(s["split+cjson"])
  local reading = H.seconds(H.stats(s["reading alone"]).median)
  local function row(id, which, what, target, least)
    local q = H.stats(s[which])
    local r = H.stats(H.ratios(s["split+cjson"], s[which]))
    return {
      id = id, what = what,
      qmp = H.spread(q, "seconds"), contender = H.spread(c, "seconds") .. " split+cjson",
      ratio = H.spread(r, "ratio"), target = target, met = r.median >= least,
      note = ("both include reading the chunks from a file: %s; qmp %.0fk messages/s, split+cjson %.0fk/s")
             :format(reading, n / q.median / 1000, n / c.median / 1000),
    }
  end
  return {
    row("3", "qmp.decoder", ("qmp.decoder d:drain(256), %dk mixed events, 64 KiB chunks"):format(n // 1000),
        "≥ 1.4×", 1.4),
    row("3b", "qmp next()", "  the same, one message at a time by d:next()", "≥ 1.4×", 1.4),
  }
end

return M
