-- qmp.core connections: address forms, socket hygiene, errors.
local core = require "qmp.core"
local qmp = require "qmp"
local socket = require "socket"
local unix = require "socket.unix"
local address = require "qmp.address"
local tmp = require "support.tmp"
local fake = require "support.fake_qmp"

local GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\r\n'

local cleanup = require("support.cleanup")(after_each)

-- A listening TCP socket on an ephemeral loopback port, served in-process:
-- connect() completes from the backlog, so no second process is needed.
local function listener(host)
  local srv = assert(socket.bind(host, 0))
  cleanup(function() srv:close() end)
  local _, port = srv:getsockname()
  return srv, tonumber(port)
end

-- /proc flags of one of our fds (octal text).
local function fd_flags(fd)
  local f = assert(io.open("/proc/self/fdinfo/" .. fd))
  local text = f:read("a")
  f:close()
  return tonumber(text:match("flags:%s*(%d+)"), 8)
end

-- A listening unix socket in a fresh directory, served in-process.
local function unix_listener(backlog)
  local dir = tmp.dir("qmpsock")
  cleanup(function() tmp.remove(dir) end)
  local path = dir .. "/qmp.sock"
  local srv = assert(unix.stream())
  assert(srv:bind(path))
  assert(srv:listen(backlog or 8))
  srv:settimeout(TEST_TIMEOUT)
  cleanup(function() srv:close() end)
  return srv, path, dir
end

local finish = require("support.conn").finish

-- conn (ours, from open(...)) connected to the listener srv, and the
-- server's end of it (luasocket).
local function pair(srv, open, ...)
  local conn, connected = open(...)
  assert(conn, connected)
  cleanup(function() conn:close() end)
  finish(conn, connected)
  local peer = assert(srv:accept())
  peer:settimeout(TEST_TIMEOUT)
  cleanup(function() peer:close() end)
  return conn, peer
end

-- Over a unix socket of its own.
local function unix_pair()
  local srv, path = unix_listener()
  return pair(srv, core.open_unix, path)
end

-- Over TCP, to a loopback listener (srv).
local function tcp_pair(srv, host, port)
  return pair(srv, core.open_tcp, host, port)
end

-- Wait (bounded) until conn's fd has something to read.
local function readable(conn)
  local ready = assert(core.poll({ conn:fileno() }, TEST_TIMEOUT))
  assert.equal(1, #ready, "nothing to read within " .. TEST_TIMEOUT .. " s")
end

-- Finish a fresh connection to the listener srv, check its fd hygiene and
-- that a message from the accepted peer arrives; returns the peer.
local function connected_to(srv, conn, connected, family)
  finish(conn, connected)
  assert.is_true(conn:finish_connect())
  assert.equal(family, conn:family())
  local flags = fd_flags(conn:fileno())
  assert.is_true(flags & 0x800 ~= 0, "O_NONBLOCK")
  assert.is_true(flags & 0x80000 ~= 0, "O_CLOEXEC")
  local peer = assert(srv:accept())
  cleanup(function() peer:close() end)
  assert(peer:send(GREETING))
  readable(conn)
  assert.equal(7, conn:take().QMP.version.qemu.major)
  return peer
end

describe("qmp.address.parse()", function()
  it("knows every address form", function()
    assert.same({ kind = "unix", path = "/run/vm.sock" }, address.parse("/run/vm.sock"))
    assert.same({ kind = "unix", path = "vm.sock" }, address.parse("vm.sock"))
    assert.same({ kind = "unix", path = "/a:1" }, address.parse("unix:/a:1"))
    assert.same({ kind = "tcp", host = "127.0.0.1", port = 4444 }, address.parse("tcp:127.0.0.1:4444"))
    assert.same({ kind = "tcp", host = "localhost", port = 4444 }, address.parse("localhost:4444"))
    assert.same({ kind = "tcp", host = "::1", port = 4444 }, address.parse("[::1]:4444"))
    assert.same({ kind = "tcp", host = "::1", port = 4444 }, address.parse("tcp:[::1]:4444"))
    assert.same({ kind = "fd", fd = 3 }, address.parse({ fd = 3 }))
  end)

  it("raises on malformed addresses", function()
    assert.has_error(function() address.parse("tcp:host") end)
    assert.has_error(function() address.parse("tcp:host:99999") end)
    assert.has_error(function() address.parse({ fd = -1 }) end)
    assert.has_error(function() address.parse("") end)
  end)
end)

describe("qmp.core connections", function()
  it("has no blocking API left: connects, reads and writes only through the non-blocking one", function()
    assert.is_nil(core.connect_unix)
    assert.is_nil(core.connect_tcp)
    local conn = unix_pair()
    assert.is_nil(conn.recv)
    assert.is_nil(conn.send)
    assert.is_nil(conn.isclosed)
  end)

  it("connect over TCP to 127.0.0.1 and read a message", function()
    local srv, port = listener("127.0.0.1")
    local conn, peer = tcp_pair(srv, "127.0.0.1", port)
    assert(peer:send(GREETING))
    readable(conn)
    local msg = assert(conn:take())
    assert.equal(7, msg.QMP.version.qemu.major)
    assert.equal("tcp", conn:family())
  end)

  -- A listening socket on [::1], or nil when this host has no IPv6 loopback.
  local function listener6()
    local srv = socket.tcp6()
    if not srv or not srv:bind("::1", 0) then
      if srv then srv:close() end
      return nil
    end
    srv:listen(4)
    srv:settimeout(TEST_TIMEOUT)
    cleanup(function() srv:close() end)
    local _, port = srv:getsockname()
    return srv, tonumber(port)
  end

  it("connect over TCP to [::1]", function()
    local srv, port = listener6()
    if not srv then
      pending("no IPv6 loopback here")
      return
    end
    local vm, err = qmp.connect("[::1]:" .. port, { timeout = 0.2 })
    -- The listener never greets, so the greeting times out: the connect itself worked.
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.matches("greeting", err.message)
  end)

  it("connects to ::1 through open_tcp and names it [::1]:port", function()
    local srv, port = listener6()
    if not srv then
      pending("no IPv6 loopback here")
      return
    end
    local conn, peer = tcp_pair(srv, "::1", port)
    assert.equal("tcp", conn:family())
    assert(peer:send(GREETING))
    readable(conn)
    assert.equal(7, conn:take().QMP.version.qemu.major)
    srv:close()
    local conn2, connected = core.open_tcp("::1", port)
    local err = connected
    if conn2 then  -- refused later: finish_connect says so
      cleanup(function() conn2:close() end)
      assert.is_false(connected)
      assert.equal(1, #core.poll({ conn2:fileno() }, TEST_TIMEOUT, { "w" }))
      local ok
      ok, err = conn2:finish_connect()
      assert.is_nil(ok)
    end
    assert.equal("refused", err.kind)
    assert.equal("cannot connect to [::1]:" .. port .. ": Connection refused", err.message)
  end)

  it("refuses TCP to a non-loopback address unless allow_remote is set", function()
    -- In an empty network namespace, so nothing can leave the machine even if the check broke.
    local script = [[
      package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
      package.cpath = "./?.so;" .. package.cpath
      local qmp = require "qmp"
      local vm, err = qmp.connect("tcp:192.0.2.1:4444", { timeout = 1 })
      io.write(err.kind, " ", err.message, "\n")
      local vm2, err2 = qmp.connect("tcp:192.0.2.1:4444", { timeout = 1, allow_remote = true })
      io.write(err2.kind, "\n")
    ]]
    local p = io.popen("unshare -n lua5.4 -e '" .. script:gsub("'", "'\\''") .. "' 2>&1")
    local out = p:read("a")
    local ok = p:close()
    if not ok and out:match("unshare") then
      pending("cannot create a network namespace here: " .. out)
      return
    end
    local first, second = out:match("^(%S+) ([^\n]*)\n(%S+)")
    assert.equal("denied", first, out)
    assert.matches("allow_remote", second)
    -- With allow_remote the library tries, and the empty namespace has no route.
    assert.is_truthy(out:match("\n(%S+)\n$") ~= "denied", out)
  end)

  it("makes its sockets non-blocking and close-on-exec", function()
    local srv, port = listener("127.0.0.1")
    local conn = tcp_pair(srv, "127.0.0.1", port)
    local flags = fd_flags(conn:fileno())
    assert.is_true(flags & 0x800 ~= 0, "O_NONBLOCK")      -- 04000
    assert.is_true(flags & 0x80000 ~= 0, "O_CLOEXEC")     -- 02000000
  end)

  -- luasocket ignores SIGPIPE in this process, so this only checks the error;
  -- the next test checks the signal in a process of its own.
  it("reports a dead TCP peer as closed, for writing and then for reading", function()
    local srv, port = listener("127.0.0.1")
    local conn, peer = tcp_pair(srv, "127.0.0.1", port)
    peer:close()
    local big = ("x"):rep(1 << 20)
    local off, err
    for _ = 1, 20 do
      off, err = conn:write(big, 0)
      if not off then break end
      core.poll({ conn:fileno() }, TEST_TIMEOUT, { "w" })  -- room again, or the reset
    end
    assert.is_nil(off)
    assert.equal("closed", err.kind)
    assert.matches("connection closed by the peer", err.message)
    local msg, terr = conn:take()  -- the stream is over for reading too
    assert.is_nil(msg)
    assert.equal("closed", terr.kind)
  end)

  -- Without MSG_NOSIGNAL a write to a dead peer kills the process.  A child
  -- without luasocket, with SIGPIPE back at its default (an ignored signal
  -- stays ignored across exec), writes to a peer this process closed.
  it("never dies of SIGPIPE writing to a dead peer, with or without fds", function()
    if not os.execute("env --default-signal=PIPE true 2>/dev/null") then
      pending("needs env --default-signal (coreutils 8.31)")
      return
    end
    local srv, path = unix_listener()
    local script = [[
      package.cpath = "./?.so;" .. package.cpath
      local core = require "qmp.core"
      local conn, connected = assert(core.open_unix(os.getenv("QMP_SOCK")))
      while not connected do
        core.poll({ conn:fileno() }, 10, { "w" })
        connected = assert(conn:finish_connect())
      end
      core.poll({ conn:fileno() }, 10)  -- until the peer has closed
      local _, err = conn:write("{}\n", 0)
      local _, err2 = conn:write("{}\n", 0, { conn:fileno() })
      io.write(err.kind, " ", err2.kind, "\n")
    ]]
    local p = assert(io.popen("QMP_SOCK=" .. tmp.quote(path) ..
                              " env --default-signal=PIPE lua5.4 -e " .. tmp.quote(script) .. " 2>&1"))
    local peer = assert(srv:accept())
    peer:close()
    local out = p:read("a")
    local ok, how, code = p:close()
    assert.is_true(ok, out .. " (" .. tostring(how) .. " " .. tostring(code) .. ")")
    assert.equal("closed closed\n", out)
  end)

  it("take() gives false and poll() waits out its timeout when nothing arrives", function()
    local srv, port = listener("127.0.0.1")
    local conn = tcp_pair(srv, "127.0.0.1", port)
    local fd = conn:fileno()
    assert.is_false(conn:take())
    local t0 = core.monotime()
    assert.same({}, core.poll({ fd }, 0.05))
    assert.is_true(core.monotime() - t0 >= 0.04)
    assert.is_false(conn:take())
    assert.same({}, core.poll({ fd }, 0))  -- 0: only looks
    assert.is_false(conn:take())
  end)

  it("closes idempotently and says so", function()
    local srv, port = listener("127.0.0.1")
    local conn = tcp_pair(srv, "127.0.0.1", port)
    assert.matches("fd=%d+", tostring(conn))
    conn:close()
    conn:close()
    assert.equal("qmp.Conn (closed)", tostring(conn))
    assert.equal(-1, conn:fileno())
    local off, err = conn:write("{}", 0)
    assert.is_nil(off)
    assert.equal("closed", err.kind)
  end)
end)

describe("qmp.core connection fixes", function()
  -- A __len may return anything: the fd count must be checked before it
  -- sizes the SCM_RIGHTS copy (a -1 once reached memcpy).
  it("raises cleanly on an fds list whose __len lies", function()
    local conn, peer = unix_pair()
    for _, n in ipairs({ -1, 1 << 40, math.mininteger, 17 }) do
      local fds = setmetatable({}, { __len = function() return n end })
      local ok, err = pcall(conn.write, conn, "{}\n", 0, fds)
      assert.is_false(ok)
      assert.matches("bad argument #4", err)
    end
    assert.equal(3, conn:write("{}\n", 0))  -- still fine
    assert.equal("{}\n", peer:receive(3))
  end)

  -- Once fdopen has made the connection, the fd is the connection's: when
  -- setting it up then fails, it must be closed, not leaked.
  it("closes the fd fdopen took when it cannot set it up", function()
    local ok, uv = pcall(require, "luv")
    if not ok then
      pending("needs luv (lua-luv) to open an O_PATH fd")
      return
    end
    -- Linux O_PATH: fstat works on such an fd, fcntl(F_SETFL) refuses it.
    local fd = uv.fs_open("/", 0x200000, 0)
    if not fd then
      pending("cannot open an O_PATH fd here")
      return
    end
    cleanup(function() if uv.fs_fstat(fd) then uv.fs_close(fd) end end)
    assert.is_truthy(uv.fs_fstat(fd))
    local raised, err = pcall(core.fdopen, fd)
    assert.is_false(raised)
    assert.matches("fd " .. fd, err)
    local st, why = uv.fs_fstat(fd)
    assert.is_nil(st, "fdopen left fd " .. fd .. " open")
    assert.matches("EBADF", why)
    -- an fd that is not open stays an error with nothing to close
    assert.has_error(function() core.fdopen(fd) end)
  end)
end)

describe("qmp.core non-blocking connections", function()
  describe("open_unix()", function()
    it("connects to a listening socket without waiting", function()
      local srv, path = unix_listener()
      local conn, connected = core.open_unix(path)
      assert.is_userdata(conn)
      assert.is_boolean(connected)
      cleanup(function() conn:close() end)
      connected_to(srv, conn, connected, "unix")
      assert.is_true(conn:finish_connect())  -- again: still connected
    end)

    it("says where to look when nothing is at the path", function()
      local _, _, dir = unix_listener()
      local conn, err = core.open_unix(dir .. "/missing.sock")
      assert.is_nil(conn)
      assert.equal("refused", err.kind)
      assert.equal("no socket at " .. dir .. "/missing.sock (is QEMU running with -qmp unix:" ..
                   dir .. "/missing.sock,server=on?)", err.message)
    end)

    it("says a regular file or a directory is not a socket", function()
      local _, _, dir = unix_listener()
      tmp.write(dir .. "/file", "x")
      local conn, err = core.open_unix(dir .. "/file")
      assert.is_nil(conn)
      assert.equal("refused", err.kind)
      assert.equal(dir .. "/file is not a socket (it is a regular file)", err.message)
      conn, err = core.open_unix(dir)
      assert.is_nil(conn)
      assert.equal("refused", err.kind)
      assert.equal(dir .. " is not a socket (it is a directory)", err.message)
    end)

    it("says nobody listens on a socket left behind", function()
      local srv, path = unix_listener()
      srv:close()  -- the socket file stays
      assert.is_true(tmp.exists(path))
      local conn, err = core.open_unix(path)
      assert.is_nil(conn)
      assert.equal("refused", err.kind)
      assert.matches("nobody is listening", err.message)
    end)

    it("says when the listen backlog is full instead of waiting", function()
      local _, path = unix_listener(1)  -- and never accept
      local err
      for _ = 1, 20 do
        local conn, e = core.open_unix(path)
        if not conn then err = e; break end
        cleanup(function() conn:close() end)
      end
      assert.is_table(err, "20 connects fitted in a backlog of 1")
      assert.equal("refused", err.kind)
      assert.matches("listen backlog is full", err.message)
    end)

    it("raises on a bad path", function()
      assert.has_error(function() core.open_unix("") end)
      assert.has_error(function() core.open_unix("/" .. ("x"):rep(200)) end)
      assert.has_error(function() core.open_unix("/tmp/a\0b") end)
      assert.has_error(function() core.open_unix(nil) end)
      assert.has_error(function() core.open_unix("/tmp/x.sock", 0) end)  -- max_message
    end)

    it("takes a path of up to 107 bytes (sun_path) and raises on a longer one", function()
      local _, _, dir = unix_listener()
      local longest = dir .. "/" .. ("x"):rep(107 - #dir - 1)
      assert.equal(107, #longest)
      local conn, err = core.open_unix(longest)  -- nothing there: refused, not raised
      assert.is_nil(conn)
      assert.equal("refused", err.kind)
      assert.equal("no socket at " .. longest .. " (is QEMU running with -qmp unix:" ..
                   longest .. ",server=on?)", err.message)
      local ok, why = pcall(core.open_unix, longest .. "x")
      assert.is_false(ok)
      assert.matches("unix socket path too long (108 bytes): the limit is 107 bytes", why, 1, true)
    end)
  end)

  describe("resolve() and open_tcp()", function()
    it("resolves localhost to loopback numeric addresses, without duplicates", function()
      local list = assert(core.resolve("localhost", 4444))
      assert.is_true(#list >= 1)
      local seen = {}
      for _, a in ipairs(list) do
        assert.is_truthy(a:match("^127%.%d+%.%d+%.%d+$") or a == "::1", a)
        assert.is_nil(seen[a], "duplicate " .. a)
        seen[a] = true
      end
      assert.same({ "127.0.0.1" }, core.resolve("127.0.0.1", 4444))
      assert.same({ "::1" }, core.resolve("::1", 4444))
    end)

    it("drops non-loopback addresses unless allow_remote", function()
      local list, err = core.resolve("192.0.2.1", 4444)
      assert.is_nil(list)
      assert.equal("denied", err.kind)
      assert.equal("refusing TCP to non-loopback address 192.0.2.1 (the monitor is " ..
                   "root-equivalent; pass allow_remote = true)", err.message)
      assert.same({ "192.0.2.1" }, core.resolve("192.0.2.1", 4444, true))
      -- an IPv4 address mapped into IPv6 is judged by its IPv4 part
      assert.same({ "::ffff:127.0.0.1" }, core.resolve("::ffff:127.0.0.1", 4444))
      local mapped, merr = core.resolve("::ffff:192.0.2.1", 4444)
      assert.is_nil(mapped)
      assert.equal("denied", merr.kind)
    end)

    it("raises on a bad port", function()
      assert.has_error(function() core.resolve("localhost", 0) end)
      assert.has_error(function() core.resolve("localhost", 65536) end)
      assert.has_error(function() core.open_tcp("127.0.0.1", 0) end)
    end)

    it("connects to a listening 127.0.0.1 port without waiting", function()
      local srv, port = listener("127.0.0.1")
      local conn, connected = core.open_tcp("127.0.0.1", port)
      assert.is_userdata(conn, tostring(connected))
      cleanup(function() conn:close() end)
      local peer = connected_to(srv, conn, connected, "tcp")
      assert.equal(#GREETING, conn:write(GREETING, 0))
      peer:settimeout(TEST_TIMEOUT)
      assert.equal(GREETING, peer:receive(#GREETING))
    end)

    it("reports a refused connect from finish_connect, and keeps saying so", function()
      local srv, port = listener("127.0.0.1")
      srv:close()
      local conn, connected = core.open_tcp("127.0.0.1", port)
      local message = "cannot connect to 127.0.0.1:" .. port .. ": Connection refused"
      if conn == nil then  -- refused at once: allowed
        assert.equal("refused", connected.kind)
        assert.equal(message, connected.message)
        assert.equal("refused: " .. message, tostring(connected))
        return
      end
      cleanup(function() conn:close() end)
      assert.is_false(connected)
      assert.equal(1, #core.poll({ conn:fileno() }, TEST_TIMEOUT, { "w" }))
      local ok, err = conn:finish_connect()
      assert.is_nil(ok)
      assert.equal("refused", err.kind)
      assert.equal(message, err.message)
      assert.equal("refused: " .. message, tostring(err))
      local ok2, err2 = conn:finish_connect()
      assert.is_nil(ok2)
      assert.equal(err.message, err2.message)
      assert.is_true(conn:buffered())
      local msg, err3 = conn:take()
      assert.is_nil(msg)
      assert.equal("refused", err3.kind)
      assert.is_true(conn:fileno() >= 0)  -- only close() closes
    end)

    it("raises on a host that is not a numeric address", function()
      assert.has_error(function() core.open_tcp("localhost", 4444) end)
    end)
  end)

  describe("take() and buffered()", function()
    it("return false when nothing came", function()
      local conn = unix_pair()
      assert.is_false(conn:take())
      assert.is_false(conn:buffered())
      assert.is_false(conn:take())
    end)

    it("give a message the peer sent", function()
      local conn, peer = unix_pair()
      assert(peer:send(GREETING))
      readable(conn)
      assert.is_false(conn:buffered())  -- in the socket, not read yet
      local msg = conn:take()
      assert.equal(7, msg.QMP.version.qemu.major)
      assert.is_false(conn:take())
    end)

    it("give several messages from one write one by one, then false", function()
      local conn, peer = unix_pair()
      assert(peer:send('{"return": {}, "id": 1}\r\n{"return": {}, "id": 2}\n{"event": "STOP"}\r\n'))
      readable(conn)
      assert.equal(1, conn:take().id)
      assert.is_true(conn:buffered())
      assert.equal(2, conn:take().id)
      assert.is_true(conn:buffered())
      assert.equal("STOP", conn:take().event)
      assert.is_false(conn:buffered())
      assert.is_false(conn:take())
    end)

    it("buffered() is true while a read brought more than take() gave", function()
      local conn, peer = unix_pair()
      assert(peer:send('{"a": 1}{"b": 2}'))
      readable(conn)
      assert.same({ a = 1 }, conn:take())
      assert.is_true(conn:buffered())
      assert.same({ b = 2 }, conn:take())
      assert.is_false(conn:buffered())
      assert.is_false(conn:take())
    end)

    it("give every buffered message before reporting the peer's close", function()
      local conn, peer = unix_pair()
      assert(peer:send('{"a": 1}\n{"b": 2}\n'))
      peer:close()
      readable(conn)
      assert.same({ a = 1 }, conn:take())
      assert.same({ b = 2 }, conn:take())
      local msg, err = conn:take()
      assert.is_nil(msg)
      assert.equal("closed", err.kind)
      assert.equal("connection closed by the peer", err.message)
      assert.is_true(conn:buffered())
      msg, err = conn:take()
      assert.is_nil(msg)
      assert.equal("closed", err.kind)
    end)

    it("say how much of a message the close cut off", function()
      local conn, peer = unix_pair()
      assert(peer:send('{"a": 1}\n{"b": '))
      peer:close()
      readable(conn)
      assert.same({ a = 1 }, conn:take())
      local msg, err
      for _ = 1, 3 do  -- the EOF may take one more read
        msg, err = conn:take()
        if msg ~= false then break end
        readable(conn)
      end
      assert.is_nil(msg)
      assert.equal("closed", err.kind)
      assert.equal("connection closed by the peer inside a message (6 bytes discarded)", err.message)
    end)

    it("keep a number split before its exponent a float", function()
      local conn, peer = unix_pair()
      assert(peer:send('{"x": 1'))
      readable(conn)
      assert.is_false(conn:take())
      assert.is_false(conn:take())  -- no new bytes: the scanner must remember the digit
      assert.is_false(conn:buffered())
      assert(peer:send("e-1}"))
      readable(conn)
      local msg = conn:take()
      assert.equal("float", math.type(msg.x))
      assert.equal(0.1, msg.x)
    end)

    it("fail with closed on a closed connection", function()
      local conn = unix_pair()
      conn:close()
      local msg, err = conn:take()
      assert.is_nil(msg)
      assert.equal("closed", err.kind)
      assert.is_true(conn:buffered())
      local off, werr = conn:write("{}", 0)
      assert.is_nil(off)
      assert.equal("closed", werr.kind)
      local ok, ferr = conn:finish_connect()
      assert.is_nil(ok)
      assert.equal("closed", ferr.kind)
    end)
  end)

  describe("drain()", function()
    local EVENT = '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "%s"}\r\n'
    local function ev(name) return EVENT:format(name) end

    it("gives an empty list when nothing came", function()
      local conn = unix_pair()
      local list, skipped, err = conn:drain(10)
      assert.same({ 0, 0 }, { #list, skipped })
      assert.is_nil(err)
    end)

    it("gives every message of several writes in one call, up to limit", function()
      local conn, peer = unix_pair()
      assert(peer:send(ev("STOP") .. '{"return": {}, "id": 1}\r\n'))
      assert(peer:send(ev("RESUME") .. ev("RTC_CHANGE")))
      readable(conn)
      local list, skipped = conn:drain(3, { STOP = true, RESUME = true })
      assert.equal(3, #list + skipped)
      assert.equal(core.events.STOP, getmetatable(list[1]))
      assert.equal(1, list[2].id)
      assert.equal("RESUME", list[3].event)
      assert.is_true(conn:buffered())
      list, skipped = conn:drain(3, { STOP = true, RESUME = true })
      assert.same({ 0, 1 }, { #list, skipped })
      assert.is_false(conn:buffered())
    end)

    it("gives the messages held with the peer's close, then the close again", function()
      local conn, peer = unix_pair()
      assert(peer:send('{"a": 1}\n{"b": 2}\n{"c": '))
      peer:close()
      readable(conn)
      local out, err = {}
      local deadline = core.monotime() + TEST_TIMEOUT
      repeat  -- the close may take one more read
        assert(core.monotime() < deadline, "no close")
        local list, _, e = conn:drain(10)
        for _, m in ipairs(list) do out[#out + 1] = m end
        err = e
      until err
      assert.same({ { a = 1 }, { b = 2 } }, out)
      assert.equal("closed", err.kind)
      assert.equal("connection closed by the peer inside a message (6 bytes discarded)", err.message)
      local list, skipped, again = conn:drain(10)
      assert.same({ 0, 0 }, { #list, skipped })
      assert.equal(err.message, again.message)
    end)

    it("fails with closed on a closed connection, after what it holds", function()
      local conn, peer = unix_pair()
      assert(peer:send('{"a": 1}\n{"b": 2}\n'))
      readable(conn)
      assert.equal(1, #conn:drain(1))
      conn:close()
      local list, _, err = conn:drain(10)
      assert.same({ { b = 2 } }, list)
      assert.equal("closed", err.kind)
      assert.equal("the connection is closed", err.message)
    end)

    -- A peer that writes faster than we read must not hold one call: the
    -- reads are bounded (4 of 64 KiB), skipped events or not.
    it("returns while a flood goes on", function()
      local srv = fake.start({ { flood = { count = 2000000, seconds = TEST_TIMEOUT } } })
      cleanup(function() srv:stop() end)
      local conn, connected = assert(core.open_unix(srv.path))
      cleanup(function() conn:close() end)
      finish(conn, connected)
      readable(conn)
      local size = #fake.event("RTC_CHANGE")
      local total = 0
      for _ = 1, 20 do
        local list, skipped, err = conn:drain(1000000000, {})
        assert.is_nil(err)
        assert.equal(0, #list)
        assert(skipped * size <= 4 * 65536, ("%d events (%d bytes) in one call"):format(skipped, skipped * size))
        total = total + skipped
        readable(conn)
      end
      assert(total > 0)
    end)

    it("checks its arguments", function()
      local conn = unix_pair()
      assert.has_error(function() conn:drain(0) end)
      assert.has_error(function() conn:drain(1, 1) end)
      assert.has_error(function() conn.drain({}, 1) end)
    end)
  end)

  describe("write()", function()
    it("returns #text once all is written", function()
      local conn, peer = unix_pair()
      local text = '{"execute": "qmp_capabilities"}\n'
      assert.equal(#text, conn:write(text, 0))
      assert.equal(text, peer:receive(#text))
      assert.equal(0, conn:write("", 0))
    end)

    it("starts at the offset it is given", function()
      local conn, peer = unix_pair()
      assert.equal(7, conn:write("XXhello", 2))
      assert.equal(7, conn:write("XXhello", 7))  -- nothing left: nothing sent
      assert.equal("hello", peer:receive(5))
    end)

    it("raises on an offset outside the text", function()
      local conn = unix_pair()
      assert.has_error(function() conn:write("abc", -1) end)
      assert.has_error(function() conn:write("abc", 4) end)
      assert.has_error(function() conn:write("abc", 1.5) end)
      assert.has_error(function() conn:write("abc") end)
      assert.has_error(function() conn:write("", 0, { 0 }) end)  -- fds need a byte
    end)

    it("stops without waiting when the peer does not read", function()
      local conn = unix_pair()
      local big = ("x"):rep(8 << 20)
      local t0 = core.monotime()
      local off = conn:write(big, 0)
      assert.is_true(off > 0 and off < #big, "wrote " .. off)
      local stuck = false
      for _ = 1, 100 do
        local new = assert(conn:write(big, off))
        if new == off then stuck = true; break end
        off = new
      end
      assert.is_true(stuck, "the offset never stopped advancing")
      assert.is_true(off < #big)
      assert.is_true(core.monotime() - t0 < 2, "write() waited")
      assert.same({}, core.poll({ conn:fileno() }, 0, { "w" }))  -- full: not writable
    end)

    it("sends fds with byte 0, and takes but does not resend them past it", function()
      local conn, peer = unix_pair()
      local fd = conn:fileno()  -- any open fd will do for SCM_RIGHTS
      assert.equal(3, conn:write("abc", 0, { fd }))
      assert.equal(3, conn:write("abc", 1, { fd }))
      assert.equal("abcbc", peer:receive(5))
    end)

    it("refuses fds over TCP", function()
      local srv, port = listener("127.0.0.1")
      local conn, connected = assert(core.open_tcp("127.0.0.1", port))
      cleanup(function() conn:close() end)
      finish(conn, connected)
      local peer = assert(srv:accept())
      cleanup(function() peer:close() end)
      local off, err = conn:write("{}\n", 0, { 0 })
      assert.is_nil(off)
      assert.equal("unsupported", err.kind)
    end)

    it("reports a dead peer as closed and leaves the fd open", function()
      local conn, peer = unix_pair()
      peer:close()
      local big = ("x"):rep(1 << 20)
      local off, err
      for _ = 1, 20 do
        off, err = conn:write(big, 0)
        if not off then break end
      end
      assert.is_nil(off)
      assert.equal("closed", err.kind)
      assert.matches("connection closed by the peer", err.message)
      assert.is_true(conn:fileno() >= 0)
      fd_flags(conn:fileno())  -- still open
    end)
  end)

  -- A write that stops half-way leaves the peer inside a message: nothing
  -- is lost and the stream stays usable, the caller goes on from the offset
  -- (the fd stays open; only close() closes it).
  it("write() that stops half-way keeps the stream: the rest follows from the offset", function()
    local conn, peer = unix_pair()
    assert(peer:send('{"a": 1}\n{"b": 2}\n'))
    readable(conn)
    assert.same({ a = 1 }, conn:take())  -- b is read too, and held
    local parts = {}
    for i = 1, 1 << 20 do parts[i] = string.format("%07d,", i) end  -- 8 MiB, numbered: a lost or repeated piece shows
    local text = '{"execute": "x", "arguments": {"s": "' .. table.concat(parts) .. '"}}\n'
    local off = assert(conn:write(text, 0))
    assert.is_true(off > 0 and off < #text, "wrote " .. off .. " of " .. #text)
    local fd = conn:fileno()
    assert.is_true(fd >= 0, "the fd was closed")
    fd_flags(fd)  -- still open
    assert.matches("fd=" .. fd, tostring(conn))
    -- what had come in whole is still given, and the stream is not over
    assert.is_true(conn:buffered())
    assert.same({ b = 2 }, conn:take())
    assert.is_false(conn:buffered())
    assert.is_false(conn:take())
    -- the peer reads; the writer goes on from its offset when poll says "w"
    local got, n = {}, 0
    local deadline = core.monotime() + TEST_TIMEOUT
    peer:settimeout(0)
    while n < #text do
      assert(core.monotime() < deadline, "only " .. n .. " bytes arrived")
      if off < #text then off = assert(conn:write(text, off)) end
      local data, _, partial = peer:receive(1 << 16)
      data = data or partial
      if #data > 0 then
        got[#got + 1] = data
        n = n + #data
      elseif not peer:dirty() then
        local fds, events = { peer:getfd() }, { "r" }
        if off < #text then fds[2], events[2] = fd, "w" end
        core.poll(fds, TEST_TIMEOUT, events)
      end
    end
    assert.equal(#text, off)
    assert.is_true(table.concat(got) == text, "the peer got other bytes than were written")
    assert.equal(3, conn:write("{}\n", 0))  -- usable as ever
    peer:settimeout(TEST_TIMEOUT)
    assert.equal("{}\n", peer:receive(3))
    conn:close()
    assert.equal(-1, conn:fileno())
  end)

  it("walltime() gives seconds and microseconds of the real clock", function()
    local s, us = core.walltime()
    assert.equal("integer", math.type(s))
    assert.equal("integer", math.type(us))
    assert.is_true(math.abs(s - os.time()) <= 2)
    assert.is_true(us >= 0 and us < 1000000)
  end)

  describe("poll() with events", function()
    it("reports a connected socket writable for \"w\", and not readable for \"r\"", function()
      local conn = unix_pair()
      local fd = conn:fileno()
      assert.same({ 1 }, core.poll({ fd }, TEST_TIMEOUT, { "w" }))
      assert.same({ 1 }, core.poll({ fd }, TEST_TIMEOUT, { "rw" }))
      assert.same({}, core.poll({ fd }, 0, { "r" }))
      assert.same({}, core.poll({ fd }, 0))
      assert.same({ 2 }, core.poll({ fd, fd }, TEST_TIMEOUT, { "r", "w" }))
      assert.same({}, core.poll({ fd }, 0, {}))  -- missing entries are "r"
    end)

    it("raises on anything but \"r\", \"w\" and \"rw\"", function()
      local conn = unix_pair()
      local fd = conn:fileno()
      for _, bad in ipairs({ "x", "wr", "", "R", 1, true }) do
        assert.has_error(function() core.poll({ fd }, 0, { bad }) end)
      end
      assert.has_error(function() core.poll({ fd }, 0, "w") end)
      assert.has_error(function() core.poll(setmetatable({}, { __len = function() return -1 end }), 0) end)
    end)
  end)
end)
