--- Row 4, and the instruction ratios beside rows 1 and 2: where an event's
-- instructions go, end to end, with callgrind.  Each client
-- (client_child.lua) runs under valgrind against a blast peer twice, with
-- N1 and N2 events; the difference divided by N2 - N1 is the cost of one
-- event, free of start-up and connection costs.
--
-- The clients run in named_lua (named_lua.c): the distribution's own Lua
-- compiled code, linked with its function names, which the installed,
-- stripped lua5.4 lacks; without them the collector cannot be told apart.
-- A run of the qmp client under the installed lua5.4 checks that the two
-- count the same instructions per event.
--
-- An event's instructions, in three shares that add up to the whole:
--   GC        the garbage collector: every call into its entry points
--             (GC_ENTRIES: its steps, with the marking, sweeping and
--             freeing they do, and its write barriers), wherever the
--             allocation that triggered it was made;
--   qmp.core  every call that enters qmp/core.so from outside (its
--             decoding, reads and polls, and the cJSON and Lua API calls it
--             makes), less the collector's steps made beneath it;
--   Lua       the rest: the client's Lua code run by the interpreter, with
--             the allocations it makes, and the handler.
local callgrind = require "bench.callgrind"
local e2e = require "bench.e2e"
local H = require "bench.harness"

local M = {}

local INTEREST = "BLOCK_IO_ERROR,SHUTDOWN"
-- Object basenames: qmp.core (qmp/core.so), lua-cjson's module, the
-- interpreter.
local CORE, LUA_CJSON, INTERP = "^core%.so$", "^liblua5%.4%-cjson", "^named_lua$"
-- Lua 5.4's collector (lgc.c) as the rest of Lua calls it: all of its
-- luaC_ functions but luaC_newobj (an allocation, charged to whoever
-- allocates) and luaC_fix (start-up).
local GC_ENTRIES = { "luaC_step", "luaC_fullgc", "luaC_runtilstate", "luaC_changemode", "luaC_freeallobjects",
                     "luaC_barrier_", "luaC_barrierback_", "luaC_checkfinalizer" }
-- How many callers callgrind keeps with each entry's name: enough to reach
-- the core from a Lua API function, or a luaL_Buffer one, that it called.
local CALLERS = 8

-- The interpreter, compiled once per run; nil, why when it cannot be.
local named_lua, named_lua_err
local function interpreter()
  if named_lua or named_lua_err then return named_lua, named_lua_err end
  local libdir = (H.capture("pkg-config --variable=libdir lua5.4") or "/usr/lib/x86_64-linux-gnu"):gsub("%s+$", "")
  local cflags = (H.capture("pkg-config --cflags lua5.4") or "-I/usr/include/lua5.4"):gsub("%s+$", "")
  local archive = libdir .. "/liblua5.4.a"
  if not io.open(archive) then
    named_lua_err = archive .. " not found (apt-get install liblua5.4-dev)"
    return nil, named_lua_err
  end
  named_lua, named_lua_err = H.compile("named_lua.c", false, ("%s -Wl,-E -Wl,--whole-archive %s "
    .. "-Wl,--no-whole-archive -lm -ldl"):format(cflags, H.quote(archive)))
  return named_lua, named_lua_err
end

local function set(list)
  local s = {}
  for _, name in ipairs(list) do s[name] = true end
  return s
end

-- Run one client under callgrind against a peer sending n events; lua is
-- the interpreter to run it in.
local function profile(which, n, extra, lua)
  local dir = H.dir()
  local tag = ("%s-%s-%d%s"):format(which, extra and "interest" or "all", n, lua == "lua5.4" and "-installed" or "")
  local out, log = ("%s/callgrind.%s"):format(dir, tag), ("%s/valgrind.%s.log"):format(dir, tag)
  local path, peer = H.blast_peer(H.corpus_file(n), 1)
  local separate = {}
  for _, name in ipairs(GC_ENTRIES) do separate[#separate + 1] = ("--separate-callers%d=%s"):format(CALLERS, name) end
  -- Under callgrind the client runs some 50 times slower than the peer: on
  -- the real clock its handlers would look slow and it would read ahead of
  -- them (dispatch.lua, PUMP_EVERY) as it never does at full speed.
  local cmd = ("valgrind --tool=callgrind %s --callgrind-out-file=%s --log-file=%s %s %s %s %s clock=frozen %s")
    :format(table.concat(separate, " "), H.quote(out), H.quote(log), H.quote(lua),
            H.quote(H.bench_dir .. "/client_child.lua"), which, H.quote(path), extra and ("events=" .. extra) or "")
  local t0 = os.time()
  local text, err = H.capture(cmd)
  if not text then error("callgrind run failed: " .. err .. "\n" .. (H.read(log) or ""), 0) end
  local result = assert(load(text:match("return {.*}") or error("no result from the client: " .. text)))()
  assert(result.events + result.skipped == n, ("%s: %d events handled and %d skipped of %d"):format(
    tag, result.events, result.skipped, n))
  H.wait_exit(peer, 10)
  local p = callgrind.parse(out)
  H.say("  [ir] %s with %d events: %.0fM instructions, %d handled, %d skipped (%d s)", tag, n, p.total / 1e6,
        result.events, result.skipped, os.time() - t0)
  return p
end

-- The figures of one profile; per_event() turns two into per-event costs.
-- Split by library, so that renaming the core's C functions changes nothing.
local function figures(p)
  local core = callgrind.entering(p, CORE)
  local gc, gc_in_core = callgrind.calls_into(p, set(GC_ENTRIES), callgrind.functions_of(p, CORE))
  local f = {
    total = p.total,
    gc = gc,
    gc_in_core = gc_in_core,
    core = core - gc_in_core,
    cjson = callgrind.between(p, CORE, "^libcjson"),
    parse = callgrind.calls_to(p, "^cJSON_Parse", CORE),
    delete = callgrind.calls_to(p, "^cJSON_Delete$", CORE),
    -- the collector's steps beneath the core all come through its Lua API calls
    lua_api = callgrind.between(p, CORE, INTERP) - gc_in_core,
    strings = callgrind.calls_to(p, "^lua_push[l]?string$", CORE),
    libc = callgrind.between(p, CORE, "^libc%.so"),
    lua_cjson = callgrind.entering(p, LUA_CJSON),
    self = p.self,
  }
  f.own = f.core - f.cjson - f.lua_api - f.libc
  f.lua = f.total - f.core - f.gc
  return f
end

local function per_event(a, b, n1, n2)
  local d = {}
  for k, v in pairs(b) do
    if type(v) == "number" then d[k] = (v - a[k]) / (n2 - n1) end
  end
  local top = {}
  for name, cost in pairs(b.self) do
    top[#top + 1] = { name = name, cost = (cost - (a.self[name] or 0)) / (n2 - n1) }
  end
  table.sort(top, function(x, y) return x.cost > y.cost end)
  d.top = top
  return d
end

-- Lua VM instructions per event by Lua function (a count hook at every
-- instruction, client_child.lua profile=1): which Lua code runs per event.
local function lua_profile(n)
  local path, peer = H.blast_peer(H.corpus_file(n), 1)
  local out, err = H.capture(("lua5.4 %s qmp %s profile=1 clock=frozen"):format(
    H.quote(H.bench_dir .. "/client_child.lua"), H.quote(path)))
  if not out then error("profiled client failed: " .. err, 0) end
  H.wait_exit(peer, 10)
  local list, total = {}, 0
  for count, where in out:gmatch("profile (%d+) ([^\n]+)") do
    list[#list + 1] = { where = where, per_event = tonumber(count) / n }
    total = total + tonumber(count) / n
  end
  return list, total
end

local function measure(which, n1, n2, extra, lua)
  return per_event(figures(profile(which, n1, extra, lua)), figures(profile(which, n2, extra, lua)), n1, n2)
end

local function percent(part, whole)
  return ("%.0f %%"):format(100 * part / whole)
end

-- "17 % (3.1k of 18.2k per event)"
local function share(part, whole)
  return ("%s (%s of %s per event)"):format(percent(part, whole), H.kilo(part), H.kilo(whole))
end

-- The rows comparing qmp's instructions per event with each contender's;
-- run.lua shows each ratio beside the time ratio of the row with that key.
local CONTENDERS = {
  { row = "1", which = "luasocket" }, { row = "1", which = "chunked" },
  { row = "2", which = "luasocket", interest = true }, { row = "2", which = "careful", interest = true },
}

function M.run()
  if not H.have_command("valgrind") then
    return { { id = "4", what = "Lua layer's share of an event's instructions", qmp = "valgrind not installed",
               target = "≤ 15 %", note = "apt-get install valgrind to measure this row" } }
  end
  local lua, why = interpreter()
  if not lua then error("the interpreter for the instruction counts: " .. why, 0) end
  local n1, n2 = H.size(5000), H.size(25000)
  local q = measure("qmp", n1, n2, nil, lua)
  local qi = measure("qmp", n1, n2, INTEREST, lua)
  local installed = measure("qmp", n1, n2, nil, "lua5.4")
  H.say("  [ir] qmp under named_lua %s per event, under the installed lua5.4 %s (%+.1f %%)", H.kilo(q.total),
        H.kilo(installed.total), 100 * (q.total - installed.total) / installed.total)
  H.say("  [ir] qmp, machine instructions per event by function (own cost), largest first:")
  for i = 1, 16 do
    local t = q.top[i]
    if t then H.say("  [ir]   %7.0f  %s", t.cost, t.name) end
  end
  local vm_list, vm_total = lua_profile(n2)
  H.say("  [ir] qmp, Lua VM instructions per event by Lua function (%.0f in all):", vm_total)
  for i = 1, math.min(12, #vm_list) do H.say("  [ir]   %7.1f  %s", vm_list[i].per_event, vm_list[i].where) end
  local lua_share = q.lua / q.total
  local rows = { {
    id = "4", what = "Lua layer's share of an event's instructions",
    qmp = share(q.lua, q.total), target = "≤ 15 %", met = lua_share <= 0.15,
    note = ("per event, in three shares: Lua layer %s (the interpreter running the client's Lua code, its "
            .. "allocations, the handler); qmp.core %s = cJSON %s (parse %s, cJSON_Delete %s) + Lua API calls %s "
            .. "(string pushes %s) + libc %s (recv, memcpy, ...) + its own code %s (framer, tree walk); "
            .. "garbage collection %s (the collector's steps and write barriers, %s of them beneath the core's "
            .. "calls). Under named_lua, within %.1f %% of the installed lua5.4 (%s per event)")
           :format(share(q.lua, q.total), share(q.core, q.total), H.kilo(q.cjson), H.kilo(q.parse),
                   H.kilo(q.delete), H.kilo(q.lua_api), H.kilo(q.strings), H.kilo(q.libc), H.kilo(q.own),
                   share(q.gc, q.total), H.kilo(q.gc_in_core), math.abs(100 * (q.total - installed.total)
                   / installed.total), H.kilo(installed.total)),
  }, {
    id = "4", what = "  garbage collection's share of them",
    qmp = share(q.gc, q.total),
    note = ("the collector's steps (marking, sweeping, freeing) and write barriers, wherever triggered; "
            .. "qmp.core's own share, without them: %s; with the interest set: GC %s"):format(
            share(q.core, q.total), share(qi.gc, qi.total)),
  } }
  if not H.have_module("cjson") then return rows end
  for _, c in ipairs(CONTENDERS) do
    local m = measure(c.which, n1, n2, c.interest and INTEREST or nil, lua)
    local mine = c.interest and qi or q
    local ratio = m.total / mine.total
    rows[#rows + 1] = {
      id = "4b", what = ("instructions per event, row %s's contender"):format(c.row),
      merge = c.row .. ":" .. c.which,
      qmp = H.kilo(mine.total), contender = H.kilo(m.total) .. " " .. e2e.NAMES[c.which],
      iratio = H.ratio(ratio),
      note = ("instructions per event (callgrind): qmp %s (GC %s), %s %s (GC %s, lua-cjson %s)"):format(
        H.kilo(mine.total), percent(mine.gc, mine.total), e2e.NAMES[c.which], H.kilo(m.total),
        percent(m.gc, m.total), H.kilo(m.lua_cjson)),
    }
  end
  return rows
end

return M
