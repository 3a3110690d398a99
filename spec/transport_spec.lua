-- qmp.core connections: address forms, socket hygiene, errors.
local core = require "qmp.core"
local qmp = require "qmp"
local socket = require "socket"
local address = require "qmp.address"

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
  it("connect over TCP to 127.0.0.1 and read a message", function()
    local srv, port = listener("127.0.0.1")
    local conn = assert(core.connect_tcp("127.0.0.1", port, 2))
    cleanup(function() conn:close() end)
    local peer = assert(srv:accept())
    cleanup(function() peer:close() end)
    assert(peer:send(GREETING))
    local msg = assert(conn:recv(2))
    assert.equal(7, msg.QMP.version.qemu.major)
    assert.equal("tcp", conn:family())
  end)

  it("connect over TCP to [::1]", function()
    local srv = socket.tcp6()
    if not srv or not srv:bind("::1", 0) then
      pending("no IPv6 loopback here")
      return
    end
    srv:listen(4)
    cleanup(function() srv:close() end)
    local _, port = srv:getsockname()
    local vm, err = qmp.connect("[::1]:" .. port, { timeout = 0.2 })
    -- The listener never greets, so the greeting times out: the connect itself worked.
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.matches("greeting", err.message)
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
    local _, port = listener("127.0.0.1")
    local conn = assert(core.connect_tcp("127.0.0.1", port, 2))
    cleanup(function() conn:close() end)
    local flags = fd_flags(conn:fileno())
    assert.is_true(flags & 0x800 ~= 0, "O_NONBLOCK")      -- 04000
    assert.is_true(flags & 0x80000 ~= 0, "O_CLOEXEC")     -- 02000000
  end)

  it("reports a dead peer as closed instead of dying of SIGPIPE", function()
    local srv, port = listener("127.0.0.1")
    local conn = assert(core.connect_tcp("127.0.0.1", port, 2))
    cleanup(function() conn:close() end)
    local peer = assert(srv:accept())
    peer:close()
    local big = ("x"):rep(1 << 20)
    local ok, err
    for _ = 1, 20 do
      ok, err = conn:send(big, 2)
      if not ok then break end
    end
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
  end)

  it("returns timeout from recv when nothing arrives", function()
    local srv, port = listener("127.0.0.1")
    local conn = assert(core.connect_tcp("127.0.0.1", port, 2))
    cleanup(function() conn:close() end)
    local peer = assert(srv:accept())
    cleanup(function() peer:close() end)
    local t0 = core.monotime()
    local msg, err = conn:recv(0.05)
    assert.is_nil(msg)
    assert.equal("timeout", err.kind)
    assert.is_true(core.monotime() - t0 >= 0.04)
    local now, err0 = conn:recv(0)
    assert.is_nil(now)
    assert.equal("timeout", err0.kind)
  end)

  it("refuses fd passing over TCP", function()
    local _, port = listener("127.0.0.1")
    local conn = assert(core.connect_tcp("127.0.0.1", port, 2))
    cleanup(function() conn:close() end)
    local ok, err = conn:send("{}\n", 1, { 0 })
    assert.is_nil(ok)
    assert.equal("unsupported", err.kind)
  end)

  it("closes idempotently and says so", function()
    local _, port = listener("127.0.0.1")
    local conn = assert(core.connect_tcp("127.0.0.1", port, 2))
    assert.matches("fd=%d+", tostring(conn))
    conn:close()
    conn:close()
    assert.equal("qmp.Conn (closed)", tostring(conn))
    local ok, err = conn:send("{}", 1)
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
  end)

  it("refuses a connection on a closed port", function()
    local srv, port = listener("127.0.0.1")
    srv:close()
    local conn, err = core.connect_tcp("127.0.0.1", port, 2)
    assert.is_nil(conn)
    assert.equal("refused", err.kind)
    assert.matches("refused", tostring(err))
  end)
end)
