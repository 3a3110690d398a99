-- Scripted fake QMP peer for protocol edge-case specs. The server runs as a
-- separate process (fake_qmp_server.lua) because the client under test
-- blocks in C and cannot share a process with its peer.
--
--   local srv = fake.start({ { greet = true },
--                            { expect = "qmp_capabilities", reply = fake.reply("{}") } })
--   ... connect to srv.path ...
--   srv:stop()
--
-- Step kinds (one per step table, played in order after the first accept):
--   { greet = true }                 QEMU 7.2 greeting offering "oob"
--   { greet = { capabilities = {} } } greeting with the given capabilities
--   { send = "text", chunk = n }     raw bytes (include "\r\n"); optionally n
--                                    bytes per write. %ID = id of the last command
--   { expect = "name", reply = "json", expect_args = "lua pattern" }
--                                    read one command line; its "execute" or
--                                    "exec-oob" must equal name ("*" = any) and
--                                    the line must match expect_args; then send
--                                    reply with %ID replaced and "\r\n" appended
--   { expect = "name", save = "a" }  also remember the command's id as "a":
--                                    %ID:a in a later reply or send is that id
--                                    (replies out of order: fake.reply(json, "a"))
--   { sleep = seconds }              pause
--   { wait_for = "word" }            neither read nor send until the spec calls
--                                    srv:tell("word") (max 30 s): the client's
--                                    writes find the socket full for as long as
--                                    the spec needs
--   { close = true }                 close the connection
--   { wait_close = true }            read until the client closes (max 30 s)
--   { hold = seconds }               read and discard until EOF or time is up
--   { accept = true }                accept the next connection
--   { shutdown_write = true }        half-close: client sees EOF, server still reads
--   { flood = { count = n, seconds = s, name = "EV%d", data = "json" } }
--                                    events as fast as the client reads them,
--                                    until n are sent or s seconds pass; a %d
--                                    in name numbers them (distinct names);
--                                    data: raw JSON for each event's "data"
--                                    (optional), a %d in it the number too
--   { ticks = { count = n, every = s, name = "RTC_CHANGE" } }
--                                    n events s seconds apart, data
--                                    {"offset": i}, timestamped with the wall
--                                    clock of their sending
--   { stream = { head = "text", unit = "text", count = n, tail = "text" } }
--                                    head, unit n times (a %d in unit
--                                    numbers the copies), then tail, as fast
--                                    as the client reads; a gigabyte of a
--                                    fixed unit costs the peer 1 MiB
-- A command without an id gets its reply without the ', "id": %ID' part.
local proc = require "support.proc"
local tmp = require "support.tmp"

local M = {}

-- Interpreter for the server process.
M.lua = "lua5.4"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local SERVER = here .. "fake_qmp_server.lua"
local MANY = here .. "fake_qmp_many.lua"

-- The greeting of QEMU 7.2 as packaged by Debian 12, with capabilities.
function M.greeting_with(capabilities)
  local caps = {}
  for i, c in ipairs(capabilities or { "oob" }) do caps[i] = '"' .. c .. '"' end
  return '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, ' ..
    '"package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": [' ..
    table.concat(caps, ", ") .. ']}}\r\n'
end

M.greeting = M.greeting_with()

-- An event line; data_json is raw JSON text or nil.
function M.event(name, data_json)
  local data = data_json and (', "data": ' .. data_json) or ""
  return '{"event": "' .. name .. '"' .. data ..
    ', "timestamp": {"seconds": 1700000000, "microseconds": 1234}}\r\n'
end

-- First messages that are no greeting, and that an error message must
-- describe without raising: a number out of range, invalid UTF-8 in a
-- string and in a key.
M.hostile_first = {
  '{"hello": 1e999}\r\n',
  '{"hello": "caf\xff"}\r\n',
  '{"h\xffllo": [1e999, -1e999]}\r\n',
}

-- A success reply for an expect step (no "\r\n": the step appends it).
-- With saved: the reply to the command an expect step saved under that name.
function M.reply(json, saved)
  return '{"return": ' .. json .. ', "id": %ID' .. (saved and (":" .. saved) or "") .. '}'
end

-- Lua source for a steps table (strings, numbers, booleans, tables only).
local function serialize(v)
  local t = type(v)
  if t == "string" or t == "number" then
    return string.format("%q", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local parts = {}
    for k, x in pairs(v) do
      parts[#parts + 1] = "[" .. serialize(k) .. "] = " .. serialize(x)
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  error("fake_qmp: cannot serialize a " .. t, 3)
end

local Server = {}
Server.__index = Server

-- Servers not stopped yet, for stop_all().
local running = {}

-- Wait for the server to finish its steps by itself; true if it exited.
function Server:wait(timeout)
  return proc.wait_exit(self.pid, timeout or 5)
end

-- Kill the server if it still runs and remove its files. Idempotent.
function Server:stop()
  if self.stopped then return end
  self.stopped = true
  running[self] = nil
  proc.terminate(self.pid, 2)
  tmp.remove(self.dir)
end

-- The server's log: what it received, sent and why it exited.
function Server:log()
  return tmp.read(self.dir .. "/server.log") or ""
end

-- Raw command lines received so far, in order.
function Server:received()
  local lines = {}
  for line in (tmp.read(self.dir .. "/received") or ""):gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  return lines
end

-- Let a { wait_for = word } step go on.
function Server:tell(word)
  assert(type(word) == "string" and word:match("^%w+$"), "fake_qmp: tell takes a plain word")
  tmp.write(self.dir .. "/told-" .. word, "")
end

-- How many connections the server has accepted so far.
function Server:accepted()
  local n = 0
  for _ in self:log():gmatch("client connected") do n = n + 1 end
  return n
end

-- Exit status once the server has exited (0 = all steps done, 1 = unexpected
-- input, 2 = watchdog), nil while it runs or if it was killed.
function Server:status()
  return tonumber(tmp.read(self.dir .. "/status") or "")
end

-- Spawn the server program argv for srv and wait until it listens.
local function launch(srv, argv, opts)
  srv.pid = proc.spawn(argv, srv.dir .. "/server.log")
  local up = proc.wait_until(function()
    return proc.listening(srv.path) or not proc.alive(srv.pid)
  end, opts.start_timeout or 5)
  if not (up and proc.listening(srv.path)) then
    local log = srv:log()
    srv:stop()
    error("fake QMP server did not start:\n" .. log, 3)
  end
  running[srv] = true
  return srv
end

-- opts.start_timeout: seconds to wait for the socket (default 5).
-- opts.watchdog: seconds after which the server gives up and exits 2 (default 60).
-- opts.path: the socket to listen on (default: qmp.sock in a fresh temporary
-- directory), e.g. where a client already tries to connect.
function M.start(steps, opts)
  opts = opts or {}
  assert(type(steps) == "table", "fake_qmp.start: steps must be a table")
  local dir = tmp.dir("fakeqmp")
  local srv = setmetatable({ dir = dir, path = opts.path or (dir .. "/qmp.sock") }, Server)
  tmp.write(dir .. "/steps.lua", "return " .. serialize(steps) .. "\n")
  return launch(srv, { M.lua, SERVER, srv.path, dir .. "/steps.lua", dir .. "/received",
    dir .. "/status", tostring(opts.watchdog or 60) }, opts)
end

-- A server for n connections on one socket (fake_qmp_many.lua): each is
-- greeted and negotiated; once all n are in, connection k gets one
-- RTC_CHANGE event with offset k; all stay open until their client closes.
-- opts as for start.  The result has the methods of a start() server.
function M.start_many(n, opts)
  opts = opts or {}
  assert(math.type(n) == "integer" and n > 0, "fake_qmp.start_many: n must be a positive integer")
  local dir = tmp.dir("fakeqmp")
  local srv = setmetatable({ dir = dir, path = dir .. "/qmp.sock" }, Server)
  return launch(srv, { M.lua, MANY, srv.path, tostring(n), dir .. "/status",
    tostring(opts.watchdog or 60) }, opts)
end

-- steps after the usual opening: the greeting, then the capabilities handshake.
function M.opening(steps)
  local all = { { greet = true }, { expect = "qmp_capabilities", reply = M.reply("{}") } }
  for _, step in ipairs(steps or {}) do all[#all + 1] = step end
  return all
end

-- Start a server that cleanup (from support.cleanup) stops after the test.
function M.serve(steps, cleanup, opts)
  local srv = M.start(steps, opts)
  cleanup(function() srv:stop() end)
  return srv
end

-- qmp.connect to srv, a server of this module or any socket path (a real
-- QEMU's), with opts (default { timeout = 5 }); closed after the test.  A
-- failure raises, showing the server's log.
function M.connect(srv, cleanup, opts)
  local path = type(srv) == "string" and srv or srv.path
  local vm, err = require("qmp").connect(path, opts or { timeout = 5 })
  assert(vm, tostring(err) .. (type(srv) == "table" and ("\n" .. srv:log()) or ""))
  cleanup(function() vm:close() end)
  return vm
end

-- Serve the opening then steps, and connect a client to it.  Returns vm, srv.
function M.client(steps, cleanup, opts)
  local srv = M.serve(M.opening(steps), cleanup)
  return M.connect(srv, cleanup, opts), srv
end

-- serve, connect and client with a spec's cleanup bound in, so that no spec
-- wraps them itself:
--   local serve, connect, client = fake.bound(cleanup)
--   local vm = connect(serve(fake.opening({ ... })), { timeout = 2 })
function M.bound(cleanup)
  return function(steps, opts) return M.serve(steps, cleanup, opts) end,
         function(srv, opts) return M.connect(srv, cleanup, opts) end,
         function(steps, opts) return M.client(steps, cleanup, opts) end
end

-- Stop every server a spec forgot (the spec helper calls this after each file).
function M.stop_all()
  for srv in pairs(running) do srv:stop() end
end

return M
