--- Recordings of a monitor connection: every message both ways with the
-- time it was seen, for reading (grep, jq) and for qmp.replay.
--   local rec = qmp.record.open("incident.qmprec", { name = "vm1" })
--   local vm = assert(qmp.connect("/run/vm1/qmp.sock", { trace = rec.trace }))
--   ... vm:run() ...
--   rec:close("done")
-- or, as `qmp-lua record ADDRESS FILE` does: qmp.record.run(address, path, opts).
--
-- The format: UTF-8 text, one JSON object per line.  The first line says
-- what the file is; then one line per message, in the order the client
-- sent or received them; the last line says why the recording ended:
--   {"qmp-recording":1,"name":"vm1","started":"2026-11-21T18:58:34Z"}
--   {"t":0.001873,"dir":"in","msg":{"QMP":{"version":{...},"capabilities":["oob"]}}}
--   {"t":0.002011,"dir":"out","msg":{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"qmp#1"}}
--   {"t":0.002190,"dir":"in","msg":{"return":{},"id":"qmp#1"}}
--   {"t":4.180344,"dir":"in","msg":{"event":"STOP","data":{},"timestamp":{...}}}
--   {"t":9.000127,"dir":"end","msg":{"reason":"closed: connection closed by the peer"}}
-- t: monotonic seconds since the recording started (when the client sent
-- or received the message); dir: "in" (from QEMU: the greeting, replies,
-- events), "out" (a command) or "end"; msg: the message, on one line.  An
-- "out" message is the exact text sent; an "in" message is the client's
-- decoding of what QEMU sent, encoded again (the trace hook's text).
-- A file without its "end" line was cut short (the recorder was killed).
local core = require "qmp.core"
local errors = require "qmp.errors"

local type, tostring, pcall, floor = type, tostring, pcall, math.floor
local encode, monotime = core.encode, core.monotime

local record = {}

record.VERSION = 1

local Recorder = { __name = "qmp.Recorder" }
Recorder.__index = Recorder

-- Seconds as "12.000127": integer arithmetic, so no locale can put a comma in.
local function seconds(t)
  local us = floor(t * 1e6 + 0.5)
  return ("%d.%06d"):format(us // 1000000, us % 1000000)
end

function Recorder:_line(dir, text)
  local f = self._file
  assert(f:write('{"t":', seconds(monotime() - self._start), ',"dir":"', dir, '","msg":', text, "}\n"))
end

--- Seconds since the recording started.
function Recorder:elapsed()
  return monotime() - self._start
end

--- Write the end line (reason: why the recording ends) and close the file
-- if the recorder opened it.  Idempotent.
function Recorder:close(reason)
  if self.closed then return end
  self.closed = true
  self:_line("end", encode({ reason = tostring(reason or "the recorder stopped") }))
  if self._own then self._file:close() else self._file:flush() end
end
Recorder.__close = Recorder.close

--- Start a recording into `target`: a path (the file is created or
-- truncated, readable by its owner only: see core.private_file) or an
-- open file.  opts.name: the label in the first line.
-- Returns the recorder: rec.trace is the function to give qmp.connect as
-- opts.trace; rec.messages counts what it wrote.  rec | nil, err (kind io).
function record.open(target, opts)
  opts = errors.check_options("qmp.record.open", opts, { name = true })
  if opts.name ~= nil and type(opts.name) ~= "string" then errors.raise("qmp.record.open: name must be a string") end
  local file, own = target, false
  if type(target) == "string" then
    local f, why = core.private_file(target)   -- 0600: a recording may hold passwords
    if not f then return nil, errors.new("io", "cannot record into " .. why) end
    file, own = f, true
  elseif io.type(target) ~= "file" then
    errors.raise("qmp.record.open: target must be a path or an open file")
  end
  file:setvbuf("line")   -- a recorder killed mid-way keeps every line it wrote
  local rec = setmetatable({ messages = 0, closed = false, path = own and target or nil,
                             _file = file, _own = own, _start = monotime() }, Recorder)
  assert(file:write('{"qmp-recording":', record.VERSION, opts.name and (',"name":' .. encode(opts.name)) or "",
                    ',"started":"', os.date("!%Y-%m-%dT%H:%M:%SZ"), '"}\n'))
  rec.trace = function(direction, text)
    if rec.closed then return end
    -- A message the client could not encode comes as a description, not JSON: keep it as a string.
    if text:sub(1, 1) ~= "{" then text = encode({ unencodable = text }) end
    rec:_line(direction, text)
    rec.messages = rec.messages + 1
  end
  return rec
end

local RUN_OPTIONS = { count = true, timeout = true, on_event = true, connect = true }

--- Connect to `address` and record its stream into `path` (a path or an
-- open file) until the connection closes, opts.count events arrived or
-- opts.timeout seconds passed.  opts.on_event(ev, vm) sees each event (to
-- show progress); opts.connect: options for qmp.connect (not trace).
-- Returns { reason =, events =, messages =, seconds = } | nil, err when it
-- could not start.  A signal caught with qmp.signals ends it with reason
-- "interrupted"; an error raised meanwhile (by on_event) ends the file with
-- its reason, then goes on up.
function record.run(address, path, opts)
  opts = errors.check_options("qmp.record.run", opts, RUN_OPTIONS)
  local count, on_event = opts.count, opts.on_event
  if count ~= nil and (math.type(count) ~= "integer" or count < 1) then
    errors.raise("qmp.record.run: count must be a positive integer")
  end
  if on_event ~= nil and type(on_event) ~= "function" then
    errors.raise("qmp.record.run: on_event must be a function")
  end
  -- Checked before the file is made.
  errors.check_duration("qmp.record.run", "timeout", opts.timeout, { optional = true, infinite = true })
  if opts.connect ~= nil and type(opts.connect) ~= "table" then
    errors.raise("qmp.record.run: connect must be a table")
  end
  local connect_opts = {}
  for k, v in pairs(opts.connect or {}) do connect_opts[k] = v end   -- qmp.connect checks them
  if connect_opts.trace ~= nil then errors.raise("qmp.record.run: connect.trace is the recorder's") end
  local rec, err = record.open(path, { name = connect_opts.name or (type(address) == "string" and address or nil) })
  if not rec then return nil, err end
  connect_opts.trace = rec.trace
  local vm
  vm, err = require("qmp.client").connect(address, connect_opts)
  if not vm then
    rec:close("not connected: " .. tostring(err))
    return nil, err
  end
  local events = 0
  vm:on("*", function(ev)
    events = events + 1
    if on_event then on_event(ev, vm) end
    if events == count then vm:stop() end
  end)
  local ok, done, why = pcall(vm.run, vm, { timeout = opts.timeout })
  local reason
  if not ok then reason = "error: " .. tostring(done)
  elseif done then reason = ("%d events"):format(events)
  elseif why.kind == "timeout" then reason = ("%g s passed"):format(opts.timeout)
  elseif why.kind == "interrupted" then reason = "interrupted"   -- a signal caught with qmp.signals
  else reason = tostring(why) end
  vm:close()
  rec:close(reason)
  if not ok then error(done, 0) end
  return { reason = reason, events = events, messages = rec.messages, seconds = rec:elapsed() }
end

return record
