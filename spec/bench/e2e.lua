--- Rows 1 and 2: end to end over a unix socket.  A peer blasts the corpus
-- after negotiation; the client counts the events its handler sees.  Each
-- run is a fresh process of its own (client_child.lua), qmp and its
-- luasocket + lua-cjson contenders interleaved, so that none inherits
-- another's heap, garbage or allocator state; the figure is that process's
-- CPU time (os.clock) from the end of negotiation to the end of the stream:
-- loading the modules (some 7 ms for qmp's, under 1 ms for luasocket's and
-- lua-cjson's), connecting and negotiating are start-up, not per event, and
-- are shown apart.
-- Row 1 has two contenders (lines, 64 KiB chunks) and is judged against
-- the faster; row 2 two (decoding every line, finding the names first),
-- each with its own target.  Each row carries a key (e.g. "1:chunked")
-- that the instruction counts (ir.lua) use to add their ratio beside it.
local H = require "bench.harness"

local M = {}

local INTEREST = { "BLOCK_IO_ERROR", "SHUTDOWN" }

--- The contenders by client (clients.lua): how the table names them.
M.NAMES = {
  luasocket = "luasocket *l + cjson",
  chunked = "luasocket 64 KiB + cjson",
  careful = "luasocket *l + find + cjson",
}

local function python_note()
  if os.execute("python3 -c 'import qemu.qmp' >/dev/null 2>&1") == true then
    return "qemu.qmp (QEMU's Python client) is importable, but this harness has no Python contender yet"
  end
  return "qemu.qmp (QEMU's Python client) is not installed and cannot be here (no PyPI): not a contender"
end

-- Interleaved runs of qmp and each contender (a list of client names)
-- against one peer; each run must see `handled` events in its handler and
-- skip `skipped`.  Returns, by client name (qmp too): { time = stats,
-- ratio = stats of qmp's speed over it, round by round }.
local function compare(label, n, events, handled, skipped, contenders)
  local ok, why = H.have_module("cjson")
  if not ok then error("lua-cjson is needed for the contenders (apt-get install lua-cjson): " .. why, 0) end
  local path = H.blast_peer(H.corpus_file(n), (#contenders + 1) * (H.rounds + 1))
  local setup = {}
  local function timed(which)
    setup[which] = {}
    return function()
      local cmd = ("lua5.4 %s %s %s %s"):format(H.quote(H.bench_dir .. "/client_child.lua"), which, H.quote(path),
                                                events and ("events=" .. table.concat(events, ",")) or "")
      local out, err = H.capture(cmd)
      if not out then error(which .. " client failed: " .. err, 0) end
      local r = assert(load(out:match("return {.*}") or error(which .. ": no result: " .. out, 0)))()
      assert(r.events == handled, ("%s: the handler saw %d events, not %d"):format(which, r.events, handled))
      assert(r.skipped == skipped, ("%s: %d events skipped, not %d"):format(which, r.skipped, skipped))
      table.insert(setup[which], r.setup)
      return r.cpu
    end
  end
  local list = { { name = "qmp", run = timed("qmp") } }
  for _, which in ipairs(contenders) do list[#list + 1] = { name = which, run = timed(which) } end
  local s = H.interleave(label, list)
  local result = { qmp = { time = H.stats(s.qmp), setup = H.stats(setup.qmp) } }
  for _, which in ipairs(contenders) do
    result[which] = { time = H.stats(s[which]), ratio = H.stats(H.ratios(s[which], s.qmp)),
                      setup = H.stats(setup[which]) }
  end
  return result
end

local function rate(n, st)
  return ("%.0fk events/s"):format(n / st.median / 1000)
end

-- One table row of qmp against one contender.
local function row(id, key, what, n, r, which)
  return { id = id, key = key, what = what, qmp = H.spread(r.qmp.time, "seconds"),
           contender = H.spread(r[which].time, "seconds") .. " " .. M.NAMES[which],
           ratio = H.spread(r[which].ratio, "ratio"),
           note = ("qmp %s, %s %s; start-up before the first event, not counted: qmp %s, %s %s"):format(
             rate(n, r.qmp.time), M.NAMES[which], rate(n, r[which].time), H.seconds(r.qmp.setup.median),
             M.NAMES[which], H.seconds(r[which].setup.median)) }
end

--- Row 1: every event to a vm:on("*") handler, against a line reader and
-- a chunked reader; the target is against the faster of the two.
function M.all()
  local python = python_note()
  H.say("  %s", python)
  local n = H.size(100000)
  local r = compare("e2e", n, nil, n, 0, { "luasocket", "chunked" })
  local faster = r.chunked.time.median < r.luasocket.time.median and "chunked" or "luasocket"
  local rows = {
    row("1", "1:luasocket", ("end to end, %dk events, all to a handler"):format(n // 1000), n, r, "luasocket"),
    row("1", "1:chunked", "  the same, against a chunked reader", n, r, "chunked"),
  }
  for _, x in ipairs(rows) do
    if x.key == "1:" .. faster then
      x.target, x.met = "≥ 1.3× the faster (aim 1.5×)", r[faster].ratio.median >= 1.3
      x.note = x.note .. "; the faster contender, the one row 1 is judged against"
    else
      x.target = "(the slower contender)"
    end
  end
  rows[1].note = rows[1].note .. "; " .. python
  return rows
end

--- Row 2: opts.events = { "BLOCK_IO_ERROR", "SHUTDOWN" }, against a
-- script that decodes every line to learn its name and a careful one that
-- decodes only the lines a plain string.find says hold a wanted name.
function M.interest()
  local n = H.size(100000)
  local _, names = H.corpus_file(n)
  local wanted = 0
  for _, name in ipairs(INTEREST) do wanted = wanted + (names[name] or 0) end
  H.say("  interest set %s: %d of %d events (%.1f %%)", table.concat(INTEREST, ", "), wanted, n, 100 * wanted / n)
  local r = compare("interest", n, INTEREST, wanted, n - wanted, { "luasocket", "careful" })
  local naive = row("2", "2:luasocket", ("end to end, interest set (%.0f %% wanted)"):format(100 * wanted / n),
                    n, r, "luasocket")
  naive.target, naive.met = "≥ 8× (aim 10×)", r.luasocket.ratio.median >= 8
  naive.note = naive.note .. ("; vm.stats.skipped = %d as expected; this contender decodes every line"):format(
    n - wanted)
  local careful = row("2", "2:careful", "  the same, against names found first", n, r, "careful")
  careful.target, careful.met = "≥ 3×", r.careful.ratio.median >= 3
  careful.note = careful.note .. "; this contender decodes only the lines where string.find sees a wanted name"
  return { naive, careful }
end

return M
