-- core.poller: the persistent (fd, interest) set under qmp.loop, both
-- backends (epoll, and the poll() one used where there is no epoll).
local core = require "qmp.core"
local socket = require "socket"

local cleanup = require("support.cleanup")(after_each)

local PID = tonumber(io.open("/proc/self/stat"):read("l"):match("^(%d+)"))

-- n connected TCP pairs on 127.0.0.1: { near = client socket, far = accepted }.
local function pairs_of(n)
  local server = assert(socket.bind("127.0.0.1", 0))
  cleanup(function() server:close() end)
  local ip, port = server:getsockname()
  local list = {}
  for i = 1, n do
    local near = assert(socket.connect(ip, port))
    local far = assert(server:accept())
    cleanup(function() near:close(); far:close() end)
    list[i] = { near = near, far = far, fd = math.tointeger(near:getfd()) }
  end
  return list
end

local function set_of(out, n)
  local s = {}
  for i = 1, n do s[out[i]] = true end
  return s
end

for _, backend in ipairs({ "epoll", "poll" }) do
  describe("core.poller (" .. backend .. ")", function()
    local function new()
      local p = assert(core.poller(backend))
      cleanup(function() p:close() end)
      assert.equal(backend, p:backend())
      return p
    end

    it("reports a watched fd once readable, and no more once unset", function()
      local p, pair, out = new(), pairs_of(2), {}
      assert.is_true(p:set(pair[1].fd, "r"))
      assert.is_true(p:set(pair[2].fd, "r"))
      assert.equal(0, p:wait(0, out))
      pair[2].far:send("x")
      assert.equal(1, p:wait(2, out))
      assert.equal(pair[2].fd, out[1])
      assert.equal(1, p:wait(0, out))   -- level-triggered: still unread
      p:unset(pair[2].fd)
      p:unset(pair[2].fd)               -- not watched: nothing to do
      assert.equal(0, p:wait(0, out))
    end)

    it("changes an fd's interest in place", function()
      local p, pair, out = new(), pairs_of(1), {}
      assert.is_true(p:set(pair[1].fd, "r"))
      assert.equal(0, p:wait(0, out))
      assert.is_true(p:set(pair[1].fd, "w"))   -- an empty send buffer: writable now
      assert.equal(1, p:wait(1, out))
      assert.is_true(p:set(pair[1].fd, "rw"))
      assert.equal(1, p:wait(1, out))
      assert.is_true(p:set(pair[1].fd, "r"))
      assert.equal(0, p:wait(0, out))
    end)

    it("waits the timeout when nothing is ready, and forever means until ready", function()
      local p, pair, out = new(), pairs_of(1), {}
      p:set(pair[1].fd, "r")
      local t0 = core.monotime()
      assert.equal(0, p:wait(0.1, out))
      assert.is_true(core.monotime() - t0 >= 0.09)
      pair[1].far:send("x")
      assert.equal(1, p:wait(nil, out))
    end)

    it("reports 300 ready fds over two waits, none lost, none twice in one wait", function()
      local p, list, out = new(), pairs_of(300), {}
      for _, pair in ipairs(list) do
        p:set(pair.fd, "r")
        pair.far:send("x")
      end
      local seen, by_fd = {}, {}
      for _, pair in ipairs(list) do by_fd[pair.fd] = pair end
      for _ = 1, 2 do
        local n = assert(p:wait(1, out))
        assert.is_true(n <= 256)
        local once = {}
        for i = 1, n do
          assert.is_nil(once[out[i]])
          once[out[i]] = true
          seen[out[i]] = true
          by_fd[out[i]].near:receive(1)   -- served: not ready any more
        end
      end
      for _, pair in ipairs(list) do assert.is_true(seen[pair.fd], pair.fd) end
    end)

    it("forgets an fd that a removal moved around: the others stay watched", function()
      local p, list, out = new(), pairs_of(5), {}
      for _, pair in ipairs(list) do p:set(pair.fd, "r") end
      p:unset(list[2].fd)
      p:unset(list[1].fd)
      for _, pair in ipairs(list) do pair.far:send("x") end
      local n = p:wait(1, out)
      assert.same({ [list[3].fd] = true, [list[4].fd] = true, [list[5].fd] = true }, set_of(out, n))
    end)

    it("ends a wait with kind interrupted while a caught signal is pending", function()
      local p, pair, out = new(), pairs_of(1), {}
      p:set(pair[1].fd, "r")
      assert(core.catch_signals({ "TERM" }))   -- system() ignores SIGINT while it waits
      cleanup(function() core.take_signal(); core.release_signals() end)
      os.execute("kill -TERM " .. PID)
      local n, err = p:wait(5, out)
      assert.is_nil(n)
      assert.equal("interrupted", err.kind)
    end)

    it("raises on misuse: a bad interest, a negative fd, a closed poller", function()
      local p = new()
      assert.has_error(function() p:set(0, "x") end)
      assert.has_error(function() p:set(-1, "r") end)
      assert.has_error(function() p:wait(0) end)
      p:close()
      assert.has_error(function() p:wait(0, {}) end)
    end)
  end)
end

describe("core.poller", function()
  it("refuses an unknown backend", function()
    assert.has_error(function() core.poller("kqueue") end)
  end)

  it("epoll: says io for an fd that is not open", function()
    local p = assert(core.poller("epoll"))
    local pair = pairs_of(1)
    local fd = pair[1].fd
    pair[1].near:close()
    local ok, err = p:set(fd, "r")
    assert.is_nil(ok)
    assert.equal("io", err.kind)
    p:close()
  end)
end)
