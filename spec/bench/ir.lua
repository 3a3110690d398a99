--- Row 4: where an event's instructions go, end to end, with callgrind.
-- The client (client_child.lua) runs under valgrind against a blast peer
-- twice, with N1 and N2 events; the difference divided by N2 - N1 is the
-- cost of one event, free of start-up and connection costs.  The C core's
-- share is every call that enters qmp/core.so from outside (its decoding,
-- reads and polls, and the cJSON and Lua API calls it makes); the rest is
-- the Lua layer: the client's Lua code run by the interpreter, with the
-- allocations it makes, and the handler.
local callgrind = require "bench.callgrind"
local H = require "bench.harness"

local M = {}

local INTEREST = "BLOCK_IO_ERROR,SHUTDOWN"
-- Object basenames: qmp.core (qmp/core.so), lua-cjson's module.
local CORE, LUA_CJSON = "^core%.so$", "^liblua5%.4%-cjson"

-- Run one client under callgrind against a peer sending n events.
local function profile(which, n, extra)
  local dir = H.dir()
  local tag = ("%s-%s-%d"):format(which, extra and "interest" or "all", n)
  local out, log = ("%s/callgrind.%s"):format(dir, tag), ("%s/valgrind.%s.log"):format(dir, tag)
  local path, peer = H.blast_peer(H.corpus_file(n), 1)
  -- Under callgrind the client runs some 50 times slower than the peer: on
  -- the real clock its handlers would look slow and it would read ahead of
  -- them (dispatch.lua, PUMP_EVERY) as it never does at full speed.
  local cmd = ("valgrind --tool=callgrind --callgrind-out-file=%s --log-file=%s lua5.4 %s %s %s clock=frozen %s")
    :format(H.quote(out), H.quote(log), H.quote(H.bench_dir .. "/client_child.lua"), which, H.quote(path),
            extra and ("events=" .. extra) or "")
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
  local f = {
    total = p.total,
    core = core,
    cjson = callgrind.between(p, CORE, "^libcjson"),
    parse = callgrind.calls_to(p, "^cJSON_Parse", CORE),
    delete = callgrind.calls_to(p, "^cJSON_Delete$", CORE),
    lua_api = callgrind.between(p, CORE, "^lua5%.4$"),
    strings = callgrind.calls_to(p, "^lua_push[l]?string$", CORE),
    libc = callgrind.between(p, CORE, "^libc%.so"),
    lua_cjson = callgrind.entering(p, LUA_CJSON),
    self = p.self,
  }
  f.own = core - f.cjson - f.lua_api - f.libc
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

local function measure(which, n1, n2, extra)
  return per_event(figures(profile(which, n1, extra)), figures(profile(which, n2, extra)), n1, n2)
end

function M.run()
  if not H.have_command("valgrind") then
    return { { id = "4", what = "Lua layer's share of an event's instructions", qmp = "valgrind not installed",
               target = "≤ 15 %", note = "apt-get install valgrind to measure this row" } }
  end
  local n1, n2 = H.size(5000), H.size(25000)
  local q = measure("qmp", n1, n2)
  local qi = measure("qmp", n1, n2, INTEREST)
  local c = H.have_module("cjson") and measure("luasocket", n1, n2)
  local lua = q.total - q.core
  local share = lua / q.total
  H.say("  [ir] qmp, machine instructions per event by function (own cost; lua5.4 is stripped), largest first:")
  for i = 1, 14 do
    local t = q.top[i]
    if t then H.say("  [ir]   %7.0f  %s", t.cost, t.name) end
  end
  local vm_list, vm_total = lua_profile(n2)
  H.say("  [ir] qmp, Lua VM instructions per event by Lua function (%.0f in all):", vm_total)
  for i = 1, math.min(12, #vm_list) do H.say("  [ir]   %7.1f  %s", vm_list[i].per_event, vm_list[i].where) end
  local rows = { {
    id = "4", what = "Lua layer's share of an event's instructions",
    qmp = ("%.0f %% (%s of %s per event)"):format(100 * share, H.kilo(lua), H.kilo(q.total)),
    target = "≤ 15 %", met = share <= 0.15,
    note = ("per event: qmp.core %s = cJSON %s (parse %s, cJSON_Delete %s) + Lua API calls %s (string pushes %s) "
            .. "+ libc %s (recv, memcpy, ...) + its own code %s (framer, tree walk); Lua layer %s; "
            .. "with the interest set: %s per event in all")
           :format(H.kilo(q.core), H.kilo(q.cjson), H.kilo(q.parse), H.kilo(q.delete), H.kilo(q.lua_api),
                   H.kilo(q.strings), H.kilo(q.libc), H.kilo(q.own), H.kilo(lua), H.kilo(qi.total)),
  } }
  if c then
    rows[2] = {
      id = "4b", what = "instructions per event, end to end",
      qmp = H.kilo(q.total), contender = H.kilo(c.total) .. " luasocket+cjson",
      ratio = H.ratio(c.total / q.total),
      note = ("luasocket+cjson: %s of it in lua-cjson; qmp with the interest set: %s"):format(
        H.kilo(c.lua_cjson), H.kilo(qi.total)),
    }
  end
  return rows
end

return M
