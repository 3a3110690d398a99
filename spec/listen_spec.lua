-- core.listen_unix: the listening side a monitor multiplexer serves its
-- clients on; fds received over unix conns (conn:take_fds); poller:fileno().
local core = require "qmp.core"
local socket = require "socket"
local unix = require "socket.unix"
local tmp = require "support.tmp"
local finish = require("support.conn").finish

local cleanup = require("support.cleanup")(after_each)

local PID = tonumber(io.open("/proc/self/stat"):read("l"):match("^(%d+)"))
local O_NONBLOCK, O_CLOEXEC = 0x800, 0x80000  -- as /proc/PID/fdinfo shows them (02000000 octal)

-- The output of a shell command, without the last newline.
local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return (out:gsub("\n$", ""))
end

-- /proc flags of one of our fds, or nil when it is not open.
local function fd_flags(fd)
  local text = tmp.read("/proc/self/fdinfo/" .. fd)
  return text and tonumber(text:match("flags:%s*(%d+)"), 8)
end

local function is_open(fd)
  return fd_flags(fd) ~= nil
end

-- What our fd n is ("socket:[1234]", a path).
local function link_of(n)
  return sh("readlink /proc/" .. PID .. "/fd/" .. n)
end

-- Our fds whose link reads target, sorted.
local function fds_linked_to(target)
  local out = sh("for f in /proc/" .. PID .. "/fd/*; do " ..
                 "[ \"$(readlink \"$f\")\" = " .. tmp.quote(target) .. " ] && echo \"${f##*/}\"; done")
  local list = {}
  for n in out:gmatch("%d+") do list[#list + 1] = tonumber(n) end
  table.sort(list)
  return list
end

-- A fresh directory for sockets, removed after the test.
local function dir()
  local d = tmp.dir("qmplisten")
  cleanup(function() tmp.remove(d) end)
  return d
end

local function listen(path, mode)
  local l = assert(core.listen_unix(path, mode or tonumber("600", 8)))
  cleanup(function() l:close() end)
  return l
end

-- A client of ours (core.open_unix) connected to path.
local function client(path)
  local c, connected = assert(core.open_unix(path))
  cleanup(function() c:close() end)
  finish(c, connected)
  return c
end

-- The next client of l, waiting (bounded) for one.
local function accept(l)
  assert.equal(1, #core.poll({ l:fileno() }, TEST_TIMEOUT), "no client within " .. TEST_TIMEOUT .. " s")
  local conn = assert(l:accept())
  cleanup(function() conn:close() end)
  return conn
end

-- The next message conn takes, waiting (bounded) for it.
local function next_message(conn)
  local deadline = core.monotime() + TEST_TIMEOUT
  while true do
    local msg, err = conn:take()
    assert(msg ~= nil, tostring(err))
    if msg then return msg end
    assert(core.monotime() < deadline, "no message within " .. TEST_TIMEOUT .. " s")
    core.poll({ conn:fileno() }, TEST_TIMEOUT)
  end
end


-- A stale socket at path: bound, then closed without removing it.
local function stale_socket(path)
  local s = assert(unix.stream())
  assert(s:bind(path))
  s:close()
  assert.equal("socket", sh("stat -c %F " .. tmp.quote(path)))
end

describe("core.listen_unix()", function()
  -- Made in a child whose umask is given: the mode must not depend on it.
  -- The child also makes a plain file, to show its umask really was that.
  for _, case in ipairs({ { "000", "600" }, { "000", "660" }, { "077", "660" } }) do
    local umask, mode = case[1], case[2]
    it("gives the socket mode " .. mode .. " under umask " .. umask, function()
      local d = dir()
      local code = ([[
        local core = require "qmp.core"
        local l = assert(core.listen_unix(%q, %d))
        io.open(%q, "w"):close()
        local p = io.popen("stat -c %%a " .. %q .. " " .. %q)
        io.write(p:read("a"))
        p:close()
        l:close()
      ]]):format(d .. "/s.sock", tonumber(mode, 8), d .. "/file", d .. "/s.sock", d .. "/file")
      local out = sh("umask " .. umask .. "; LUA_PATH_5_4=" .. tmp.quote(package.path) ..
                     " LUA_CPATH_5_4=" .. tmp.quote(package.cpath) .. " lua5.4 -e " .. tmp.quote(code) .. " 2>&1")
      local file_mode = ("%o"):format(tonumber("666", 8) & ~tonumber(umask, 8))
      assert.equal(mode .. "\n" .. file_mode, out)
      assert.is_false(tmp.exists(d .. "/s.sock"), "close left the socket")
    end)
  end

  it("raises on a bad mode or path", function()
    local d = dir()
    assert.error_matches(function() core.listen_unix(d .. "/s", tonumber("1000", 8)) end, "mode")
    assert.error_matches(function() core.listen_unix(d .. "/s", -1) end, "mode")
    assert.error_matches(function() core.listen_unix(d .. "/s") end, "number expected")
    assert.error_matches(function() core.listen_unix("/" .. ("x"):rep(200), 384) end, "too long")
    assert.error_matches(function() core.listen_unix("", 384) end, "empty")
    assert.is_false(tmp.exists(d .. "/s"))
  end)

  it("serves a client: take and drain decode what it writes, write reaches it", function()
    local path = dir() .. "/s.sock"
    local l = listen(path)
    assert.equal(path, l:path())
    assert.equal("qmp.Listener (" .. path .. ")", tostring(l))
    assert.is_true(l:fileno() >= 0)
    local lflags = fd_flags(l:fileno())
    assert.is_true(lflags & O_NONBLOCK ~= 0 and lflags & O_CLOEXEC ~= 0, "listener fd flags")
    local c = client(path)
    local conn = accept(l)
    assert.equal("unix", conn:family())
    assert.matches("^qmp%.Conn %(fd=%d+%)$", tostring(conn))
    local flags = fd_flags(conn:fileno())
    assert.is_true(flags & O_NONBLOCK ~= 0, "O_NONBLOCK")
    assert.is_true(flags & O_CLOEXEC ~= 0, "O_CLOEXEC")
    assert.equal(8, c:write('{"a": 1}', 0))
    local rest = '\n{"execute": "stop", "id": 7}\n{"event": "STOP"}\n'
    assert.equal(#rest, c:write(rest, 0))
    assert.same({ a = 1 }, next_message(conn))
    assert.equal("stop", next_message(conn).execute)
    local list = conn:drain(10)
    assert.equal(1, #list)
    assert.equal("STOP", list[1].event)
    -- and back: what the accepted conn writes, the client takes
    local reply = '{"return": {}, "id": 7}\n'
    assert.equal(#reply, conn:write(reply, 0))
    assert.same({ ["return"] = {}, id = 7 }, next_message(c))
    -- both ends are unix sockets of this process
    local cred = assert(conn:peercred())
    assert.equal(PID, cred.pid)
  end)

  it("accept() gives false when no client waits, and takes max_message", function()
    local path = dir() .. "/s.sock"
    local l = listen(path)
    assert.is_false(l:accept())
    assert.error_matches(function() l:accept(0) end, "max_message")
    local text = '{"long": "enough"}\n'
    local c = client(path)
    local conn = accept(l)  -- the default max_message
    assert.is_false(l:accept())
    local c2 = client(path)
    assert.equal(1, #core.poll({ l:fileno() }, TEST_TIMEOUT))
    local small = assert(l:accept(8))
    cleanup(function() small:close() end)
    assert.equal(#text, c:write(text, 0))
    assert.same({ long = "enough" }, next_message(conn))
    assert.equal(#text, c2:write(text, 0))
    core.poll({ small:fileno() }, TEST_TIMEOUT)
    local msg, err = small:take()
    assert.is_nil(msg)
    assert.equal("toolarge", err.kind)
  end)

  it("refuses a path a live listener owns (in_use), which keeps serving", function()
    local path = dir() .. "/s.sock"
    local l = listen(path)
    local second, err = core.listen_unix(path, 384)
    assert.is_nil(second)
    assert.equal("in_use", err.kind)
    assert.equal(path .. " is in use by a listening socket", err.message)
    -- the probe was a connect: it reaches the owner as a client that left
    local probe = accept(l)
    local _, perr = probe:take()
    assert.equal("closed", perr and perr.kind)
    local c = client(path)
    local conn = accept(l)
    assert(c:write('{"n": 1}\n', 0))
    assert.same({ n = 1 }, next_message(conn))
  end)

  it("replaces a stale socket (nobody listens on it)", function()
    local path = dir() .. "/s.sock"
    stale_socket(path)
    local refused, err = core.open_unix(path)
    assert.is_nil(refused)
    assert.equal("refused", err.kind)
    local l = listen(path)
    assert.equal("600", tmp.mode(path))
    client(path)
    accept(l)
  end)

  it("refuses to replace anything that is not a socket, and leaves it alone", function()
    local d = dir()
    local file = d .. "/file"
    tmp.write(file, "keep me")
    local l, err = core.listen_unix(file, 384)
    assert.is_nil(l)
    assert.equal("exists", err.kind)
    assert.equal(file .. " exists and is not a socket; refusing to replace it", err.message)
    assert.equal("keep me", tmp.read(file))
    -- nor a directory, nor a link to a stale socket
    assert(os.execute("mkdir " .. tmp.quote(d .. "/dir")))
    assert.equal("exists", select(2, core.listen_unix(d .. "/dir", 384)).kind)
    stale_socket(d .. "/stale")
    assert(os.execute("ln -s stale " .. tmp.quote(d .. "/link")))
    assert.equal("exists", select(2, core.listen_unix(d .. "/link", 384)).kind)
    assert.equal("socket", sh("stat -c %F " .. tmp.quote(d .. "/stale")))
  end)

  it("says why when the directory is missing", function()
    local path = dir() .. "/no/s.sock"
    local l, err = core.listen_unix(path, 384)
    assert.is_nil(l)
    assert.equal("io", err.kind)
    assert.matches("No such file or directory", err.message)
  end)

  it("close() removes its own socket, once, and nothing put in its place", function()
    local d = dir()
    local path = d .. "/s.sock"
    local l = listen(path)
    assert.is_true(tmp.exists(path))
    l:close()
    assert.is_false(tmp.exists(path))
    assert.equal(-1, l:fileno())
    assert.equal("qmp.Listener (closed)", tostring(l))
    assert.equal(path, l:path())
    assert.error_matches(function() l:accept() end, "closed qmp listener")
    l:close()  -- idempotent

    -- replaced meanwhile: the file there is someone else's
    local l2 = listen(path)
    assert(os.rename(path, d .. "/moved.sock"))
    tmp.write(path, "not yours")
    l2:close()
    assert.equal("not yours", tmp.read(path))
    assert.is_true(tmp.exists(d .. "/moved.sock"))  -- renamed: no longer at its path either
  end)

  it("is closed by garbage collection and by <close>", function()
    local d = dir()
    do
      local l <close> = assert(core.listen_unix(d .. "/a.sock", 384))
      assert.equal(d .. "/a.sock", l:path())
    end
    assert.is_false(tmp.exists(d .. "/a.sock"))
    local fd = assert(core.listen_unix(d .. "/b.sock", 384)):fileno()
    assert.is_true(is_open(fd))
    collectgarbage()
    collectgarbage()
    assert.is_false(tmp.exists(d .. "/b.sock"))
    assert.is_false(is_open(fd))
  end)
end)

describe("fds received over a unix conn", function()
  -- A TCP pair of luasocket's: fds to send that this process can observe.
  local function tcp_pair()
    local server = assert(socket.bind("127.0.0.1", 0))
    cleanup(function() server:close() end)
    local ip, port = server:getsockname()
    local near = assert(socket.connect(ip, port))
    local far = assert(server:accept())
    cleanup(function() near:close(); far:close() end)
    return near, far, math.tointeger(near:getfd())
  end

  -- A listener, a client of ours and the accepted conn.
  local function served()
    local path = dir() .. "/s.sock"
    local l = listen(path)
    local c = client(path)
    return c, accept(l)
  end

  it("arrive with the message, close-on-exec, as working fds; take_fds empties the stash", function()
    local c, conn = served()
    local _, far, sent = tcp_pair()
    -- the fd sent is not close-on-exec: the one received must be so by itself
    assert.equal(0, fd_flags(sent) & O_CLOEXEC)
    assert.same({}, conn:take_fds())
    assert(c:write('{"execute": "getfd", "arguments": {"fdname": "x"}}\n', 0, { sent }))
    assert.equal("getfd", next_message(conn).execute)
    local fds = conn:take_fds()
    assert.equal(1, #fds)
    local n = fds[1]:fileno()
    assert.are_not.equal(sent, n)
    assert.equal("qmp.Fd (fd=" .. n .. ")", tostring(fds[1]))
    assert.equal(link_of(sent), link_of(n))  -- the same socket
    assert.is_true(fd_flags(n) & O_CLOEXEC ~= 0, "FD_CLOEXEC")
    -- it works: the peer's bytes make it readable
    assert.same({}, core.poll({ n }, 0))
    assert(far:send("x"))
    assert.same({ 1 }, core.poll({ n }, TEST_TIMEOUT))
    assert.same({}, conn:take_fds())
    assert.equal(0, conn:dropped_fds())
    fds[1]:close()
    assert.is_false(is_open(n))
    assert.equal(-1, fds[1]:fileno())
    assert.equal("qmp.Fd (closed)", tostring(fds[1]))
    fds[1]:close()  -- idempotent
    assert.is_true(is_open(sent))
  end)

  it("several in one message come in order", function()
    local c, conn = served()
    local sent = {}
    for i = 1, 3 do sent[i] = select(3, tcp_pair()) end
    assert(c:write('{"n": 1}\n', 0, sent))
    next_message(conn)
    local fds = conn:take_fds()
    assert.equal(3, #fds)
    for i = 1, 3 do assert.equal(link_of(sent[i]), link_of(fds[i]:fileno())) end
  end)

  it("an fd object is closed by garbage collection and by <close>", function()
    local c, conn = served()
    local _, _, sent = tcp_pair()
    assert(c:write('{"n": 1}\n', 0, { sent, sent }))
    next_message(conn)
    local fds = conn:take_fds()
    local a, b = fds[1]:fileno(), fds[2]:fileno()
    do
      local f <close> = fds[1]
      assert.equal(a, f:fileno())
    end
    assert.is_false(is_open(a))
    assert.is_true(is_open(b))
    fds = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_false(is_open(b))
  end)

  it("not taken, are closed by conn:close() and by the conn's collection", function()
    local c, conn = served()
    local _, _, sent = tcp_pair()
    local target = link_of(sent)
    assert(c:write('{"n": 1}\n', 0, { sent, sent }))
    next_message(conn)
    local received = fds_linked_to(target)
    assert.equal(3, #received)  -- sent, and the two received
    conn:close()
    assert.same({ sent }, fds_linked_to(target))
    assert.same({}, conn:take_fds())

    local path = dir() .. "/s.sock"
    local l = listen(path)
    local c2 = client(path)
    assert.equal(1, #core.poll({ l:fileno() }, TEST_TIMEOUT))
    local conn2 = assert(l:accept())  -- no cleanup holds it
    assert(c2:write('{"n": 2}\n', 0, { sent }))
    next_message(conn2)
    assert.equal(2, #fds_linked_to(target))
    conn2 = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.same({ sent }, fds_linked_to(target))
  end)

  it("beyond the stash's room of MAX_FDS are closed and counted", function()
    local c, conn = served()
    local _, _, sent = tcp_pair()
    local target = link_of(sent)
    local list = {}
    for i = 1, core.MAX_FDS do list[i] = sent end
    assert.equal(16, core.MAX_FDS)
    assert(c:write('{"n": 1}\n', 0, list))
    assert(c:write('{"n": 2}\n', 0, list))
    next_message(conn)
    next_message(conn)
    assert.equal(core.MAX_FDS, conn:dropped_fds())
    assert.equal(1 + core.MAX_FDS, #fds_linked_to(target))
    local fds = conn:take_fds()
    assert.equal(core.MAX_FDS, #fds)
    for _, f in ipairs(fds) do f:close() end
    assert.same({ sent }, fds_linked_to(target))
  end)

  -- conn:write sends MAX_FDS at most: a sender in C sends more.
  it("more than MAX_FDS in one message: MAX_FDS kept, the rest counted dropped", function()
    local d = dir()
    local exe = d .. "/send_fds"
    local src = d .. "/send_fds.c"
    tmp.write(src, [[
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
/* send_fds PATH N FILE: connect to PATH, send {"n": 1} with N fds of FILE. */
int main(int argc, char **argv) {
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int n = atoi(argv[2]), fd = open(argv[3], O_RDONLY), s = socket(AF_UNIX, SOCK_STREAM, 0), i;
  char buf[CMSG_SPACE(sizeof(int) * 64)] = { 0 };
  static char text[] = "{\"n\": 1}\n";
  struct iovec iov = { .iov_base = text, .iov_len = sizeof text - 1 };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n) };
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  if (argc != 4 || n < 1 || n > 64 || fd < 0) return 2;
  strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
  for (i = 0; i < n; i++) memcpy(CMSG_DATA(cm) + i * sizeof(int), &fd, sizeof fd);
  if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0 || sendmsg(s, &msg, 0) != (ssize_t)iov.iov_len) return 1;
  return 0;
}
]])
    assert.equal("", sh("gcc -std=c99 -Wall -Werror -o " .. tmp.quote(exe) .. " " .. tmp.quote(src) .. " 2>&1"))
    local path = d .. "/s.sock"
    local l = listen(path)
    local file = d .. "/payload"
    tmp.write(file, "")
    assert(os.execute(tmp.quote(exe) .. " " .. tmp.quote(path) .. " 17 " .. tmp.quote(file)))
    local conn = accept(l)  -- the sender is gone: what it sent waits in the socket
    assert.same({ n = 1 }, next_message(conn))
    assert.equal(1, conn:dropped_fds())
    assert.equal(core.MAX_FDS, #fds_linked_to(file))
    local fds = conn:take_fds()
    assert.equal(core.MAX_FDS, #fds)
    for _, f in ipairs(fds) do
      assert.equal(file, link_of(f:fileno()))
      f:close()
    end
    assert.same({}, fds_linked_to(file))
  end)
end)

describe("poller:fileno()", function()
  it("is the epoll fd, readable once a watched fd is", function()
    local path = dir() .. "/s.sock"
    local l = listen(path)
    local p = assert(core.poller("epoll"))
    cleanup(function() p:close() end)
    local fd = p:fileno()
    assert.is_true(fd >= 0)
    assert.is_true(fd_flags(fd) & O_CLOEXEC ~= 0)
    assert(p:set(l:fileno(), "r"))
    assert.same({}, core.poll({ fd }, 0))
    client(path)
    assert.same({ 1 }, core.poll({ fd }, TEST_TIMEOUT))
    -- and from another poller too
    local outer = assert(core.poller("poll"))
    cleanup(function() outer:close() end)
    assert(outer:set(fd, "r"))
    local out = {}
    assert.equal(1, outer:wait(TEST_TIMEOUT, out))
    assert.equal(fd, out[1])
    -- the client accepted, nothing is ready: no longer readable
    accept(l)
    assert.same({}, core.poll({ fd }, 0))
    p:close()
    assert.equal(-1, p:fileno())
  end)

  it("is -1 for the poll backend", function()
    local p = assert(core.poller("poll"))
    cleanup(function() p:close() end)
    assert.equal(-1, p:fileno())
  end)
end)
