--- Error objects: world events come back as `nil, err`.
-- err.kind is a stable token (see README "Error kinds"); err.message is one
-- readable line; tostring(err) is "kind: message".  The C core builds the
-- same objects (they share the metatable core.Error).
local core = require "qmp.core"

local setmetatable = setmetatable

local errors = {}

errors.mt = core.Error

--- The kinds a script may see, for documentation and for checks.
errors.kinds = {
  timeout = "a deadline passed (connect, greeting, command, wait)",
  closed = "the connection is closed: EOF, reset, or closed locally",
  refused = "connecting failed: no socket, connection refused, unresolvable host",
  denied = "not allowed: non-loopback TCP without allow_remote, expect_uid mismatch, EACCES",
  protocol = "the peer broke the protocol: bad JSON, no greeting, a malformed reply",
  toolarge = "a message exceeded max_message",
  qmp = "QEMU answered with an error: err.class and err.desc",
  unsupported = "the connection cannot do that: exec-oob without oob, fds over TCP",
  io = "another socket error",
  overflow = "(vm.on_error only) the event queue was full: the oldest event was dropped",
  handler = "(vm.on_error only) a handler or timer raised; err.traceback has the trace",
  schema = "(vm.on_error only) with validate, an event did not match the live schema",
}

--- A new error object.  fields (optional) are copied into it.
function errors.new(kind, message, fields)
  local e = {}
  if fields then for k, v in pairs(fields) do e[k] = v end end
  e.kind, e.message = kind, message
  return setmetatable(e, errors.mt)
end

--- The error for a QMP error reply to `command`.
function errors.qmp(command, reply)
  local class = type(reply) == "table" and reply.class or "GenericError"
  local desc = type(reply) == "table" and reply.desc or "malformed error reply"
  return errors.new("qmp", ("%s: %s: %s"):format(command, class, desc),
                    { class = class, desc = desc, command = command })
end

--- true when v is an error object.
function errors.is(v)
  return getmetatable(v) == errors.mt
end

return errors
