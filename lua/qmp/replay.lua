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
--   else to the first still ahead), else with a GenericError, and is listed
--   in vm.recording.unmatched.
-- * The end of the recording closes the client (kind closed).  When the
--   recording waits for a command this client has not sent and the client
--   waits without a time limit, the replay ends (kind closed, "replay
--   stalled: ...", naming the command).
-- * opts.speed: "fast" (default) waits for nothing real: recorded gaps,
--   timers (vm:after, a policy's delays) and timeouts pass on a virtual
--   clock, in the order they would live.  "recorded": in real time.
-- A replay is driven by its own run, wait, execute and listeners' waits,
-- which wait on its clock.  vm:step() and vm:timeout() work on that clock
-- too (in fast mode a step first moves the clock on to the next thing due),
-- so a replay can join a qmp.loop, which waits in real time.
--
-- vm.recording tells how the replay goes: name and started (from the
-- recording's first line), unmatched (the commands answered out of the
-- recording's order: { name =, args =, t = }), ended (the end was played),
-- now() (seconds on the replay's clock, from the start of the recording)
-- and expected() (the recorded command the replay waits for: name, line).
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
  return { items = items, outs = outs, answered = answered, label = label,
           name = type(header.name) == "string" and header.name or nil,
           started = type(header.started) == "string" and header.started or nil }
end

-- }==================== reading a recording

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
    _replies = {},   -- answers made when a command was sent: { at =, msg = }
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
      return reply.msg
    end
    if not it then return false end
    self._i = self._i + 1
    if it.dir == "end" then
      self._info.ended = true
      self._error = errors.new("closed", "end of the recording: " .. tostring(it.msg.reason))
    else
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
-- to the last command of that name played so far, else the first ahead.
function Player:_recorded_answer(name, id)
  local pick
  for _, out in ipairs(self._answered[name] or {}) do
    if out.k < self._next_out or not pick then pick = out end
    if out.k >= self._next_out then break end
  end
  local msg = pick and copy(pick.reply.msg)
    or { error = { class = "GenericError", desc = "replay: the recording has no reply to " .. name } }
  msg.id = id
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

--- conn:write(text, off, fds): a command from the session; all taken at once.
function Player:write(text)
  local msg = assert(decode(text))
  local name, args, id, now = msg.execute or msg["exec-oob"], msg.arguments, msg.id, self._clock.now()
  local out = self._outs[self._next_out]
  local expected = out ~= nil and out.name == name
  if expected then
    out.sent_at, out.new_id = now, id
    self._next_out = self._next_out + 1
  else
    local unmatched = self._info.unmatched
    unmatched[#unmatched + 1] = { name = name, args = args, t = now }
  end
  local reply = self:_responded(name, args, id)
  if reply and expected then out.answered = true end
  if not reply and not expected then reply = self:_recorded_answer(name, id) end
  if reply then self._replies[#self._replies + 1] = { at = now, msg = reply } end
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
-- sleep, and the player turns "sleep for ever" into the stall it is.
local function player_clock(clock, player)
  return { now = clock.now, sleep = function(seconds) player:idle(seconds) end }
end

-- In fast mode a step with nothing to do now first moves the clock on to the
-- next thing due, so a replay can join a qmp.loop (which waits in real time).
local function fast_steps(vm, clock)
  local step = vm.step
  function vm.step(self)
    local t = self:timeout()
    if t and t > 0 then clock.sleep(t) end
    return step(self)
  end
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
  local info = { name = rec.name, started = rec.started, unmatched = {}, ended = false,
                 now = function() return clock.now() end }
  local player = new_player(rec, clock, opts.respond, info)
  function info.expected() return player:expected() end
  local name = opts.name or rec.name or rec.label
  local vm
  vm, err = Client.connect({ conn = player, name = name }, {
    name = name, timeout = opts.timeout, max_queue = opts.max_queue, events = opts.events, trace = opts.trace,
    clock = player_clock(clock, player),
    negotiate = rec.outs[1] ~= nil and rec.outs[1].name == "qmp_capabilities" })
  if not vm then return nil, err end
  if speed == "fast" then fast_steps(vm, clock) end
  vm.recording = info
  return vm
end
