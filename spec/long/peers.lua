-- Starting the long specs' peers (paced_peer.lua, churn_peer.lua) as
-- processes of their own, each in a fresh temporary directory.
local proc = require "support.proc"
local tmp = require "support.tmp"

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

local Peer = {}
Peer.__index = Peer

--- The peer's report (a table), once it has written it; nil before.
function Peer:report()
  local text = tmp.read(self.dir .. "/report")
  if not text or text == "" then return nil end
  return assert(load(text, "report", "t", {}))()
end

--- Wait (bounded) for the peer to exit by itself; its report.
function Peer:finish(timeout)
  assert(proc.wait_exit(self.pid, timeout or 30), "the peer did not exit:\n" .. self:log())
  return assert(self:report(), "the peer wrote no report:\n" .. self:log())
end

--- Ask a paced peer to stop (it checks every few milliseconds).
function Peer:request_stop()
  tmp.write(self.dir .. "/stop", "stop\n")
end

function Peer:log()
  return tmp.read(self.dir .. "/peer.log") or ""
end

--- Kill it if it still runs and remove its directory; idempotent.
function Peer:stop()
  if self.stopped then return end
  self.stopped = true
  proc.terminate(self.pid, 2)
  tmp.remove(self.dir)
end

local function launch(script, args, cleanup)
  local dir = tmp.dir("qmplong")
  local peer = setmetatable({ dir = dir, path = dir .. "/qmp.sock" }, Peer)
  local argv = { "lua5.4", here .. script, peer.path }
  for _, a in ipairs(args(peer)) do argv[#argv + 1] = tostring(a) end
  peer.pid = proc.spawn(argv, dir .. "/peer.log")
  if cleanup then cleanup(function() peer:stop() end) end
  local up = proc.wait_until(function() return proc.listening(peer.path) or not proc.alive(peer.pid) end, 10)
  if not (up and proc.listening(peer.path)) then
    local log = peer:log()
    peer:stop()
    error("the peer did not start:\n" .. log, 3)
  end
  return peer
end

--- A paced peer: rate events/s for seconds (see paced_peer.lua).
function M.paced(rate, seconds, cleanup, watchdog)
  return launch("paced_peer.lua", function(p)
    return { rate, seconds, p.dir .. "/report", p.dir .. "/stop", watchdog or (seconds + 120) }
  end, cleanup)
end

--- A churn peer: n connections in mode fresh | resync | hold (see churn_peer.lua).
function M.churn(n, mode, cleanup, watchdog)
  return launch("churn_peer.lua", function(p)
    return { n, mode, p.dir .. "/report", watchdog or 600 }
  end, cleanup)
end

return M
