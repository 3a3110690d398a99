--- Rows 1 and 2: end to end over a unix socket.  A peer blasts the corpus
-- after negotiation; the client counts the events its handler sees.  Each
-- run is a fresh process of its own (client_child.lua), qmp and luasocket +
-- lua-cjson interleaved, so that neither inherits the other's heap, garbage
-- or allocator state; the figure is that process's CPU time (os.clock)
-- from connect to the end of the stream.
local H = require "bench.harness"

local M = {}

local INTEREST = { "BLOCK_IO_ERROR", "SHUTDOWN" }

local function python_note()
  if os.execute("python3 -c 'import qemu.qmp' >/dev/null 2>&1") == true then
    return "qemu.qmp (QEMU's Python client) is importable, but this harness has no Python contender yet"
  end
  return "qemu.qmp (QEMU's Python client) is not installed and cannot be here (no PyPI): not a contender"
end

-- Interleaved runs of both clients against one peer; each run must see
-- `handled` events in its handler and skip `skipped`.
local function compare(label, n, events, handled, skipped)
  local ok, why = H.have_module("cjson")
  if not ok then error("lua-cjson is needed for the contender (apt-get install lua-cjson): " .. why, 0) end
  local path = H.blast_peer(H.corpus_file(n), 2 * (H.rounds + 1))
  local function timed(name, which)
    return function()
      local cmd = ("lua5.4 %s %s %s %s"):format(H.quote(H.bench_dir .. "/client_child.lua"), which, H.quote(path),
                                                events and ("events=" .. table.concat(events, ",")) or "")
      local out, err = H.capture(cmd)
      if not out then error(name .. " client failed: " .. err, 0) end
      local r = assert(load(out:match("return {.*}") or error(name .. ": no result: " .. out, 0)))()
      assert(r.events == handled, ("%s: the handler saw %d events, not %d"):format(name, r.events, handled))
      assert(r.skipped == skipped, ("%s: %d events skipped, not %d"):format(name, r.skipped, skipped))
      return r.cpu
    end
  end
  local s = H.interleave(label, {
    { name = "qmp", run = timed("qmp", "qmp") },
    { name = "luasocket+cjson", run = timed("luasocket+cjson", "luasocket") },
  })
  local q, c = H.stats(s.qmp), H.stats(s["luasocket+cjson"])
  local r = H.stats(H.ratios(s["luasocket+cjson"], s.qmp))
  local rate = function(t) return ("%.0fk events/s"):format(n / t / 1000) end
  return q, c, r, ("qmp %s, luasocket+cjson %s"):format(rate(q.median), rate(c.median))
end

--- Row 1: every event to a vm:on("*") handler.
function M.all()
  local python = python_note()
  H.say("  %s", python)
  local n = H.size(100000)
  local q, c, r, note = compare("e2e", n, nil, n, 0)
  note = note .. "; " .. python
  return { {
    id = "1", what = ("end to end, %dk events, all to a handler"):format(n // 1000),
    qmp = H.spread(q, "seconds"), contender = H.spread(c, "seconds") .. " luasocket+cjson",
    ratio = H.spread(r, "ratio"), target = "≥ 1.0× (aim 1.5×)", met = r.median >= 1.0, note = note,
  } }
end

--- Row 2: opts.events = { "BLOCK_IO_ERROR", "SHUTDOWN" }; the contender
-- decodes every line to learn its name.
function M.interest()
  local n = H.size(100000)
  local _, names = H.corpus_file(n)
  local wanted = 0
  for _, name in ipairs(INTEREST) do wanted = wanted + (names[name] or 0) end
  H.say("  interest set %s: %d of %d events (%.1f %%)", table.concat(INTEREST, ", "), wanted, n, 100 * wanted / n)
  local q, c, r, note = compare("interest", n, INTEREST, wanted, n - wanted)
  return { {
    id = "2", what = ("end to end, interest set (%.0f %% wanted)"):format(100 * wanted / n),
    qmp = H.spread(q, "seconds"), contender = H.spread(c, "seconds") .. " luasocket+cjson",
    ratio = H.spread(r, "ratio"), target = "≥ 5×", met = r.median >= 5,
    note = note .. ("; vm.stats.skipped = %d as expected"):format(n - wanted),
  } }
end

return M
