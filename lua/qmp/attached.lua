--- Attached: the parts a client serves from its own loop (vm:attach; qmp.mux
-- is one).  A part has fds of its own, but the loops that drive a client
-- (vm:run, qmp.loop, a scheduler's waiter, a command's wait) wait for one
-- fd per client.  So once a part is attached, the client's fd is an epoll
-- fd holding the session's socket and each part's fd: it is readable when
-- any of them is ready, whoever waits on it, and every progress of the
-- client steps its parts.  Linux only: poll() has no fd to nest.
local core = require "qmp.core"
local errors = require "qmp.errors"

local min, huge = math.min, math.huge

local Attached = {}
Attached.__index = Attached

--- An empty set of parts: attached | nil, err ("unsupported" without epoll).
-- report(err) hands on a part's failure.
function Attached.new(report)
  local ok, poller = pcall(core.poller, "epoll")
  if not ok then
    return nil, errors.new("unsupported", "attaching a part to a client needs epoll (Linux): " .. tostring(poller))
  end
  return setmetatable({
    _poller = poller,
    _parts = {},        -- in attach order (copy on write: a step may detach)
    _set = {},          -- fd -> interest registered, for the session and each part
    _session = nil,     -- the session whose socket is registered (a new one may reuse its fd number)
    _report = report,
  }, Attached)
end

local function check_part(part)
  if type(part) ~= "table" and type(part) ~= "userdata" then return false end
  for _, method in ipairs({ "pollfd", "events", "step" }) do
    if type(part[method]) ~= "function" then return false end
  end
  return true
end

--- Add a part: an object with part:pollfd() (an fd, -1 for none),
-- part:events() ("r", "w" or "rw"), part:step() (do what can be done now,
-- never wait) and, optionally, part:timeout() (seconds until it has work
-- without its fd; nil: none).
function Attached:add(part)
  if not check_part(part) then
    errors.raise("qmp: attach: expected an object with pollfd, events and step methods")
  end
  for _, p in ipairs(self._parts) do
    if p == part then return end
  end
  local parts = { table.unpack(self._parts) }
  parts[#parts + 1] = part
  self._parts = parts
end

--- Remove a part; the number left.
function Attached:remove(part)
  local parts = {}
  for _, p in ipairs(self._parts) do
    if p ~= part then parts[#parts + 1] = p end
  end
  self._parts = parts
  return #parts
end

-- Put fd (-1: none) with its interest in the set wanted.
local function want(wanted, fd, interest)
  if fd >= 0 then wanted[fd] = interest end
end

--- Bring the registrations up to date: the session's socket (session nil
-- or fd -1: none) and each part's fd.  The epoll fd to wait on, for "r".
function Attached:sync(session, fd, interest)
  local wanted = {}
  want(wanted, fd, interest)
  for _, part in ipairs(self._parts) do
    want(wanted, part:pollfd(), part:events())
  end
  local poller, set = self._poller, self._set
  local renewed = session ~= self._session   -- its fd number may be an old one's
  self._session = session
  for old in pairs(set) do
    if wanted[old] == nil then
      poller:unset(old)
      set[old] = nil
    end
  end
  for new, mode in pairs(wanted) do
    if (set[new] ~= mode or (renewed and new == fd)) and poller:set(new, mode) then
      set[new] = mode
    end
  end
  return poller:fileno()
end

--- Step every part; a part that raises is reported, the others still run.
function Attached:step()
  for _, part in ipairs(self._parts) do
    local ok, why = pcall(part.step, part)
    if not ok then self._report(errors.new("handler", "an attached part failed: " .. tostring(why))) end
  end
end

--- Seconds until a part has work without its fd; nil when none has.
function Attached:timeout()
  local t = huge
  for _, part in ipairs(self._parts) do
    local due = part.timeout and part:timeout()
    if due then t = min(t, due) end
  end
  if t < huge then return t end
end

function Attached:close()
  self._poller:close()
  self._parts, self._set = {}, {}
end

return Attached
