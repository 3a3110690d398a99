--- Error objects: world events come back as `nil, err`; usage errors raise.
-- err.kind is a stable token (see README "Error kinds"); err.message is one
-- readable line; tostring(err) is "kind: message".  The C core builds the
-- same objects (they share the metatable core.Error).
local core = require "qmp.core"
local text = require "qmp.text"

local setmetatable, type, pairs, error, getinfo = setmetatable, type, pairs, error, debug.getinfo

local errors = {}

errors.mt = core.Error

--- The kinds a script may see, for documentation and for checks.
errors.kinds = {
  timeout = "a deadline passed (connect, greeting, command, wait)",
  closed = "the connection is closed or down: EOF, reset, closed locally, or reconnecting",
  refused = "connecting failed: no socket, not a socket, connection refused, unresolvable host",
  denied = "not allowed: non-loopback TCP without allow_remote, expect_uid mismatch, EACCES",
  protocol = "the peer broke the protocol: bad JSON, no greeting, a malformed reply",
  toolarge = "a message exceeded max_message",
  memory = "cJSON could not allocate while parsing a message (out of memory)",
  qmp = "QEMU answered with an error: err.class and err.desc",
  unsupported = "the connection cannot do that: exec-oob without oob, fds over TCP",
  launch = "qmp.machine: QEMU could not be started, or exited before its monitor was ready (err.stderr, err.exit)",
  in_use = "qmp.mux: a socket someone listens on is at the path",
  exists = "qmp.mux: something that is not a socket is at the path (left alone)",
  io = "another socket error, or no file descriptor left for a new socket (EMFILE, ENFILE)",
  interrupted = "a signal caught with qmp.signals.catch is pending: err.signal names it (\"SIGINT\")",
  job = "vm:job_wait: the job failed, was cancelled or does not exist; err.job has its last state",
  overflow = "(vm.on_error only) a consumer's queue was full: its oldest event was dropped",
  handler = "(vm.on_error only) a handler or timer raised; err.traceback has the trace",
  schema = "(vm.on_error only) with validate, an event did not match the live schema",
  usage = "(vm.on_error only) a wait or listen names an event neither the catalogue nor the live schema knows",
}

--- A new error object.  fields (optional) are copied into it.
function errors.new(kind, message, fields)
  local e = {}
  if fields then for k, v in pairs(fields) do e[k] = v end end
  e.kind, e.message = kind, message
  return setmetatable(e, errors.mt)
end

--- The error for a QMP error reply to `command`.  err.class and err.desc
-- are the peer's text as it sent it, for programs; the message, and so
-- tostring(err), is for people and shows it escaped (qmp.text.escape): one
-- line, none of the peer's control bytes.
function errors.qmp(command, reply)
  local class = type(reply) == "table" and type(reply.class) == "string" and reply.class or "GenericError"
  local desc = type(reply) == "table" and type(reply.desc) == "string" and reply.desc or "malformed error reply"
  local message = ("%s: %s: %s"):format(text.escape(tostring(command)), text.escape(class), text.escape(desc))
  return errors.new("qmp", message, { class = class, desc = desc, command = command })
end

--- true when v is an error object.
function errors.is(v)
  return getmetatable(v) == errors.mt
end

--- The peer's text as a report quotes it: one line of at most max bytes,
-- escaped as qmp.text.escape does (a line break shows as \n, ESC as
-- \u001b, a byte that is not UTF-8 as \xff; printable UTF-8 as it is); a
-- longer text is cut, never inside a character or an escape, to end in "...".
function errors.quote(v, max)
  if math.type(max) ~= "integer" or max < 3 then errors.raise("qmp.errors.quote: max must be an integer >= 3") end
  local shown = text.escape(tostring(v))
  if #shown <= max then return shown end
  return text.cut(shown, max - 3) .. "..."
end

-- Sources of the library's own files ("@.../qmp/"): a usage error is
-- reported at the first frame outside them, i.e. at the caller's line.
local LIBRARY = getinfo(1, "S").source:match("^(@.*[/\\])errors%.lua$")

local function in_library(source)
  return LIBRARY ~= nil and source:sub(1, #LIBRARY) == LIBRARY
end

--- Raise a usage error (a programmer mistake) at the caller's line:
-- the first stack frame that is neither the library nor C.
function errors.raise(message)
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if not info then level = 2 break end
    if info.what ~= "C" and not in_library(info.source) then break end
    level = level + 1
  end
  error(message, level)
end

-- A bad duration as its message shows it.
local function shown_duration(v)
  if type(v) ~= "number" then return v == nil and "nil" or "a " .. type(v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "math.huge (it would never come)" end
  if v == -math.huge then return "-math.huge" end
  return ("%g"):format(v)
end

--- Check a duration in seconds that the API takes (every timeout, delay,
-- interval, back-off): a number, never NaN (which passes every `t < 0`
-- test and then never comes due), never negative.  opts: optional (nil is
-- taken, and returned), positive (> 0, not >= 0), infinite (math.huge is
-- taken where it means "no limit", as a timeout does; elsewhere, for a
-- timer, a back-off or a delay, it would never come, and raises).  Raises
-- at the caller's line; returns value.
function errors.check_duration(where, name, value, opts)
  opts = opts or {}
  if value == nil and opts.optional then return nil end
  local positive, infinite = opts.positive, opts.infinite
  if type(value) == "number" and value == value and (value > 0 or (value == 0 and not positive))
     and (value < math.huge or infinite) then
    return value
  end
  errors.raise(("%s: %s must be a number of seconds %s%s, not %s"):format(where, name,
    positive and "> 0" or ">= 0", infinite and " or math.huge (no limit)" or "", shown_duration(value)))
end

-- The closest of candidates to word (by edit distance), when close enough.
function errors.closest(word, candidates)
  local best, best_d
  local n = #word
  for _, c in ipairs(candidates) do
    local m = #c
    if math.abs(m - n) <= 2 then
      local prev = {}
      for j = 0, m do prev[j] = j end
      for i = 1, n do
        local cur = { [0] = i }
        local wi = word:byte(i)
        for j = 1, m do
          local cost = wi == c:byte(j) and 0 or 1
          cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        end
        prev = cur
      end
      local d = prev[m]
      if d <= math.max(2, n // 3) and (not best_d or d < best_d) then best, best_d = c, d end
    end
  end
  return best
end

--- Check an options table: nil or a table whose keys are all in `known`
-- (a set).  Raises at the caller's line, naming the closest known option.
function errors.check_options(where, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then errors.raise(where .. ": options must be a table") end
  for k in pairs(opts) do
    if not known[k] then
      local names = {}
      for name in pairs(known) do names[#names + 1] = name end
      table.sort(names)
      local guess = type(k) == "string" and errors.closest(k, names)
      errors.raise(("%s: unknown option %q%s (known: %s)"):format(where, tostring(k),
        guess and (" — did you mean %q?"):format(guess) or "", table.concat(names, ", ")))
    end
  end
  return opts
end

return errors
