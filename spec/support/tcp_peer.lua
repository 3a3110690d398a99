-- A client over TCP whose peer is the spec's own process: it greets and
-- answers only when the test says.  Over TCP a non-blocking connect is
-- still under way when qmp.client returns (a unix one completes at once).
--   local tcp_client, accept = tcp_peer.bound(cleanup)
--   local vm, listener = tcp_client()
--   local peer = accept(listener)
--   assert(peer:send(fake.greeting))
local qmp = require "qmp"
local core = require "qmp.core"
local socket = require "socket"

local M = {}

-- tcp_client(trace) and accept(listener), closing what they make after the
-- test through cleanup (support.cleanup).
--   tcp_client: vm, listener; trace is the client's opts.trace.
--   accept: the peer's end of tcp_client's connection.
function M.bound(cleanup)
  local function tcp_client(trace)
    local listener = assert(socket.tcp())
    cleanup(function() listener:close() end)
    assert(listener:bind("127.0.0.1", 0))
    assert(listener:listen(1))
    local _, port = listener:getsockname()
    local vm = qmp.client("127.0.0.1:" .. port, { timeout = 5, trace = trace })
    cleanup(function() vm:close() end)
    return vm, listener
  end
  local function accept(listener)
    listener:settimeout(5)
    local peer = assert(listener:accept())
    cleanup(function() peer:close() end)
    peer:settimeout(5)
    return peer
  end
  return tcp_client, accept
end

-- Step vm until cond() holds, for 5 s at most; each_step() after each step.
function M.step_until(vm, cond, each_step)
  local deadline = qmp.monotime() + 5
  while not cond() and qmp.monotime() < deadline do
    core.poll({ vm:pollfd() }, 0.01, { vm:events() })
    assert(vm:step())
    if each_step then each_step() end
  end
end

-- The peer answers the command it reads next with {}; the command's line.
function M.answer(peer)
  local line = assert(peer:receive("*l"))
  assert(peer:send('{"return": {}, "id": ' .. line:match('"id":("[^"]*")') .. '}\r\n'))
  return line
end

return M
