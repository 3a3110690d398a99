-- The benchmarks of issue 9 ("Speed"): each makes its own input, runs its
-- contenders interleaved in this process and prints medians with ranges;
-- a table of every row, with its target met or not, comes at the end.
--   lua5.4 spec/bench/run.lua [NAME ...]     (from the top of the tree, after make)
-- NAMEs: e2e interest decoder ir reply soak fleet handlers rtt mux (default: all, in that order).
-- Environment: QMP_BENCH_QUICK=1 (sizes / 10, fewer rounds), QMP_BENCH_ROUNDS=n,
-- QMP_BENCH_SOAK_EVENTS=n (row 6, default 10,000,000).
local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path

-- Plain `lua5.4 spec/bench/run.lua` from the top of the tree: run again with
-- the module paths `make bench` sets, which the peers and clients inherit.
if not pcall(require, "qmp") and not os.getenv("LUA_PATH_5_4") then
  local words = { "LUA_PATH_5_4='./lua/?.lua;./lua/?/init.lua;;'", "LUA_CPATH_5_4='./?.so;;'", "lua5.4" }
  for i = 0, #arg do words[#words + 1] = "'" .. arg[i]:gsub("'", [['\'']]) .. "'" end
  local _, _, code = os.execute(table.concat(words, " "))
  os.exit(code or 1)
end
if not pcall(require, "qmp") then
  io.stderr:write("run.lua: the qmp modules are not found: run `make` first, from the top of the tree\n")
  os.exit(1)
end

local H = require "bench.harness"

local BENCHES = {
  { name = "e2e", module = "bench.e2e", fn = "all", about = "end to end, every event to a handler" },
  { name = "interest", module = "bench.e2e", fn = "interest", about = "end to end with an interest set" },
  { name = "decoder", module = "bench.decoder", fn = "run", about = "qmp.decoder over the mixed corpus" },
  { name = "ir", module = "bench.ir", fn = "run", about = "instructions per event (callgrind)" },
  { name = "reply", module = "bench.reply", fn = "run", about = "a 10 MiB schema-like reply" },
  { name = "soak", module = "bench.soak", fn = "run", about = "RSS over millions of events" },
  { name = "fleet", module = "bench.fleet", fn = "run", about = "a fleet of monitors in one qmp.loop (1 to 10,000)" },
  { name = "handlers", module = "bench.handlers", fn = "run", about = "100 glob handlers against one" },
  { name = "rtt", module = "bench.rtt", fn = "run", about = "query-status round trips, real QEMU" },
  { name = "mux", module = "bench.mux", fn = "run", about = "qmp-lua mux: round trips through it, a flood to 10 clients" },
}

local function usage()
  io.stderr:write("usage: lua5.4 spec/bench/run.lua [NAME ...]\n")
  for _, b in ipairs(BENCHES) do io.stderr:write(("  %-9s %s\n"):format(b.name, b.about)) end
  os.exit(64)
end

local selected = {}
for _, name in ipairs(arg) do
  local found
  for _, b in ipairs(BENCHES) do if b.name == name then found = b end end
  if not found then usage() end
  selected[#selected + 1] = found
end
if #selected == 0 then selected = BENCHES end

-- Width of a cell as printed (UTF-8 aware).
local function width(s)
  return utf8.len(s) or #s
end

local function pad(s, w)
  return s .. string.rep(" ", w - width(s))
end

local COLUMNS = { { "id", "#" }, { "what", "benchmark" }, { "qmp", "qmp" }, { "contender", "contender" },
                  { "ratio", "time ratio" }, { "iratio", "instr. ratio" }, { "target", "target" },
                  { "result", "result" } }

-- The instruction counts (ir.lua) return a row per contender of rows 1 and
-- 2, with `merge` naming the row (its `key`) whose instructions ratio it
-- is: shown in that row when it is in the table, else on its own.
local function merge_instructions(rows)
  local by_key = {}
  for _, row in ipairs(rows) do
    if row.key then by_key[row.key] = row end
  end
  local kept = {}
  for _, row in ipairs(rows) do
    local into = row.merge and by_key[row.merge]
    if into then
      into.iratio = row.iratio
      into.note = (into.note and into.note .. "; " or "") .. row.note
    else
      kept[#kept + 1] = row
    end
  end
  return kept
end

local function print_table(rows)
  local widths = {}
  for i, col in ipairs(COLUMNS) do
    widths[i] = width(col[2])
    for _, row in ipairs(rows) do widths[i] = math.max(widths[i], width(row[col[1]] or "")) end
  end
  local function line(cells)
    local out = {}
    for i, c in ipairs(cells) do out[i] = pad(c, widths[i]) end
    print((table.concat(out, "  "):gsub("%s+$", "")))
  end
  local head = {}
  for i, col in ipairs(COLUMNS) do head[i] = col[2] end
  line(head)
  local rule = {}
  for i, w in ipairs(widths) do rule[i] = string.rep("-", w) end
  line(rule)
  for _, row in ipairs(rows) do
    local cells = {}
    for i, col in ipairs(COLUMNS) do cells[i] = row[col[1]] or "" end
    line(cells)
  end
end

local function describe_machine()
  local cpus = H.capture("nproc") or "?"
  local os_release = H.read("/etc/debian_version") or "?"
  local qemu = (H.capture("qemu-system-x86_64 --version") or "no QEMU"):match("^[^\n]*")
  local commit = H.capture("git rev-parse --short HEAD")
  commit = commit and ("tree " .. commit:gsub("%s+$", "")) or "not a git checkout"
  local dirty = commit ~= "not a git checkout" and H.capture("git status --porcelain -- lua csrc") or ""
  local lua = (H.capture("lua5.4 -v") or _VERSION):match("Lua [%d.]+") or _VERSION
  return ("%s cores, Debian %s, %s, %s; %s%s; %s"):format(cpus:gsub("%s+$", ""), os_release:gsub("%s+$", ""),
    lua, qemu, commit, dirty ~= "" and " with uncommitted changes in lua/ or csrc/" or "", os.date("%Y-%m-%d"))
end

H.say("qmp benchmarks (issue 9): %s", describe_machine())
H.say("rounds: %d measured after one warm-up%s", H.rounds, H.quick and "; QMP_BENCH_QUICK: sizes / 10" or "")

local rows, failures = {}, 0
local started = os.time()
for i, b in ipairs(selected) do
  H.say("\n[%d/%d] %s: %s", i, #selected, b.name, b.about)
  local t0 = os.time()
  local ok, result = xpcall(function() return require(b.module)[b.fn]() end, debug.traceback)
  H.run_cleanups()
  if ok then
    for _, row in ipairs(result) do
      row.result = row.met == nil and "info" or (row.met and "met" or "NOT met")
      rows[#rows + 1] = row
      H.say("  => %s %s: qmp %s | %s | %s%s | target %s: %s", row.id, row.what, row.qmp or "", row.contender or "",
            row.ratio or "", row.iratio and (" | instructions " .. row.iratio) or "", row.target or "", row.result)
      if row.note then H.say("     %s", row.note) end
    end
  else
    failures = failures + 1
    H.say("  FAILED: %s", result)
    rows[#rows + 1] = { id = "", what = b.name, result = "FAILED", qmp = tostring(result):match("^[^\n]*") }
  end
  H.say("  (%s took %d s)", b.name, os.time() - t0)
end
H.remove_dir()

H.say("\nResults (%s; %d s in all). Medians (min–max) of interleaved rounds; time ratio = qmp's speed over\n"
      .. "the contender's (the contender's CPU time ÷ qmp's, per round); instr. ratio = the contender's\n"
      .. "instructions per event ÷ qmp's (callgrind, `ir`): higher is better for qmp in both.\n",
      os.date("%Y-%m-%d"), os.time() - started)
rows = merge_instructions(rows)
print_table(rows)
local notes = {}
for _, row in ipairs(rows) do
  if row.note then notes[#notes + 1] = ("  %s: %s"):format(row.id, row.note) end
end
if #notes > 0 then print("\n" .. table.concat(notes, "\n")) end
os.exit(failures == 0 and 0 or 1)
