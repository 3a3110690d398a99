--- What every benchmark shares: progress lines, interleaved rounds and
-- their statistics, formatting, temporary files, peer processes and
-- compiling the C contenders.  Processes and files a benchmark makes are
-- registered here and removed by run.lua, also when a benchmark fails.
local proc = require "support.proc"
local tmp = require "support.tmp"
local corpus = require "bench.corpus"

local format = string.format

local H = {}

H.bench_dir = (debug.getinfo(1, "S").source:match("^@(.*/bench)/[^/]*$")) or "spec/bench"

-- {==================== settings

--- An integer from the environment, else default.
function H.env_int(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return assert(math.tointeger(tonumber(v)), name .. " must be an integer")
end

--- QMP_BENCH_QUICK=1: event counts / 10 and fewer rounds, for a quick
-- look (minutes become seconds); the figures are noisier.
H.quick = os.getenv("QMP_BENCH_QUICK") == "1"

--- Measured rounds per benchmark (after one warm-up round).
H.rounds = H.env_int("QMP_BENCH_ROUNDS", H.quick and 3 or 7)

--- n, or n / 10 in quick mode.
function H.size(n)
  return H.quick and n // 10 or n
end

-- }==================== settings

-- {==================== output

--- A progress line, flushed at once so a person watching sees it.
function H.say(fmt, ...)
  io.stdout:write(format(fmt, ...), "\n")
  io.stdout:flush()
end

-- A unit for a value: its divisor and name.
local function seconds_unit(s)
  if s >= 1 then return 1, "s" end
  if s >= 1e-3 then return 1e-3, "ms" end
  return 1e-6, "µs"
end

local function bytes_unit(b)
  if b >= 1 << 20 then return 1 << 20, "MiB" end
  return 1024, "KiB"
end

-- Three significant digits, at most one decimal: 283, 41.2, 7.1.
local function num(v)
  if v >= 100 then return format("%.0f", v) end
  if v >= 10 then return format("%.1f", v) end
  return format("%.2f", v)
end

function H.seconds(s)
  local div, unit = seconds_unit(s)
  return num(s / div) .. " " .. unit
end

function H.bytes(b)
  local div, unit = bytes_unit(b)
  return num(b / div) .. " " .. unit
end

--- Thousands of instructions: "21.4k".
function H.kilo(n)
  return num(n / 1000) .. "k"
end

function H.ratio(x)
  return format("%.2f×", x)
end

local UNITS = { seconds = seconds_unit, bytes = bytes_unit,
                ratio = function() return 1, "×" end }

--- "283 ms (275–309)": a statistic (H.stats) with its range; kind is
-- "seconds", "bytes" or "ratio".
function H.spread(st, kind)
  local div, unit = UNITS[kind](st.median)
  if kind == "ratio" then
    return format("%.2f× (%.2f–%.2f)", st.median, st.min, st.max)
  end
  return format("%s %s (%s–%s)", num(st.median / div), unit, num(st.min / div), num(st.max / div))
end

-- }==================== output

-- {==================== statistics

--- median, min and max of a list of numbers.
function H.stats(samples)
  local s = {}
  for i, v in ipairs(samples) do s[i] = v end
  table.sort(s)
  local n = #s
  assert(n > 0, "no samples")
  local median = n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
  return { median = median, min = s[1], max = s[n], n = n }
end

--- Per-round ratios over[i] / under[i].
function H.ratios(over, under)
  local r = {}
  for i = 1, #over do r[i] = over[i] / under[i] end
  return r
end

--- Run each contender once per round, in turn (A B A B ...), after one
-- warm-up round that is not counted.  contenders: { { name =, run = fn }, ... }
-- where run() returns the figure to keep (seconds); returns name -> samples.
function H.interleave(label, contenders, rounds)
  rounds = rounds or H.rounds
  local samples = {}
  for _, c in ipairs(contenders) do samples[c.name] = {} end
  for round = 0, rounds do
    local parts = {}
    for _, c in ipairs(contenders) do
      collectgarbage("collect")
      local v = c.run(round)
      if round > 0 then table.insert(samples[c.name], v) end
      parts[#parts + 1] = format("%s %s", c.name, H.seconds(v))
    end
    H.say("  [%s] %s: %s", label, round == 0 and "warm-up" or format("round %d/%d", round, rounds),
          table.concat(parts, ", "))
  end
  return samples
end

-- }==================== statistics

-- {==================== files and processes

local cleanups = {}

--- Run fn at the end of the run (newest first), also after a failure.
function H.cleanup(fn)
  cleanups[#cleanups + 1] = fn
end

function H.run_cleanups()
  for i = #cleanups, 1, -1 do
    local ok, err = pcall(cleanups[i])
    if not ok then io.stderr:write("cleanup failed: ", tostring(err), "\n") end
    cleanups[i] = nil
  end
end

local workdir
local corpus_files = {}

--- This run's private temporary directory (removed by H.remove_dir).
function H.dir()
  if not workdir then workdir = tmp.dir("qmpbench") end
  return workdir
end

function H.remove_dir()
  if workdir then tmp.remove(workdir) end
  workdir, corpus_files = nil, {}
end

H.write = tmp.write
H.read = tmp.read
H.quote = tmp.quote

-- Write n events to path; returns how many of each name, and the size.
local function write_corpus(n, path)
  local lines = corpus.events(n)
  local names = {}
  for _, line in ipairs(lines) do
    local name = line:match('"event": "([^"]+)"')
    names[name] = (names[name] or 0) + 1
  end
  local text = table.concat(lines)
  H.write(path, text)
  return names, #text
end

--- A file holding the first n events of the corpus (made once per run),
-- and how many events of each name it holds.  Nothing of it stays in
-- memory: a big live heap would slow every client's garbage collector.
function H.corpus_file(n)
  local made = corpus_files[n]
  if made then return made.path, made.names end
  local t0 = os.clock()
  local path = format("%s/events-%d.jsonl", H.dir(), n)
  local names, size = write_corpus(n, path)
  collectgarbage("collect")
  H.say("  corpus: %d events, %s, %.1f %% BLOCK_IO_ERROR + SHUTDOWN (made in %.1f s)", n, H.bytes(size),
        100 * ((names.BLOCK_IO_ERROR or 0) + (names.SHUTDOWN or 0)) / n, os.clock() - t0)
  corpus_files[n] = { path = path, names = names }
  return path, names
end

--- Start a process (argv list) logging to log; stopped by pid at the end.
function H.spawn(argv, log)
  local pid = proc.spawn(argv, log)
  H.cleanup(function() proc.terminate(pid, 2) end)
  return pid
end

H.wait_exit = proc.wait_exit

--- Wait until a spawned server listens on path; raises with its log if not.
function H.wait_listening(path, pid, log)
  local up = proc.wait_until(function() return proc.listening(path) or not proc.alive(pid) end, 10)
  if not (up and proc.listening(path)) then
    error("peer did not start:\n" .. (H.read(log) or ""), 2)
  end
end

local peers = 0

--- A blast peer (blast_peer.lua) serving `connections` clients in turn,
-- each the corpus file `repeats` times.  Returns the socket path.
function H.blast_peer(file, connections, repeats)
  peers = peers + 1
  local dir = H.dir()
  local path, log = format("%s/blast%d.sock", dir, peers), format("%s/blast%d.log", dir, peers)
  local pid = H.spawn({ "lua5.4", H.bench_dir .. "/blast_peer.lua", path, file, tostring(connections),
                        tostring(repeats or 1) }, log)
  H.wait_listening(path, pid, log)
  return path, pid
end

--- Run a shell command; returns its output, or nil, output on failure.
function H.capture(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  if not ok then return nil, out end
  return out
end

--- Compile one of the C programs into this run's directory, against the
-- system cJSON when asked; `flags` (optional) are more compiler and linker
-- words, after the source.  Returns the executable's path, or nil, why.
function H.compile(source, with_cjson, flags)
  local exe = format("%s/%s", H.dir(), source:match("([^/]+)%.c$"))
  local cc = os.getenv("CC") or "cc"
  local libs = flags or ""
  if with_cjson then
    libs = libs .. " " .. (H.capture("pkg-config --cflags --libs libcjson") or "-I/usr/include/cjson -lcjson")
      :gsub("%s+$", "")
  end
  local cmd = format("%s -O2 -std=c99 -D_GNU_SOURCE -Wall -o %s %s %s", cc, H.quote(exe),
                     H.quote(H.bench_dir .. "/" .. source), libs)
  local _, err = H.capture(cmd)
  if err then return nil, "compiling " .. source .. " failed: " .. err end
  return exe
end

--- true when require(name) works; else false, why.
function H.have_module(name)
  local ok, err = pcall(require, name)
  if ok then return true end
  return false, tostring(err):match("^[^\n]*")
end

--- true when the shell finds command.
function H.have_command(name)
  return os.execute("command -v " .. name .. " >/dev/null 2>&1") == true
end

-- }==================== files and processes

return H
