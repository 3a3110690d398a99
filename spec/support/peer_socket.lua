-- The listening side of the QMP peer scripts that the long runs and the
-- benchmarks start as processes of their own (spec/long/*_peer.lua,
-- spec/bench/*_peer.lua): a Unix socket, a watchdog that ends a peer whose
-- client never comes or never finishes, and the QMP opening.
--   local peer = require("support.peer_socket").listen("my_peer", path, 4, 600)
--   local c = peer:accept()
--   peer:negotiate(c)
-- A script sets package.path to its spec/ directory before requiring this.
local socket = require "socket"
local unix = require "socket.unix"
local fake = require "support.fake_qmp"

local Peer = {}
Peer.__index = Peer

-- Listen on path with backlog; name prefixes the peer's messages on stderr.
-- After watchdog seconds from now, the peer gives up (exit status 2).
function Peer.listen(name, path, backlog, watchdog)
  local master = assert(unix.stream())
  assert(master:bind(path))
  assert(master:listen(backlog))
  return setmetatable({ name = name, path = path, master = master,
                        deadline = socket.gettime() + watchdog }, Peer)
end

-- Seconds until the watchdog fires; once it has, the socket file is removed
-- and the process exits with status 2.
function Peer:left()
  local t = self.deadline - socket.gettime()
  if t <= 0 then
    io.stderr:write(self.name, ": watchdog fired\n")
    os.remove(self.path)
    os.exit(2)
  end
  return t
end

-- The next connection, with the watchdog's time left as its timeout.
function Peer:accept()
  self.master:settimeout(self:left())
  local c = assert(self.master:accept())
  c:settimeout(self:left())
  return c
end

-- Unexpected input: say what came instead of what, and exit with status 1.
function Peer:fail(what, got)
  io.stderr:write(self.name, ": expected ", what, ", got ", tostring(got), "\n")
  os.remove(self.path)
  os.exit(1)
end

-- Read one command line from c, which must be the command what; answer it
-- with result (JSON text) and the command's id.
function Peer:answer(c, what, result)
  local line = c:receive("*l")
  if not line or not line:find('"' .. what .. '"', 1, true) then self:fail(what, line) end
  local id = line:match('"id"%s*:%s*("[^"]*")')
  return c:send('{"return": ' .. result .. (id and (', "id": ' .. id) or "") .. '}\r\n')
end

-- The opening as QEMU 7.2 plays it: the greeting, then qmp_capabilities answered.
function Peer:negotiate(c)
  c:send(fake.greeting)
  return self:answer(c, "qmp_capabilities", "{}")
end

-- Stop listening and remove the socket file.
function Peer:close()
  self.master:close()
  os.remove(self.path)
end

return { listen = Peer.listen }
