--- qmp.replay(source [, opts]): a client that plays a recording (see
-- qmp.record for the format) instead of talking to QEMU, so a policy or a
-- script can be tested offline against what a real QEMU did.
--   local vm = assert(qmp.replay("spec/fixtures/io-error.qmprec"))
--   local p = qmp.policy.resume_on_io_error(vm, { retries = 2, delay = 0.05 })
--   assert(vm:execute("cont"))   -- the recording goes on from the cont its operator sent
--   print(vm:run())              --> nil   closed: end of the recording (...)
--
-- The replay is a qmp client (qmp.Client) whose connection is a player
-- instead of a socket ({ conn = player }) and whose clock is the
-- replay's (opts.clock).  on, once, listen, wait, run, step, after, stop,
-- execute, execute_oob, hmp, stats and commands_sent behave as with QEMU.
--
-- How a recording plays:
-- * QEMU's messages come in the recorded order, each at its recorded time.
-- * The recorded commands are checkpoints: what follows one in the
--   recording comes only once this client has sent a command of that name
--   (in the recording's order), and as long after it as it came live; the
--   recorded reply answers it.  A client that acts later, or not at all,
--   never sees what QEMU did in answer to a command it has not sent.
-- * opts.respond(name, args), when given, is asked first for every command:
--   a value answers it, (nil, err) answers with an error (err: a string or
--   { class =, desc = }), nothing leaves it to the recording.
-- * A command that is not the recording's next is answered from the
--   recording (the reply to the last command of that name played so far,
--   else to the first still ahead); when the recording holds no reply of
--   that name, query-status and cont get an implied answer (below), any
--   other command a GenericError.  It is listed in vm.recording.unmatched.
-- * Implied answers, for a recording that lacks them (a passive recorder,
--   `qmp-lua record`, sends no command): query-status gets { status,
--   running } from the run state the messages played so far imply, as QEMU
--   7.2 names it: STOP -> "paused", or "io-error" / "guest-panicked" /
--   "watchdog" / "shutdown" when a BLOCK_IO_ERROR (action stop) /
--   GUEST_PANICKED (pause) / WATCHDOG (pause) / SHUTDOWN came before it;
--   RESUME, WAKEUP -> "running"; SUSPEND -> "suspended"; RESET of a VM not
--   running -> "prelaunch"; a recorded query-status reply -> what it says.
--   Before any of these it is "running", unless the recording's first word
--   on it is a RESUME ("paused": stopped, QEMU does not say how), a WAKEUP
--   ("suspended") or a query-status reply.  Other states (migration, ...)
--   are not inferred.  cont gets QEMU's answer in that state ({}, or the
--   GenericError of a VM that needs a reset) and changes nothing: the
--   replay cannot make QEMU do what it did not, so a recorded RESUME comes
--   in its own time.  Each is listed in vm.recording.implied.
-- * The end of the recording closes the client (kind closed).  When the
--   recording waits for a command this client has not sent and the client
--   waits without a time limit, the replay ends (kind closed, "replay
--   stalled: ...", naming the command).
-- * opts.speed: "fast" (default) waits for nothing real: recorded gaps,
--   timers (vm:after, a policy's delays) and timeouts pass on a virtual
--   clock, in the order they would live.  "recorded": in real time.
-- A replay is driven by its own run, wait, execute and listeners' waits,
-- which wait on its clock.  vm:step() and vm:timeout() work on that clock
-- too (in fast mode a step first moves the clock on to the next thing due:
-- the clock has advance, see opts.clock), so a replay can join a qmp.loop,
-- which waits in real time.
--
-- vm.recording tells how the replay goes: name and started (from the
-- recording's first line), passive (it holds no command but the
-- handshake), unmatched (the commands answered out of the recording's
-- order: { name =, args =, t =, from = "respond" | "recording" | "implied"
-- | "none" }), implied (the answers made up: { name =, args =, t =, id =,
-- reply =, why = }, reply as QEMU's message without its id, why: what it
-- was inferred from), ended (the end was played), now() (seconds on the
-- replay's clock, from the start of the recording) and expected() (the
-- recorded command the replay waits for: name, line).
local core = require "qmp.core"
local errors = require "qmp.errors"
local Client = require "qmp.client"

local type, tostring, ipairs, setmetatable = type, tostring, ipairs, setmetatable
local decode, encode, huge, min = core.decode, core.encode, math.huge, math.min

-- A fresh copy of a message, decoded as from a socket (events get their type).
local function copy(msg)
  return assert(decode(encode(msg)))
end

-- {==================== reading a recording

local function read_lines(source)
  if type(source) == "table" then return source, "recording" end
  if type(source) ~= "string" then errors.raise("qmp.replay: expected a path or a list of lines") end
  local f, why = io.open(source)
  if not f then return nil, errors.new("io", "cannot replay " .. why) end
  local lines = {}
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  return lines, source
end

-- The recording as items { t, dir, msg, line } in order, ending with an
-- "end" item; the commands among them (outs), and per command name those
-- that got a reply (for answering commands out of order).
local function load(source)
  local lines, label = read_lines(source)
  if not lines then return nil, label end
  local function bad(n, why)
    return nil, errors.new("protocol", ("%s:%d: %s"):format(label, n, why))
  end
  local header = lines[1] and decode(lines[1])
  if type(header) ~= "table" or math.type(header["qmp-recording"]) ~= "integer" then
    return bad(1, "not a qmp recording (it starts with {\"qmp-recording\":1,...})")
  end
  if header["qmp-recording"] > 1 then
    return bad(1, "a recording of a later format, version " .. header["qmp-recording"])
  end
  local items, outs, by_id = {}, {}, {}
  for n = 2, #lines do
    local text = lines[n]
    if text:find("%S") then
      local line, err = decode(text)
      if not line then return bad(n, err.message) end
      local dir, t, msg = line.dir, line.t, line.msg
      if (dir ~= "in" and dir ~= "out" and dir ~= "end") or type(t) ~= "number" or type(msg) ~= "table" then
        return bad(n, 'not a recording line ({"t": seconds, "dir": "in" | "out" | "end", "msg": {...}})')
      end
      local it = { t = t, dir = dir, msg = msg, line = n }
      items[#items + 1] = it
      if dir == "end" then break end
      if dir == "out" then
        it.name = msg.execute or msg["exec-oob"]
        if type(it.name) ~= "string" then return bad(n, "a command without a name") end
        outs[#outs + 1], it.k = it, #outs + 1
        if msg.id ~= nil then by_id[msg.id] = it end
      elseif msg.event == nil and msg.id ~= nil then
        local out = by_id[msg.id]
        if out and not out.reply then out.reply, it.reply_to = it, out end
      end
    end
  end
  local last = items[#items]
  if not last or last.dir ~= "end" then  -- the recorder was cut short
    items[#items + 1] = { t = last and last.t or 0, dir = "end", line = #lines + 1,
                          msg = { reason = "the recording stops here (it has no end line)" } }
  end
  local answered = {}
  for _, out in ipairs(outs) do
    if out.reply then
      local list = answered[out.name] or {}
      list[#list + 1] = out
      answered[out.name] = list
    end
  end
  local passive = true   -- no command but the handshake: a recorder that only listened
  for _, out in ipairs(outs) do
    if out.name ~= "qmp_capabilities" then passive = false end
  end
  return { items = items, outs = outs, answered = answered, label = label, passive = passive,
           name = type(header.name) == "string" and header.name or nil,
           started = type(header.started) == "string" and header.started or nil }
end

-- }==================== reading a recording

-- {==================== the run state the recorded events imply

-- A passive recorder (`qmp-lua record`) holds QEMU's events but no reply to
-- the commands a policy sends; the status those events imply answers
-- query-status instead, as QEMU 7.2 would (qapi/run-state.json's names).
-- An event that names why the VM stops comes before its STOP: the STOP
-- then gives that status rather than "paused".
local STOP_CAUSES = {
  BLOCK_IO_ERROR = function(data) return data.action == "stop" and "io-error" end,
  GUEST_PANICKED = function(data) return data.action == "pause" and "guest-panicked" end,
  WATCHDOG = function(data) return data.action == "pause" and "watchdog" end,
  SHUTDOWN = function() return "shutdown" end,   -- with -no-shutdown a STOP follows; else QEMU quits
}

-- States in which QEMU 7.2 refuses cont (runstate_needs_reset).
local NEEDS_RESET = { shutdown = true, ["guest-panicked"] = true, ["internal-error"] = true }

local function stamp(t) return ("%.3f s"):format(t) end

-- The status before the first thing played: "running", unless the
-- recording's first word on it says otherwise (a RESUME or WAKEUP first:
-- the VM was stopped; a recorded query-status reply: what it says).
local function initial_state(items)
  for _, it in ipairs(items) do
    local msg = it.msg
    local name = it.dir == "in" and msg.event
    if name == "RESUME" then
      return { status = "paused", why = "assumed: the recording's first run-state event is a RESUME" }
    elseif name == "WAKEUP" then
      return { status = "suspended", why = "assumed: the recording's first run-state event is a WAKEUP" }
    elseif name == "STOP" or name == "SUSPEND" then
      break
    elseif it.reply_to and it.reply_to.name == "query-status" and type(msg["return"]) == "table"
        and type(msg["return"].status) == "string" then
      return { status = msg["return"].status, why = "the recording's first query-status reply" }
    end
  end
  return { status = "running", why = "assumed: no recorded event says otherwise" }
end

-- The recording's answer when it holds none: the status the events played
-- so far imply, and QEMU's answer to cont in that status.  Each returns the
-- reply (without id) and why.  cont changes nothing: the replay cannot make
-- QEMU do what it did not, so a recorded RESUME comes in its own time.
local IMPLIED = {
  ["query-status"] = function(run)
    return { ["return"] = { status = run.status, running = run.status == "running" } }, run.why
  end,
  cont = function(run)
    local why = ('not recorded: QEMU\'s answer in status "%s"; the recording goes on as it was'):format(run.status)
    if NEEDS_RESET[run.status] then
      return { error = { class = "GenericError", desc = "Resetting the Virtual Machine is required" } }, why
    end
    return { ["return"] = {} }, why
  end,
}

-- The run state after one played message from QEMU (at: when, on the
-- replay's clock): run = { status, why, cause }.
local function observe(run, msg, reply_to, at)
  local name = msg.event
  if type(name) ~= "string" then   -- a reply: a recorded query-status is a fact
    local ret = msg["return"]
    if reply_to and reply_to.name == "query-status" and type(ret) == "table" and type(ret.status) == "string" then
      run.status, run.why = ret.status, "the recorded query-status reply at " .. stamp(at)
    end
    return
  end
  local data = type(msg.data) == "table" and msg.data or {}
  local cause = STOP_CAUSES[name] and STOP_CAUSES[name](data)
  if cause then
    run.cause = { status = cause, why = ("after the %s at %s"):format(name, stamp(at)) }
  elseif name == "STOP" then
    local c = run.cause
    run.status = c and c.status or "paused"
    run.why = ("the STOP at %s"):format(stamp(at)) .. (c and (", " .. c.why) or "")
    run.cause = nil
  elseif name == "RESUME" or name == "WAKEUP" then
    run.status, run.why, run.cause = "running", ("the %s at %s"):format(name, stamp(at)), nil
  elseif name == "SUSPEND" then
    run.status, run.why = "suspended", "the SUSPEND at " .. stamp(at)
  elseif name == "RESET" and run.status ~= "running" and run.status ~= "inmigrate"
      and run.status ~= "finish-migrate" then   -- QEMU 7.2: a reset of a stopped VM leaves it in prelaunch
    run.status, run.why = "prelaunch", ("the RESET at %s of a VM not running"):format(stamp(at))
  end
end

-- }==================== the run state

-- {==================== the clock

local function new_clock(speed)
  if speed == "recorded" then
    local start = core.monotime()
    return { now = function() return core.monotime() - start end, sleep = core.sleep }
  end
  local now = 0
  return { now = function() return now end, sleep = function(seconds) now = now + seconds end }
end

-- }==================== the clock

-- {==================== the player: the session's connection

local Player = {}
Player.__index = Player

local function new_player(rec, clock, respond, info)
  return setmetatable({
    _items = rec.items, _outs = rec.outs, _answered = rec.answered,
    _clock = clock, _respond = respond, _info = info,
    _i = 1,          -- the next item to play
    _next_out = 1,   -- the next recorded command expected (outs are played in order)
    _shift = 0,      -- replay time - recorded time, set by the last command played
    _replies = {},   -- answers made when a command was sent: { at =, msg = | implied = entry }
    _run = initial_state(rec.items),   -- the run state the messages played so far imply
    _error = nil,    -- the end: what take() returns from now on
  }, Player)
end

-- The next item to play, past the commands this client has sent: each
-- moves the schedule to when it was really sent.
function Player:_peek()
  local items = self._items
  while true do
    local it = items[self._i]
    if it.dir ~= "out" or not it.sent_at then return it end
    self._shift = it.sent_at - it.t
    self._i = self._i + 1
  end
end

function Player:_due(it)
  return it.t + self._shift
end

-- The next item, if it is due now.
function Player:_ready()
  local it = self:_peek()
  if it.dir ~= "out" and self:_due(it) <= self._clock.now() then return it end
end

--- conn:buffered(): take() has something now.
function Player:buffered()
  return self._error ~= nil or self._replies[1] ~= nil or self:_ready() ~= nil
end

--- Seconds until take() has something; nil while waiting for a command.
function Player:due_in()
  if self:buffered() then return 0 end
  local it = self:_peek()
  if it.dir ~= "out" then return self:_due(it) - self._clock.now() end
end

--- conn:drain(limit): the messages due now, at most limit, as a list, 0
-- skipped (a replay decodes every event; the client filters) and the end's
-- error once it is played.
function Player:drain(limit)
  local list = {}
  while #list < limit do
    local msg, err = self:take()
    if not msg then return list, 0, msg == nil and err or nil end
    list[#list + 1] = msg
  end
  return list, 0
end

--- conn:take(): the next message | false (none now) | nil, err (the end).
function Player:take()
  while not self._error do
    local it, reply = self:_ready(), self._replies[1]
    if reply and not (it and self:_due(it) <= reply.at) then  -- what was due before the command goes first
      table.remove(self._replies, 1)
      return reply.msg or self:_imply(reply.implied)
    end
    if not it then return false end
    self._i = self._i + 1
    if it.dir == "end" then
      self._info.ended = true
      self._error = errors.new("closed", "end of the recording: " .. tostring(it.msg.reason))
    else
      observe(self._run, it.msg, it.reply_to, self:_due(it))
      local out = it.reply_to
      if not (out and out.answered) then   -- else opts.respond answered its command
        local msg = copy(it.msg)
        if out then msg.id = out.new_id end
        return msg
      end
    end
  end
  return nil, self._error
end

-- The recording's answer to a command it did not expect here: the reply
-- to the last command of that name played so far, else the first ahead;
-- nil when it holds no reply to that name.
function Player:_recorded_answer(name, id)
  local pick
  for _, out in ipairs(self._answered[name] or {}) do
    if out.k < self._next_out or not pick then pick = out end
    if out.k >= self._next_out then break end
  end
  if not pick then return nil end
  local msg = copy(pick.reply.msg)
  msg.id = id
  return msg
end

-- An implied answer, made when it is taken (so from every message due
-- before the command), and listed in vm.recording.implied.
function Player:_imply(entry)
  local reply, why = IMPLIED[entry.name](self._run)
  entry.reply, entry.why = reply, why
  local list = self._info.implied
  list[#list + 1] = entry
  local msg = copy(reply)
  msg.id = entry.id
  return msg
end

function Player:_responded(name, args, id)
  if not self._respond then return nil end
  local value, err = self._respond(name, args)
  if value ~= nil then return copy({ ["return"] = value, id = id }) end
  if err == nil then return nil end
  if type(err) ~= "table" then err = { desc = tostring(err) } end
  return { error = { class = err.class or "GenericError", desc = err.desc or err.message or tostring(err) }, id = id }
end

-- The answer to a command the recording does not expect here, and where
-- it came from: the recording, else an implied answer, else an error.
function Player:_unexpected(name, args, id, now)
  local msg = self:_recorded_answer(name, id)
  if msg then return { at = now, msg = msg }, "recording" end
  if IMPLIED[name] then return { at = now, implied = { name = name, args = args, t = now, id = id } }, "implied" end
  local err = { class = "GenericError", desc = "replay: no reply recorded for this command" }
  return { at = now, msg = { error = err, id = id } }, "none"
end

--- conn:write(text, off, fds): a command from the session; all taken at once.
function Player:write(text)
  local cmd = assert(decode(text))
  local name, args, id, now = cmd.execute or cmd["exec-oob"], cmd.arguments, cmd.id, self._clock.now()
  local out = self._outs[self._next_out]
  local expected = out ~= nil and out.name == name
  if expected then
    out.sent_at, out.new_id = now, id
    self._next_out = self._next_out + 1
  end
  local msg, from = self:_responded(name, args, id), "respond"
  local reply = msg and { at = now, msg = msg }
  if reply and expected then out.answered = true end
  if not reply and not expected then reply, from = self:_unexpected(name, args, id, now) end
  if not expected then
    local unmatched = self._info.unmatched
    unmatched[#unmatched + 1] = { name = name, args = args, t = now, from = from }
  end
  if reply then self._replies[#self._replies + 1] = reply end
  return #text
end

--- The client waits (timeout seconds; nil: no limit): until then, or until
-- the next message is due.  Waiting for ever for a command is a stall.
function Player:idle(timeout)
  local t = min(timeout or huge, self:due_in() or huge)
  if t == huge then
    local out = self._outs[self._next_out]
    self._error = errors.new("closed", ("replay stalled: the recording goes on after the command %s "
      .. "(line %d), which this client has not sent"):format(out.name, out.line))
  elseif t > 0 then
    self._clock.sleep(t)
  end
end

--- The recorded command the replay waits for next: name, line | nil.
function Player:expected()
  local out = self._outs[self._next_out]
  if out then return out.name, out.line end
end

function Player.fileno() return -1 end
function Player.finish_connect() return true end
function Player.peercred() return nil, errors.new("unsupported", "a replay has no peer") end
function Player.close() end

-- }==================== the player

-- {==================== a client over the player, on the clock

-- A replay's client waits on the player: a wait with no fd is the clock's
-- sleep, and the player turns "sleep for ever" into the stall it is.  In
-- fast mode waiting costs nothing: the clock's advance lets a step move it
-- on to the next thing due.
local function player_clock(clock, player, speed)
  return { now = clock.now, sleep = function(seconds) player:idle(seconds) end,
           advance = speed == "fast" and clock.sleep or nil }
end

-- }==================== a client over the player

local OPTIONS = { speed = true, respond = true, name = true, timeout = true, max_queue = true,
                  events = true, trace = true }

--- qmp.replay(source [, opts]) -> vm | nil, err.  source: a recording's
-- path, or its lines (a list of strings).  opts: speed ("fast" |
-- "recorded"), respond(name, args), and the client's name, timeout,
-- max_queue, events, trace.
return function(source, opts)
  opts = errors.check_options("qmp.replay", opts, OPTIONS)
  local speed = opts.speed or "fast"
  if speed ~= "fast" and speed ~= "recorded" then errors.raise('qmp.replay: speed must be "fast" or "recorded"') end
  if opts.respond ~= nil and type(opts.respond) ~= "function" then
    errors.raise("qmp.replay: respond must be a function(name, args)")
  end
  local rec, err = load(source)
  if not rec then return nil, err end
  local clock = new_clock(speed)
  local info = { name = rec.name, started = rec.started, passive = rec.passive, unmatched = {}, implied = {},
                 ended = false, now = function() return clock.now() end }
  local player = new_player(rec, clock, opts.respond, info)
  function info.expected() return player:expected() end
  local name = opts.name or rec.name or rec.label
  local vm
  vm, err = Client.connect({ conn = player, name = name }, {
    name = name, timeout = opts.timeout, max_queue = opts.max_queue, events = opts.events, trace = opts.trace,
    clock = player_clock(clock, player, speed),
    negotiate = rec.outs[1] ~= nil and rec.outs[1].name == "qmp_capabilities" })
  if not vm then return nil, err end
  vm.recording = info
  return vm
end
