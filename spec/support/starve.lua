-- A starved CPU for specs: this process stopped 2 ms of every 4 ms
-- (SIGSTOP/SIGCONT from a child, as a busy host's scheduler does to it),
-- and the quick counting consumer the starvation specs flood.
--   local ok, err, stops = starve.run(function() return vm:run{ timeout = 30 } end, 30)
local proc = require "support.proc"
local tmp = require "support.tmp"

local M = {}

-- A VNC_CONNECTED as QEMU sends it (the server and the client, nested
-- objects), with three earlier clients nested beside the client: reading
-- and decoding 256 of them takes a recent x86 core 1 to 2 ms, longer than
-- the read-ahead interval (1 ms), as 256 plain ones take a slower machine.
local CLIENT = '{"family": "ipv4", "service": "46234", "host": "127.0.0.1", "websocket": false}'
M.VNC_DATA = '{"server": {"auth": "none", "family": "ipv4", "service": "5901", "host": "0.0.0.0", ' ..
             '"websocket": false}, "client": ' .. CLIENT .. ', "previous": [' ..
             (CLIENT .. ', '):rep(5) .. CLIENT .. ']}'

-- The stopper: bash, for its builtin kill and a sleep without a process
-- (read -t on a pipe it holds both ends of).  It always leaves the target
-- running: at its end, after `limit` seconds, and on SIGTERM.
local STOPPER = [[
pid=$1 limit=$2 n=0
trap 'kill -CONT "$pid" 2>/dev/null; echo "stops $n"; exit 0' TERM INT
exec 3<> <(:)
end=$((SECONDS + limit))
while [ "$SECONDS" -lt "$end" ] && kill -STOP "$pid" 2>/dev/null; do
  n=$((n + 1))
  read -r -t 0.002 -u 3
  kill -CONT "$pid"
  read -r -t 0.002 -u 3
done
kill -CONT "$pid" 2>/dev/null
echo "stops $n"
]]

local function mypid()
  return tonumber(tmp.read("/proc/self/stat"):match("^(%d+)"))
end

--- Call fn() while this process is stopped 2 ms of every 4 ms (for at most
-- limit seconds); the stopper ends however fn ends.  fn's results (up to
-- two), then how many times the process was stopped.
function M.run(fn, limit)
  local dir = tmp.dir("starve")
  local pid = proc.spawn({ "bash", "-c", STOPPER, "stopper", tostring(mypid()), tostring(math.ceil(limit)) },
                         dir .. "/log")
  local ok, a, b = pcall(fn)
  proc.terminate(pid, 2)
  local stops = tonumber((tmp.read(dir .. "/log") or ""):match("stops (%d+)"))
  tmp.remove(dir)
  if not ok then error(a, 0) end
  return a, b, stops or 0
end

--- One counting handler on vm, and a count of the overflow reports:
-- { delivered, reports }.
function M.count(vm)
  local got = { delivered = 0, reports = 0 }
  vm.on_error = function(err) if err.kind == "overflow" then got.reports = got.reports + 1 end end
  vm:on("VNC_CONNECTED", function() got.delivered = got.delivered + 1 end)
  return got
end

-- What a quick handler must see after a flood of n events ended by the
-- peer's close, with the process stopped at least min_stops times: every
-- event read and delivered, none lost to overflow, no report.  (ok, err,
-- stops: what M.run returned; got: M.count's tally.)
function M.assert_none_lost(vm, got, n, min_stops, ok, err, stops)
  assert(ok == nil, "the run ended without the peer's close")
  assert(err.kind == "closed", tostring(err))   -- the peer's close, after its last event
  assert(stops >= min_stops, "the process was stopped only " .. stops .. " times")
  assert(vm.stats.events == n, ("%d events read of %d"):format(vm.stats.events, n))
  assert(vm.stats.overflow == 0, vm.stats.overflow .. " events lost to overflow")
  assert(got.reports == 0, got.reports .. " overflow reports")
  assert(got.delivered == n, ("%d events delivered of %d"):format(got.delivered, n))
end

return M
