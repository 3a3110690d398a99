-- The property of the protocol harness (fuzz_protocol.c): the client's
-- protocol handling, played over a socketpair against a scripted peer.
-- Embedded into the harness at build time like checks.lua; it gets the
-- qmp.core module as its argument, loads the client from ./lua and the
-- harness's qmp.fuzz (socketpair, fds).  protocol(input) returns nothing
-- when every property holds, else a string saying which did not.
--
-- The input is a script, one operation a line.  An optional first line
-- "#flags" configures the client: 1, 2, 3 or 8 max_queue (else 10000), f
-- events = { STOP, RESUME, RESET } (skipped undecoded), F events = "S*" (a
-- glob: the Lua filter), n negotiate = false, m max_message = 256, T timeout
-- = 1 s (else 10), t a trace function, s a handler that stops the loop at
-- every event (see below), V validate = true (the client asks for the
-- schema after negotiating), r a peer that reads only at op r, and a
-- client socket with the smallest send buffer (a few commands fill it).  Then, for the peer:
--   >TEXT   write TEXT and a newline ($0..$9: the id, as JSON, of the
--           latest command read, of the one before, ...)
--   +TEXT   write TEXT (no newline: a partial message; $0..$9 too)
--   g[o]    a QEMU greeting (offering oob with o)
--   Rd      a reply to command d (0 the latest read) marked with its tag
--   Ed      an error reply to command d, its desc marked with its tag
--   Mdv     a reply to command d with its id mangled (variant v: a number,
--           upper case, in a list, none, none with an error, null, a space)
--   Dd      a reply to command d with a malformed error
--   vk      an event (name k of EVENTS), data { s = secret, n = seq }
--   /N      from now on write at most N bytes per operation (0: all)
--   r       read what the client sent (else done after every operation)
--   c       close the peer's end (EOF)
-- and for the client (coroutines park in the waiter and are resumed by u
-- and t; time is virtual and moves only with t):
--   xNt     vm:execute(CMDS[N], { tag = k }) with timeout t (0: 0, 1: 1 ms,
--           2: 50 ms, 3: 1 s, else the default), in a coroutine;  XNt  the
--           same with 8 KiB more of arguments (written in parts under r)
--   oNt     the same with vm:execute_oob;  qt  quit;  ht  vm:hmp;  ft  getfd,
--           passing fd 2 (SCM_RIGHTS; the peer's plain recv drops it)
--   wft     vm:wait(FILTERS[f], timeout t) in a coroutine;  Wf  vm:wait(f, 0)
--   lfq     vm:listen(FILTERS[f], { max_queue = 1, 2, 4 or 10000 });  n  take
--           what every listener holds;  at  l:wait(t) on the latest, in a coroutine
--   kfh     a handler on FILTERS[f] of kind h (count, raise, stop, once, off
--           itself, execute with timeout 0, add a handler, close the client),
--           registered after the first and the last;  K  the latest handler off
--   s  vm:step();  pt  vm:run{ timeout = t } (0: from the main thread);
--   S  vm:stop();  zh  a timer (vm:after) of kind h;  C  vm:close();
--   ?  pollfd/events/timeout;  u  resume the parked coroutines;  tN  N ms pass
--   y  vm:schema() in a coroutine
-- Anything else is skipped.  At the end the peer writes what it still holds,
-- closes, and the client is stepped until it is closed with nothing left.
--
-- Checked: no Lua error anywhere, and nothing waits for real (poll) or
-- runs away (an instruction budget); every error returned or reported is an
-- error object with a kind documented in README "Error kinds", and the
-- kinds each call may return; a reply marked for a command reaches that
-- call and no other; a timeout never comes early; a command before the
-- client is ready fails at once (closed); each call is sent once, under its
-- name, with growing ids, exec-oob only with oob; vm.state is a documented
-- state; the stats are non-negative integers; every event pushed reaches a
-- handler registered first and one kept last (even when a handler between
-- them stops the loop), or is counted as an overflow, and each listener and
-- the handlers get the very events pushed, in order, less what they
-- dropped; vm:wait never returns an event twice; handler errors, malformed
-- and invalid events are counted and reported once each, overflows at the
-- 1st, 2nd, 4th ... drop; a report is one line and never quotes the peer;
-- at a clean EOF every message the peer wrote is in the stats; the client's
-- socket stays open until vm:close() and closes then; after the peer's EOF
-- every call ends (closed, or the reply that came first); no fd is left
-- open.
local core = ...
local fuzz = require "qmp.fuzz"
local qmp = require "qmp"

local errors = qmp.errors
local type, tostring, rawget, pairs, ipairs, getmetatable = type, tostring, rawget, pairs, ipairs, getmetatable
local mathtype, format = math.type, string.format
local create, resume, status, yield = coroutine.create, coroutine.resume, coroutine.status, coroutine.yield

-- README "Error kinds".
local KINDS = {
  timeout = true, closed = true, refused = true, denied = true, protocol = true, toolarge = true,
  memory = true, qmp = true, unsupported = true, overflow = true, usage = true, handler = true,
  schema = true, job = true, io = true,
}
-- What each call may return.
local COMMAND_KINDS = { timeout = true, closed = true, protocol = true, qmp = true, unsupported = true }
local WAIT_KINDS = { timeout = true, closed = true }
local REPORT_KINDS = { overflow = true, usage = true, handler = true, protocol = true, schema = true }
local STATES = { connecting = true, negotiating = true, ready = true, reconnecting = true, closed = true }
local STATS = { "events", "replies", "stale", "unknown", "overflow", "skipped", "handler_errors",
                "invalid", "malformed" }

-- An event name the client takes from the peer: not "", and not one of the
-- client's own (qmp.*), which the session drops as malformed.
local function peer_event(name)
  return type(name) == "string" and name ~= "" and name:sub(1, 4) ~= "qmp."
end

local CMDS = { "query-status", "stop", "cont", "system_reset", "query-version", "qom-list", "quit" }
local EVENTS = { "STOP", "RESUME", "RESET", "SHUTDOWN", "BLOCK_IO_ERROR", "NEW_THING",
                 "qmp.connected", "BLOCK_JOB_READY" }
local TIMEOUTS = { ["0"] = 0, ["1"] = 0.001, ["2"] = 0.05, ["3"] = 1 }
local LISTEN_QUEUES = { 1, 2, 4, 10000 }
local PAD = ("x"):rep(8192)

-- Filters with a test of their own (on the event's name) to hold the
-- library's filtering to.
local FILTERS = {
  { f = "*", test = function() return true end },
  { f = "STOP", test = function(n) return n == "STOP" end },
  { f = { "STOP", "RESUME" }, test = function(n) return n == "STOP" or n == "RESUME" end },
  { f = "BLOCK_*", test = function(n) return n:sub(1, 6) == "BLOCK_" end },
  { f = function(ev) return rawget(ev, "event") == "RESET" end, test = function(n) return n == "RESET" end },
  { f = "qmp.connected", test = function(n) return n == "qmp.connected" end },
  { f = "NEW_THING", test = function(n) return n == "NEW_THING" end },
  { f = "S*", test = function(n) return n:sub(1, 1) == "S" end },
}

local MAX_OPS = 3000
local FINAL_ROUNDS = 20000    -- steps after the peer's EOF before "it never ends"
local BUDGET = 100000         -- thousands of VM instructions per input: a loop that never ends

local inputs = 0              -- inputs run: the secret differs each time
-- QMP_FUZZ_VERBOSE=1 (running one input: fuzz_protocol FILE) prints how
-- each call ended and the stats, to see what a seed does.
local verbose = os.getenv("QMP_FUZZ_VERBOSE")

-- The digit at i of arg (0 when absent), modulo n.
local function pick(arg, i, n)
  local b = arg:byte(i)
  return b and (b - 48) % n or 0
end

local function bitlen(n)
  local k = 0
  while n > 0 do k, n = k + 1, n >> 1 end
  return k
end

local run_input

local function protocol(input)
  inputs = inputs + 1
  local before = fuzz.fds()
  fuzz.budget(BUDGET)
  local ok, why = xpcall(run_input, debug.traceback, input)
  if fuzz.budget(math.maxinteger) < 0 then
    return "the input ran over its instruction budget (a loop that does not end?)"
  end
  if not ok then return "Lua error: " .. tostring(why) end
  if why then return why end
  local after = fuzz.fds()
  if after ~= before then return format("%d fds open before the input, %d after", before, after) end
end

function run_input(input)
  -- The peer's marks: a string the input cannot know, of a fixed length.
  local secret = format("%08x", (inputs * 2654435761) & 0xffffffff)
  local finding
  local function note(why)
    finding = finding or why
  end

  -- {==================== configuration
  local lines = {}
  for line in (input .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line
    if #lines > MAX_OPS then break end
  end
  local cfg, first = "", 1
  if lines[1] and lines[1]:sub(1, 1) == "#" then cfg, first = lines[1], 2 end
  local function flag(c) return cfg:find(c, 1, true) ~= nil end

  local clock_ms = 0
  local clock = {
    now = function() return clock_ms / 1000 end,
    sleep = function(s)
      if s == nil then error("the main thread waited without a time limit") end
      note(format("the main thread waited %g s on the clock", s))
      clock_ms = clock_ms + math.ceil(s * 1000)
    end,
  }
  local PARK = {}
  local cond = { signal = function() end }
  local waiter = {
    wait = function() yield(PARK) end,
    condition = function() return cond end,
  }
  local opts = { waiter = waiter, clock = clock, timeout = flag("T") and 1 or 10 }
  opts.max_queue = flag("1") and 1 or flag("2") and 2 or flag("3") and 3 or flag("8") and 8 or nil
  if flag("f") then opts.events = { "STOP", "RESUME", "RESET" } elseif flag("F") then opts.events = "S*" end
  if flag("n") then opts.negotiate = false end
  if flag("m") then opts.max_message = 256 end
  if flag("V") then opts.validate = true end
  if flag("t") then
    opts.trace = function(direction, text)
      if (direction ~= "in" and direction ~= "out") or type(text) ~= "string" then
        note(format("trace called with %s, %s", tostring(direction), type(text)))
      end
    end
  end
  -- }====================

  -- Nothing may wait for real: the main thread only calls what cannot wait,
  -- and coroutines park in the waiter.
  core.wait_fd = function(fd, mode, timeout)
    note(format("the client waited in poll() (fd %s, %s, %s s)", tostring(fd), tostring(mode), tostring(timeout)))
    return false
  end
  local fd1, fd2 = fuzz.socketpair()
  local lazy = flag("r")
  if lazy then fuzz.sndbuf(fd1, 1) end   -- the kernel makes it its minimum
  local peer = core.fdopen(fd2)
  local vm = qmp.client({ fd = fd1 }, opts)
  local default_timeout = vm.default_timeout

  -- {==================== reports (vm.on_error)
  local reports = { handler = 0, overflow_handlers = 0, overflow_listeners = 0, malformed = 0, schema = 0 }
  local function check_error(e, where, allowed)
    if not errors.is(e) then return note(format("%s: not an error object: %s", where, tostring(e))) end
    if type(e.kind) ~= "string" or not KINDS[e.kind] then
      return note(format("%s: undocumented kind %s", where, tostring(e.kind)))
    end
    if allowed and not allowed[e.kind] then return note(format("%s: kind %s (%s)", where, e.kind, tostring(e))) end
    if type(e.message) ~= "string" then return note(where .. ": an error without a message") end
    if e.cause ~= nil then check_error(e.cause, where .. " (its cause)") end
  end
  vm.on_error = function(e, v)
    if v ~= vm then note("on_error got another client") end
    check_error(e, "on_error", REPORT_KINDS)
    local m = tostring(e.message)
    if m:find("\n", 1, true) or #m > 1024 then note("a report longer than a line: " .. m:sub(1, 200)) end
    -- (validate may quote an offending value, cut short: README "Logs")
    if m:find(secret, 1, true) and e.kind ~= "schema" then note("a report quotes the peer: " .. m) end
    if e.kind == "handler" then reports.handler = reports.handler + 1
    elseif e.kind == "overflow" then
      if m:find("handlers'", 1, true) then reports.overflow_handlers = reports.overflow_handlers + 1
      else reports.overflow_listeners = reports.overflow_listeners + 1 end
    elseif e.kind == "protocol" and m:find("^dropped an event") then reports.malformed = reports.malformed + 1
    elseif e.kind == "schema" then reports.schema = reports.schema + 1
    end
  end
  -- }====================

  -- {==================== consumers registered first
  local synthetic = 0   -- qmp.connected: made by the client, not counted in stats.events
  -- Events marked by the peer come numbered: each consumer sees them in order.
  local function in_order(ev, last, who)
    local name = rawget(ev, "event")
    if type(name) ~= "string" or name == "" then
      note(format("%s got an event named %s", who, tostring(name)))
      return last, "?"
    end
    local data = rawget(ev, "data")
    if type(data) == "table" and rawget(data, "s") == secret then
      if not peer_event(name) then note(format("%s got the peer's event named %s", who, name)) end
      local n = rawget(data, "n")
      if mathtype(n) ~= "integer" or n <= last then
        note(format("%s got the peer's event %s after %d", who, tostring(n), last))
        return last, name
      end
      return n, name
    end
    return last, name
  end
  local head, head_last, head_events = 0, 0, {}
  vm:on("*", function(ev, v)
    if v ~= vm then note("a handler got another client") end
    local name
    head_last, name = in_order(ev, head_last, "the first handler")
    head = head + 1
    head_events[head] = ev
    if name == "qmp.connected" and getmetatable(ev) ~= qmp.events["qmp.connected"] then
      note("qmp.connected without its type")
    end
  end)
  -- With flag s, a handler between the first and the last stops the loop at
  -- every event: the last must see every event all the same.
  if flag("s") then vm:on("*", function(_, v) v:stop() end) end
  local tail, tail_last = 0, 0
  vm:on("*", function(ev)
    tail_last = in_order(ev, tail_last, "the last handler")
    tail = tail + 1
  end)
  -- Every event pushed, in order: a listener that never overflows.
  local star = vm:listen("*", nil, { max_queue = 1 << 30 })
  local star_taken, star_last, star_events = 0, 0, {}
  local listeners = {}   -- { l =, test =, last =, p0 = #star_events then, got = { ev... } }
  local waited = {}      -- events vm:wait returned
  -- }====================

  -- {==================== the peer
  local out, chunk, closed_peer, written = "", 0, false, 0
  local mirror = core.decoder({ max_message = opts.max_message })   -- what the client was sent
  local seen = {}        -- commands read: { id =, tag = }
  local last_id = 0
  local function flush(all)
    while #out > 0 and not closed_peer do
      local n = (chunk > 0 and not all) and math.min(chunk, #out) or #out
      local off, err = peer:write(out:sub(1, n), 0)
      if not off then  -- the client's end is gone: nothing more reaches it
        if err.kind ~= "closed" then note("peer write: " .. tostring(err)) end
        out = ""
        return
      end
      written = written + off
      mirror:feed(out:sub(1, off))
      out = out:sub(off + 1)
      if off < n or not all then return end
    end
  end
  local function emit(text)
    if not closed_peer then out = out .. text end
  end
  -- The client's socket stays open until vm:close(), even once the
  -- connection is lost (README "The connection"), and closes then.
  local client_closed, tag_names, sent_tags = false, {}, {}
  local function peer_read()
    if closed_peer then return end
    local held = -1   -- bytes of a partial message the peer held after the last take()
    while true do
      local msg, err = peer:take()
      if msg == false then
        -- take() reads once: bytes of a message cut short may come before the EOF
        if not client_closed then return end
        if peer:pending() == held then return note("the client's socket is open after vm:close()") end
        held = peer:pending()
        goto continue
      end
      if msg == nil then
        if err.kind ~= "closed" then note("the client sent what the peer cannot read: " .. tostring(err)) end
        if not client_closed then note("the client's socket closed before vm:close(): " .. tostring(err)) end
        return
      end
      if type(msg) ~= "table" then return note("the client sent a " .. type(msg)) end
      local name, oob = rawget(msg, "execute"), false
      if name == nil then name, oob = rawget(msg, "exec-oob"), true end
      local id = rawget(msg, "id")
      local num = type(id) == "string" and tonumber(id:match("^qmp#(%d+)$"))
      if type(name) ~= "string" or not num then return note("the client sent a malformed command") end
      if num <= last_id then return note(format("the client sent id %s after qmp#%d", id, last_id)) end
      last_id = num
      if written == 0 then return note("the client sent a command before the peer wrote anything") end
      if oob and not vm.oob then return note("the client sent exec-oob without oob") end
      if (name == "qmp_capabilities") ~= (#seen == 0 and opts.negotiate ~= false) then
        return note(format("command %d is %s", #seen + 1, name))
      end
      local args, tag = rawget(msg, "arguments"), "c"
      if type(args) == "table" then
        tag = rawget(args, "tag")
        if tag == nil and type(rawget(args, "command-line")) == "string" then
          tag = tonumber(args["command-line"]:match("#(%d+)$"))
        end
        tag = tag or "c"
      end
      tag = tostring(tag)
      if tag ~= "c" then
        if tag_names[tag] ~= name then note(format("call #%s sent as %s", tag, name)) end
        if sent_tags[tag] then note(format("call #%s sent twice", tag)) end
        sent_tags[tag] = true
      end
      seen[#seen + 1] = { id = id, tag = tag }
      ::continue::
    end
  end
  local function target(d)   -- command d back from the latest read
    local n = #seen
    if n == 0 then return nil end
    return seen[n - d % n]
  end
  local function id_of(d)
    local c = target(d)
    return c and c.id or ("qmp#" .. (d + 1))   -- none read yet: a guess
  end
  local function with_ids(text)
    return (text:gsub("%$(%d)", function(d) return '"' .. id_of(tonumber(d)) .. '"' end))
  end
  local seq = 0
  local peer_ops = {
    [">"] = function(arg) emit(with_ids(arg) .. "\n") end,
    ["+"] = function(arg) emit(with_ids(arg)) end,
    g = function(arg)
      emit('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ['
           .. (arg:find("o", 1, true) and '"oob"' or "") .. "]}}\n")
    end,
    R = function(arg)
      local c = target(pick(arg, 1, 10))
      if c then emit(format('{"return": {"marker": "%s:%s"}, "id": "%s"}\n', secret, c.tag, c.id))
      else emit(format('{"return": {}, "id": "%s"}\n', id_of(pick(arg, 1, 10)))) end
    end,
    E = function(arg)
      local c = target(pick(arg, 1, 10))
      emit(format('{"error": {"class": "GenericError", "desc": "%s:%s"}, "id": "%s"}\n',
                  secret, c and c.tag or "x", id_of(pick(arg, 1, 10))))
    end,
    M = function(arg)
      local id = id_of(pick(arg, 1, 10))
      local r = format('"return": {"marker": "%s:x"}', secret)
      local v = pick(arg, 2, 7)
      if v == 0 then emit(format('{%s, "id": %s}\n', r, id:match("%d+")))
      elseif v == 1 then emit(format('{%s, "id": "%s"}\n', r, id:upper()))
      elseif v == 2 then emit(format('{%s, "id": ["%s"]}\n', r, id))
      elseif v == 3 then emit(format('{%s}\n', r))
      elseif v == 4 then emit(format('{"error": {"class": "GenericError", "desc": "%s:x"}}\n', secret))
      elseif v == 5 then emit(format('{%s, "id": null}\n', r))
      else emit(format('{%s, "id": "%s "}\n', r, id)) end
    end,
    D = function(arg)
      emit(format('{"error": {"class": 5, "desc": "%s:x"}, "id": "%s"}\n', secret, id_of(pick(arg, 1, 10))))
    end,
    v = function(arg)
      seq = seq + 1
      emit(format('{"timestamp": {"seconds": 1795288011, "microseconds": %d}, "event": "%s", '
                  .. '"data": {"s": "%s", "n": %d}}\n', seq % 1000000, EVENTS[pick(arg, 1, #EVENTS) + 1],
                  secret, seq))
    end,
    ["/"] = function(arg) chunk = math.min(tonumber(arg:match("^%d+")) or 0, 65536) end,
    r = function() peer_read() end,
    c = function()
      flush(true)
      peer_read()
      closed_peer = true
      out = ""
      peer:close()
    end,
  }
  -- }====================

  -- {==================== coroutines
  local parked, calls, tags = {}, {}, 0
  local issued = 0          -- commands given to the session (vm ready)

  local function marker(s)  -- the tag in one of the peer's marks, or nil
    if type(s) == "string" and #s > #secret + 1 and s:sub(1, #secret + 1) == secret .. ":" then
      return s:sub(#secret + 2)
    end
  end

  local function check_timeout(rec, e)
    if e and e.kind == "timeout" and rec.timeout then
      local t = rec.timeout == true and default_timeout or rec.timeout
      if clock_ms / 1000 < rec.t0 + t - 1e-9 then
        note(format("%s timed out after %g s, its timeout %g s", rec.what, clock_ms / 1000 - rec.t0, t))
      end
    end
  end

  local function check_event(ev, test, who)
    if type(ev) ~= "table" then return note(format("%s gave a %s", who, type(ev))) end
    local name = rawget(ev, "event")
    if type(name) ~= "string" or name == "" or not test(name) then
      note(format("%s gave an event named %s", who, tostring(name)))
    end
  end

  local finished   -- (rec, ...) the checks of a call's results, by its kind
  finished = {
    command = function(rec, v, e)
      if (v == nil) == (e == nil) then
        return note(format("%s returned %s, %s", rec.what, tostring(v), tostring(e)))
      end
      if e then
        check_error(e, rec.what, COMMAND_KINDS)
        check_timeout(rec, e)
        if not rec.ready and e.kind ~= "closed" then note(rec.what .. " before ready: " .. tostring(e)) end
        if e.kind == "unsupported" and not rec.oob then note(rec.what .. ": unsupported") end
        if e.kind == "qmp" then
          local m = marker(e.desc)
          if m and m ~= "x" and m ~= rec.tag then
            note(format("%s (tag %s) got the error reply to tag %s", rec.what, rec.tag, m))
          end
        end
      else
        if not rec.ready then note(rec.what .. " before ready returned a value") end
        local m = type(v) == "table" and marker(rawget(v, "marker"))
        if m and m ~= rec.tag then
          note(format("%s (tag %s) got the reply marked %s", rec.what, rec.tag, m))
        end
      end
      if not rec.ready and rec.parks > 0 then note(rec.what .. " before ready waited") end
      if rec.oob and rec.ready and not rec.oob_on and not (e and e.kind == "unsupported") then
        note(rec.what .. " without oob: " .. tostring(e))
      end
    end,
    wait = function(rec, v, e)
      if v ~= nil then
        check_event(v, rec.test, rec.what)
        if rec.what:find("^vm:wait") then waited[#waited + 1] = v end
      elseif e == nil then note(rec.what .. " returned nothing")
      else
        check_error(e, rec.what, WAIT_KINDS)
        check_timeout(rec, e)
      end
    end,
    schema = function(rec, v, e)
      if (v == nil) == (e == nil) then return note(format("vm:schema() returned %s, %s", tostring(v), tostring(e))) end
      if e then check_error(e, rec.what, COMMAND_KINDS)
      elseif type(v) ~= "table" or type(v.events) ~= "table" then note("vm:schema() returned " .. tostring(v)) end
    end,
    run = function(rec, v, e)
      if v ~= true and e == nil then return note(rec.what .. " returned " .. tostring(v)) end
      if e then
        check_error(e, rec.what, WAIT_KINDS)
        check_timeout(rec, e)
      end
    end,
  }

  local function step_co(rec)
    local r = table.pack(resume(rec.co))
    if not r[1] then
      note(format("%s raised: %s", rec.what, debug.traceback(rec.co, tostring(r[2]))))
      return
    end
    if status(rec.co) == "dead" then
      rec.done = true
      if verbose then
        local v = r[2]
        if type(v) == "table" and not errors.is(v) then v = core.encode(v, { sort = true }) end
        rec.result = format("%s, %s (parked %d times)", tostring(v), tostring(r[3]), rec.parks)
      end
      finished[rec.check](rec, r[2], r[3])
    else
      rec.parks = rec.parks + 1
      parked[#parked + 1] = rec
    end
  end

  -- A call in a coroutine of its own; more: fields its check needs.
  local function spawn(check, what, fn, timeout, more)
    local rec = { co = create(fn), check = check, what = what, parks = 0, t0 = clock_ms / 1000,
                  timeout = timeout, ready = vm.state == "ready", oob_on = vm.oob }
    for k, v in pairs(more or {}) do rec[k] = v end
    calls[#calls + 1] = rec
    step_co(rec)
    return rec
  end

  local function resume_all()
    local list = parked
    parked = {}
    for _, rec in ipairs(list) do step_co(rec) end
  end

  local function command(kind, name, timeout)
    tags = tags + 1
    local tag = tags
    tag_names[tostring(tag)] = name
    if vm.state == "ready" and not (kind == "oob" and not vm.oob) then issued = issued + 1 end
    local o = timeout ~= nil and { timeout = timeout } or nil
    spawn("command", format("%s %s #%d", kind, name, tag), function()
      if kind == "oob" then return vm:execute_oob(name, { tag = tag }, o) end
      if kind == "hmp" then return vm:hmp("info status #" .. tag, o) end
      if kind == "fds" then
        o = o or {}
        o.fds = { 2 }
        return vm:execute(name, { fdname = "fuzz", tag = tag }, o)
      end
      if kind == "big" then return vm:execute(name, { tag = tag, pad = PAD }, o) end
      return vm:execute(name, { tag = tag }, o)
    end, timeout == nil and true or timeout, { tag = tostring(tag), oob = kind == "oob" })
  end
  -- }====================

  -- {==================== handlers and timers
  local raised = 0
  local subs = {}
  local function handler(kind, test, who, self)
    local calls_made = 0
    return function(ev, v)
      calls_made = calls_made + 1
      check_event(ev, test, who)
      if kind == 1 then
        raised = raised + 1
        error("a handler raised on purpose")
      elseif kind == 2 then v:stop()
      elseif (kind == 3 or kind == 4) and calls_made > 1 then note(who .. " ran twice")
      elseif kind == 4 then self.sub:off()
      elseif kind == 5 then
        if v.state == "ready" then issued = issued + 1 end
        local r, e = v:execute("query-status", nil, { timeout = 0 })
        if r ~= nil or e == nil then note("execute with timeout 0 returned " .. tostring(r)) end
        if e then check_error(e, "execute in a handler", WAIT_KINDS) end
      elseif kind == 6 then
        subs[#subs + 1] = v:on("*", function(e2) check_event(e2, FILTERS[1].test, "an added handler") end)
      elseif kind == 7 then
        client_closed = true
        v:close()
      end
    end
  end
  local function timer(kind)
    return function(v)
      if v ~= vm then note("a timer got another client") end
      if kind == 1 then
        raised = raised + 1
        error("a timer raised on purpose")
      elseif kind == 2 then v:stop()
      elseif kind == 3 then
        client_closed = true
        v:close()
      end
    end
  end
  -- }====================

  local function take_listeners()
    while true do
      local ev = star:next()
      if ev == nil then break end
      star_taken = star_taken + 1
      star_events[star_taken] = ev
      star_last = in_order(ev, star_last, "the first listener")
    end
    for _, x in ipairs(listeners) do
      while true do
        local ev = x.l:next()
        if ev == nil then break end
        check_event(ev, x.test, "a listener")
        x.last = in_order(ev, x.last, "a listener")
        x.got[#x.got + 1] = ev
      end
    end
  end

  local client_ops = {
    x = function(arg) local name = CMDS[pick(arg, 1, #CMDS) + 1]; command("execute", name, TIMEOUTS[arg:sub(2, 2)]) end,
    X = function(arg) command("big", CMDS[pick(arg, 1, #CMDS) + 1], TIMEOUTS[arg:sub(2, 2)]) end,
    o = function(arg) command("oob", CMDS[pick(arg, 1, #CMDS) + 1], TIMEOUTS[arg:sub(2, 2)]) end,
    q = function(arg) command("execute", "quit", TIMEOUTS[arg:sub(1, 1)]) end,
    h = function(arg) command("hmp", "human-monitor-command", TIMEOUTS[arg:sub(1, 1)]) end,
    f = function(arg) command("fds", "getfd", TIMEOUTS[arg:sub(1, 1)]) end,
    w = function(arg)
      local f = FILTERS[pick(arg, 1, #FILTERS) + 1]
      local t = TIMEOUTS[arg:sub(2, 2)]
      spawn("wait", "vm:wait", function() return vm:wait(f.f, t) end, t == nil and true or t, { test = f.test })
    end,
    W = function(arg)
      local f = FILTERS[pick(arg, 1, #FILTERS) + 1]
      local rec = { what = "vm:wait (0 s)", test = f.test, t0 = clock_ms / 1000, timeout = 0 }
      finished.wait(rec, vm:wait(f.f, 0))
    end,
    l = function(arg)
      local f = FILTERS[pick(arg, 1, #FILTERS) + 1]
      local l = vm:listen(f.f, nil, { max_queue = LISTEN_QUEUES[pick(arg, 2, #LISTEN_QUEUES) + 1] })
      listeners[#listeners + 1] = { l = l, test = f.test, last = 0, p0 = star_taken + star:size(), got = {} }
    end,
    n = take_listeners,
    a = function(arg)
      local x = listeners[#listeners]
      if not x then return end
      local t = TIMEOUTS[arg:sub(1, 1)]
      spawn("wait", "l:wait", function()
        local ev, e = x.l:wait(t)
        if ev then
          x.last = in_order(ev, x.last, "a listener")
          x.got[#x.got + 1] = ev
        end
        return ev, e
      end, t == nil and true or t, { test = x.test })
    end,
    k = function(arg)
      local f = FILTERS[pick(arg, 1, #FILTERS) + 1]
      local kind = pick(arg, 2, 8)
      local self = {}
      local fn = handler(kind, f.test, "handler kind " .. kind, self)
      self.sub = kind == 3 and vm:once(f.f, fn) or vm:on(f.f, fn)
      subs[#subs + 1] = self.sub
    end,
    K = function() if subs[#subs] then subs[#subs]:off() end end,
    s = function()
      local ok, e = vm:step()
      if ok ~= true then
        if e == nil then note("vm:step returned " .. tostring(ok)) else check_error(e, "vm:step", { closed = true }) end
      end
    end,
    p = function(arg)
      local t = TIMEOUTS[arg:sub(1, 1)]
      if t == 0 then
        finished.run({ what = "vm:run (0 s)", t0 = clock_ms / 1000, timeout = 0 }, vm:run{ timeout = 0 })
      else
        spawn("run", "vm:run", function() return vm:run{ timeout = t } end, t)
      end
    end,
    S = function() vm:stop() end,
    z = function(arg) vm:after(pick(arg, 2, 2) / 1000, timer(pick(arg, 1, 4))) end,
    C = function()
      client_closed = true
      vm:close()
    end,
    ["?"] = function()
      local fd, ev, t = vm:pollfd(), vm:events(), vm:timeout()
      if mathtype(fd) ~= "integer" or fd ~= (client_closed and -1 or fd1) or vm:fileno() ~= fd then
        note("vm:pollfd() is " .. tostring(fd))
      end
      if ev ~= "r" and ev ~= "w" and ev ~= "rw" then note("vm:events() is " .. tostring(ev)) end
      if t ~= nil and (type(t) ~= "number" or t < 0 or t ~= t) then note("vm:timeout() is " .. tostring(t)) end
    end,
    u = resume_all,
    y = function()
      if vm.state == "ready" then issued = issued + 1 end   -- (at most: it is read once)
      spawn("schema", "vm:schema()", function() return vm:schema() end, true)
    end,
    t = function(arg)
      clock_ms = clock_ms + math.min(tonumber(arg:match("^%d+")) or 1, 1000000)
      resume_all()
    end,
  }

  local function check_state(where)
    if not STATES[vm.state] then note(format("%s: vm.state is %s", where, tostring(vm.state))) end
    if vm.state == "ready" then
      local g = vm.greeting
      if type(g) ~= "table" or type(rawget(g, "QMP")) ~= "table" then note(where .. ": ready without a greeting") end
    end
    if vm.oob then
      local caps = vm.greeting and type(vm.greeting.QMP) == "table" and vm.greeting.QMP.capabilities
      local offered = false
      for _, c in ipairs(type(caps) == "table" and caps or {}) do offered = offered or c == "oob" end
      if not offered then note(where .. ": oob without the greeting offering it") end
    end
    for _, k in ipairs(STATS) do
      local n = vm.stats[k]
      if mathtype(n) ~= "integer" or n < 0 then note(format("%s: stats.%s is %s", where, k, tostring(n))) end
    end
  end

  -- {==================== the script
  for i = first, #lines do
    local line = lines[i]
    local op, arg = line:sub(1, 1), line:sub(2)
    local fn = peer_ops[op] or client_ops[op]
    if fn then
      local ok, why = xpcall(fn, debug.traceback, arg)
      if not ok then note(format("line %d (%s): %s", i, op, tostring(why))) end
      flush(false)   -- at most a chunk per operation: the client's steps come between
      if not lazy then peer_read() end
      check_state(format("line %d (%s)", i, op))
    end
    if finding then break end
  end
  if vm.state == "ready" then synthetic = 1 end
  -- }====================

  -- {==================== the end: EOF, then every call must end
  local rounds = 0
  while #out > 0 and not closed_peer and not finding and rounds < FINAL_ROUNDS do
    flush(true)
    vm:step()
    peer_read()
    rounds = rounds + 1
  end
  if not closed_peer then peer_ops.c() end
  local last_ok, last_err
  rounds = 0
  while not finding do
    last_ok, last_err = vm:step()
    resume_all()
    if last_ok == nil and #parked == 0 then break end
    rounds = rounds + 1
    if rounds > FINAL_ROUNDS then
      local what = {}
      for _, rec in ipairs(parked) do what[#what + 1] = rec.what end
      note(format("after the peer's EOF: state %s, still waiting: %s", vm.state, table.concat(what, ", ")))
    end
  end
  take_listeners()
  if finding then return finding end
  check_state("the end")
  check_error(last_err, "vm:step at the end", { closed = true })
  if vm.state ~= "closed" then note("the end: vm.state is " .. vm.state) end
  -- }====================

  -- {==================== accounting
  local st = vm.stats
  if vm.generation >= 1 then synthetic = 1 end
  local pushed = st.events - st.skipped + synthetic
  if head ~= tail then
    note(format("the first handler ran %d times, the last %d (stats: %d events, %d skipped, %d overflow)",
                head, tail, st.events, st.skipped, st.overflow))
  end
  if head + st.overflow ~= pushed then
    note(format("%d events handled + %d overflow, %d received - %d skipped + %d synthetic",
                head, st.overflow, st.events, st.skipped, synthetic))
  end
  if star_taken + star.dropped ~= pushed or star.dropped ~= 0 then
    note(format("the first listener: %d taken + %d dropped, %d pushed", star_taken, star.dropped, pushed))
  end
  -- Every consumer got the events pushed, the same objects in the same
  -- order, less those it dropped (the handlers' overflow, a listener's).
  local function follows(got, all, from, test, dropped, who)
    local j = from + 1
    for i, ev in ipairs(got) do
      while all[j] and (all[j] ~= ev) do
        if dropped == 0 and test(rawget(all[j], "event")) then
          return note(format("%s's event %d is not the %d-th pushed", who, i, j))
        end
        j = j + 1
      end
      if not all[j] then return note(format("%s got an event %d that was not pushed after it began", who, i)) end
      j = j + 1
    end
    local expected = 0
    for k = from + 1, #all do
      if test(rawget(all[k], "event")) then expected = expected + 1 end
    end
    if #got + dropped ~= expected then
      note(format("%s got %d + %d dropped of %d events", who, #got, dropped, expected))
    end
  end
  follows(head_events, star_events, 0, FILTERS[1].test, st.overflow, "the first handler")
  for i, x in ipairs(listeners) do
    follows(x.got, star_events, x.p0, x.test, x.l.dropped, "listener " .. i)
  end
  local pushed_set, returned = {}, {}
  for _, ev in ipairs(star_events) do pushed_set[ev] = true end
  for _, ev in ipairs(waited) do
    if not pushed_set[ev] then note("vm:wait returned an event never pushed") end
    if returned[ev] then note("vm:wait returned an event twice") end
    returned[ev] = true
  end
  -- A clean EOF: the client read all the peer wrote, so each message is in
  -- the stats: events (or malformed ones), the greeting, the replies
  -- (matched, stale or unknown).
  local m = last_err and last_err.message or ""
  if m == "connection closed by the peer" or m:find("^connection closed by the peer inside a message") then
    local ev_n, bad_n, reply_n, greeted = 0, 0, 0, false
    while true do
      local msg, e = mirror:next()
      if e then note("the client ended at EOF, but the stream broke before: " .. tostring(e)) break end
      if msg == nil then break end
      local name = type(msg) == "table" and rawget(msg, "event")
      if name ~= nil then
        if peer_event(name) then ev_n = ev_n + 1 else bad_n = bad_n + 1 end
      elseif not greeted then greeted = true
      else reply_n = reply_n + 1 end
    end
    if st.events ~= ev_n or st.malformed ~= bad_n or st.replies + st.stale + st.unknown ~= reply_n then
      note(format("sent %d events, %d malformed, %d replies; stats: %d events, %d malformed, "
                  .. "%d replies + %d stale + %d unknown", ev_n, bad_n, reply_n, st.events, st.malformed,
                  st.replies, st.stale, st.unknown))
    end
  end
  if st.handler_errors ~= raised or reports.handler ~= raised then
    note(format("%d handlers and timers raised; handler_errors %d, reported %d", raised, st.handler_errors,
                reports.handler))
  end
  if reports.malformed ~= st.malformed then
    note(format("%d malformed events, %d reported", st.malformed, reports.malformed))
  end
  if reports.overflow_handlers ~= bitlen(st.overflow) then
    note(format("%d overflows of the handlers' queue, %d reports", st.overflow, reports.overflow_handlers))
  end
  local listener_reports = bitlen(star.dropped)
  for _, x in ipairs(listeners) do listener_reports = listener_reports + bitlen(x.l.dropped) end
  if reports.overflow_listeners ~= listener_reports then
    note(format("%d reports of listeners' overflows, %d expected", reports.overflow_listeners, listener_reports))
  end
  local negotiation = (opts.negotiate == false and 0 or 1) + (opts.validate and 1 or 0)
  if reports.schema ~= st.invalid then note(format("%d invalid events, %d reported", st.invalid, reports.schema)) end
  if st.replies > issued + negotiation then
    note(format("%d replies to %d commands", st.replies, issued + negotiation))
  end
  for _, rec in ipairs(calls) do
    if not rec.done then note(rec.what .. " never ended") end
  end
  -- }====================

  if verbose then
    local e = io.stderr
    e:write(format("state %s (%s), generation %d, oob %s, %d commands read by the peer, %d bytes written\n",
                   vm.state, tostring(last_err), vm.generation, tostring(vm.oob), #seen, written))
    for _, k in ipairs(STATS) do e:write(format("  stats.%s = %d\n", k, st[k])) end
    e:write(format("  handlers: first %d, last %d; listener %d + %d dropped; raised %d\n",
                   head, tail, star_taken, star.dropped, raised))
    for _, rec in ipairs(calls) do
      e:write(format("  %s: %s\n", rec.what, rec.result or "?"))
    end
  end
  star:close()
  vm:close()
  if not closed_peer then peer:close() end
  return finding
end

return { protocol = protocol }
