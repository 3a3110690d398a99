-- qmp.mux against the scripted fake QEMU (support.fake_qmp) as upstream,
-- in-process: the mux is served by the upstream client's own loop, which
-- the spec drives (vm:run with a done test, bounded), and the downstream
-- clients are plain qmp.core connections that read and write raw QMP.
-- QEMU's answers below are the ones QEMU 7.2 gives on its own monitor.
local qmp = require "qmp"
local core = require "qmp.core"
local fake = require "support.fake_qmp"
local tmp = require "support.tmp"
local finish = require("support.conn").finish

local cleanup = require("support.cleanup")(after_each)
local serve, connect = fake.bound(cleanup)
local OK = fake.reply("{}")
local NOT_NEGOTIATED = "Expecting capabilities negotiation with 'qmp_capabilities'"
local NEGOTIATED = "Capabilities negotiation is already complete, command ignored"

local PID = tonumber(io.open("/proc/self/stat"):read("l"):match("^(%d+)"))
local UID = tonumber(io.popen("id -u"):read("l"))

-- An event line with a timestamp of its own (microseconds us).
local function event(name, data_json, us)
  return ('{"event": "%s"%s, "timestamp": {"seconds": 1700000000, "microseconds": %d}}\r\n')
         :format(name, data_json and (', "data": ' .. data_json) or "", us or 1)
end

-- The upstream: the fake peer greeting (opts.capabilities, default oob)
-- and negotiating, then steps, then holding the connection; vm, its
-- client (opts.connect: qmp.connect's options).  Both end after the test.
local function upstream(steps, opts)
  opts = opts or {}
  local all = { { greet = { capabilities = opts.capabilities or { "oob" } } },
                { expect = "qmp_capabilities", reply = OK } }
  for _, step in ipairs(steps or {}) do all[#all + 1] = step end
  all[#all + 1] = { hold = 30 }
  local srv = serve(all)
  local vm = connect(srv, opts.connect or { timeout = 5 })
  vm.reported = {}
  vm.on_error = function(err) vm.reported[#vm.reported + 1] = err end
  return vm, srv
end

-- qmp.mux(vm) on a fresh path (opts: more of its options), closed after the test.
local function mux(vm, opts)
  opts = opts or {}
  opts.listen = opts.listen or tmp.socket_path(cleanup)
  local m = assert(qmp.mux(vm, opts))
  cleanup(function() m:close() end)
  return m
end

-- Run vm's loop until done() is true, at most TEST_TIMEOUT seconds.
local function drive(vm, done, what)
  local ok, err = vm:run({ timeout = TEST_TIMEOUT, done = done })
  assert(ok, ("waiting for %s: %s"):format(what or "the mux", tostring(err)))
end

-- {==================== downstream clients: raw QMP over a qmp.core conn

local Down = {}
Down.__index = Down

-- A client of m; vm is the loop that serves m.
local function downstream(m, vm)
  local conn, connected = assert(core.open_unix(m.path))
  cleanup(function() conn:close() end)
  finish(conn, connected)
  return setmetatable({ conn = conn, vm = vm, m = m, queue = {}, ended = nil }, Down)
end

-- Take every whole message the socket holds into self.queue; an end of
-- the stream into self.ended.
function Down:pull()
  while not self.ended do
    local msg, err = self.conn:take()
    if msg then
      self.queue[#self.queue + 1] = msg
    elseif msg == false then
      return
    else
      self.ended = err
    end
  end
end

-- The next message, running the loop until it comes.
function Down:next(what)
  what = what or "a message"
  if not self.queue[1] then
    drive(self.vm, function()
      self:pull()
      return self.queue[1] ~= nil or self.ended ~= nil
    end, what)
  end
  assert(self.queue[1], what .. ": the mux disconnected the client: " .. tostring(self.ended))
  return table.remove(self.queue, 1)
end

-- Run the loop until the mux has sent n messages (queued) to the client.
function Down:wait_for(n, what)
  drive(self.vm, function()
    self:pull()
    return #self.queue >= n or self.ended ~= nil
  end, what)
  assert(#self.queue >= n, what .. ": the mux disconnected the client: " .. tostring(self.ended))
end

-- Nothing has come for this client (the mux writes to every client in
-- the step it handles a message, so what it sent is there already).
function Down:nothing_more()
  self:pull()
  assert.same({}, self.queue)
  assert.is_nil(self.ended)
end

function Down:send(text)
  assert.equal(#text, self.conn:write(text, 0))
end

function Down:request(t)
  self:send(qmp.encode(t) .. "\n")
end

-- Wait for the mux to end the connection; the end's error.
function Down:ends()
  if not self.vm:closed() then
    self.vm:run({ timeout = TEST_TIMEOUT, done = function()
      self:pull()
      return self.ended ~= nil
    end })
  end
  local deadline = core.monotime() + TEST_TIMEOUT
  while not self.ended do   -- a closed vm: what the mux sent is in the socket already
    self:pull()
    assert(self.ended or core.monotime() < deadline, "the mux did not disconnect the client")
    if not self.ended then core.poll({ self.conn:fileno() }, 0.1) end
  end
  return self.ended
end

-- What m:clients() says of this client.
function Down:info()
  for _, c in ipairs(self.m:clients()) do
    if c.serial == self.serial then return c end
  end
end

-- A client greeted (c.greeting) and not negotiated.
local function greeted(m, vm)
  local c = downstream(m, vm)
  c.greeting = c:next("the greeting")
  local list = m:clients()
  c.serial = list[#list].serial   -- the newest
  return c
end

-- A client greeted and negotiated, with the capabilities in enable (a list).
local function negotiated(m, vm, enable)
  local c = greeted(m, vm)
  c:request({ execute = "qmp_capabilities", arguments = enable and { enable = qmp.array(enable) } or nil,
              id = "cap" })
  assert.same({ ["return"] = {}, id = "cap" }, c:next("the negotiation's reply"))
  return c
end

-- }==================== downstream clients

local function error_reply(class, desc, id)
  return { error = { class = class, desc = desc }, id = id }
end

describe("qmp.mux: greeting and negotiation", function()
  it("greets every client with the upstream's greeting, version and capabilities", function()
    local vm = upstream()
    local m = mux(vm)
    local a, b = greeted(m, vm), greeted(m, vm)
    assert.same(qmp.decode(fake.greeting), a.greeting)
    assert.same(a.greeting, b.greeting)
    assert.same(vm.greeting, a.greeting)
    assert.equal(22, a.greeting.QMP.version.qemu.micro)
    a:nothing_more()
  end)

  it("passes on an upstream's greeting without oob", function()
    local vm = upstream({}, { capabilities = {} })
    local m = mux(vm)
    local a = greeted(m, vm)
    assert.same(qmp.decode(fake.greeting_with({})), a.greeting)
    assert.equal(0, #a.greeting.QMP.capabilities)
  end)

  it("grants oob to a client that asks when the upstream offered it; exec-oob is forwarded as such", function()
    local vm, srv = upstream({
      { expect = "migrate-pause", expect_args = '"exec%-oob"', reply = OK },
    })
    local m = mux(vm)
    local a = negotiated(m, vm, { "oob" })
    local b = negotiated(m, vm)
    assert.is_true(a:info().oob)
    assert.is_false(b:info().oob)
    -- b did not ask: exec-oob is a member QEMU does not expect from it
    b:send('{"exec-oob": "migrate-pause", "id": "b1"}\n')
    assert.same(error_reply("GenericError", "QMP input member 'exec-oob' is unexpected", "b1"), b:next())
    a:send('{"exec-oob": "migrate-pause", "id": "a1"}\n')
    assert.same({ ["return"] = {}, id = "a1" }, a:next())
    assert.matches('"exec%-oob":"migrate%-pause"', srv:received()[2])
  end)

  it("refuses oob when the upstream did not offer it: 'Capability oob not available', still not negotiated", function()
    local vm = upstream({}, { capabilities = {} })
    local m = mux(vm)
    local a = greeted(m, vm)
    a:send('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1}\n')
    assert.same(error_reply("GenericError", "Capability oob not available", 1), a:next())
    a:send('{"execute": "query-status", "id": 2}\n')
    assert.same(error_reply("CommandNotFound", NOT_NEGOTIATED, 2), a:next())
    assert.is_false(a:info().negotiated)
    a:send('{"execute": "qmp_capabilities", "id": 3}\n')
    assert.same({ ["return"] = {}, id = 3 }, a:next())
    assert.is_true(a:info().negotiated)
    assert.is_false(a:info().oob)
  end)

  it("answers any command before negotiation, and a second qmp_capabilities, as QEMU does", function()
    local vm, srv = upstream({ { expect = "query-name", reply = fake.reply('{"name": "vm1"}') } })
    local m = mux(vm)
    local a = greeted(m, vm)
    a:send('{"execute": "query-status", "id": "early"}\n')
    assert.same(error_reply("CommandNotFound", NOT_NEGOTIATED, "early"), a:next())
    a:send('{"execute": "qmp_capabilities"}\n')
    assert.same({ ["return"] = {} }, a:next())
    a:send('{"execute": "qmp_capabilities", "id": "again"}\n')
    assert.same(error_reply("CommandNotFound", NEGOTIATED, "again"), a:next())
    a:send('{"execute": "query-name", "id": "n"}\n')
    assert.same({ ["return"] = { name = "vm1" }, id = "n" }, a:next())
    -- nothing but query-name went upstream (the peer would have failed on anything else)
    local received = srv:received()
    assert.equal(2, #received, table.concat(received, "\n"))
    assert.matches('"query%-name"', received[2])
  end)

  -- Each line and QEMU 7.2's answer to it, on a monitor without oob.
  local MALFORMED = {
    { "missing execute", '{"id": 5}', error_reply("GenericError", "QMP input lacks member 'execute'", 5) },
    { "execute not a string", '{"execute": 5, "id": 6}',
      error_reply("GenericError", "QMP input member 'execute' must be a string", 6) },
    { "arguments not an object", '{"execute": "query-status", "arguments": [1], "id": 7}',
      error_reply("GenericError", "QMP input member 'arguments' must be an object", 7) },
    { "an unexpected member", '{"execute": "query-status", "foo": 1, "id": 8}',
      error_reply("GenericError", "QMP input member 'foo' is unexpected", 8) },
    { "execute and exec-oob together", '{"execute": "query-status", "exec-oob": "query-status", "id": 9}',
      error_reply("GenericError", "QMP input member 'exec-oob' is unexpected", 9) },
    { "exec-oob without oob", '{"exec-oob": "query-status", "id": 10}',
      error_reply("GenericError", "QMP input member 'exec-oob' is unexpected", 10) },
  }

  it("answers malformed requests as QEMU does, before and after negotiation, and forwards none", function()
    local vm, srv = upstream({ { expect = "query-name", reply = fake.reply('{"name": "vm1"}') } })
    local m = mux(vm)
    local early, late = greeted(m, vm), negotiated(m, vm)
    for _, case in ipairs(MALFORMED) do
      for _, c in ipairs({ early, late }) do
        c:send(case[2] .. "\n")
        assert.same(case[3], c:next(case[1]), case[1])
      end
    end
    assert.is_false(early:info().negotiated)
    late:send('{"execute": "query-name", "id": "n"}\n')
    assert.same({ ["return"] = { name = "vm1" }, id = "n" }, late:next())
    assert.equal(2, #srv:received(), table.concat(srv:received(), "\n"))
  end)

  -- QEMU answers "QMP input must be a JSON object" (without id) and reads on.
  it("answers a request that is not a JSON object as QEMU does", function()
    local vm = upstream()
    local m = mux(vm)
    local a = negotiated(m, vm)
    a:send('[1, 2]\n')
    a:wait_for(1, "the answer to [1, 2]")
    assert.same(error_reply("GenericError", "QMP input must be a JSON object"), a.queue[1])
  end)

  -- QEMU reads on after it; the mux's framer stops at a top-level value that
  -- is not an object (see docs/decisions.md), so it answers, then disconnects.
  it("answers a top-level string as QEMU does, then disconnects the client", function()
    local vm = upstream()
    local m = mux(vm)
    local a = negotiated(m, vm)
    a:send('"query-status"\n{"execute": "query-name", "id": "n"}\n')
    a:wait_for(1, "the answer to a string")
    assert.same(error_reply("GenericError", "QMP input must be a JSON object"), a.queue[1])
    assert.is_true(vm:run({ timeout = 5, done = function() return #m:clients() == 0 end }))
  end)

  -- QEMU answers "JSON parse error, ..." and reads on; the mux's framer
  -- cannot find the next request in a broken stream, so it disconnects the
  -- client, but QEMU's answer must reach it first.
  it("answers a request that is not JSON before it disconnects the client", function()
    local vm = upstream()
    local m = mux(vm)
    local a = negotiated(m, vm)
    a:send('{"execute": "query-status", "id": }\n')
    assert.equal("closed", a:ends().kind)
    assert.equal(1, #a.queue, "no answer before the disconnect")
    assert.equal("GenericError", a.queue[1].error.class)
    assert.matches("^JSON parse error, ", a.queue[1].error.desc)
    assert.is_nil(a.queue[1].id)
    assert.same({}, m:clients())
  end)

  it("checks qmp_capabilities' arguments as QEMU does; a refused negotiation leaves the client unnegotiated", function()
    local vm = upstream()
    local m = mux(vm)
    local a = greeted(m, vm)
    local cases = {
      { '{"foo": 1}', "Parameter 'foo' is unexpected" },
      { '{"enable": "oob"}', "Invalid parameter type for 'enable', expected: array" },
      { '{"enable": null}', "Invalid parameter type for 'enable', expected: array" },
      { '{"enable": ["bogus"]}', "Parameter 'null' does not accept value 'bogus'" },
      { '{"enable": ["oob", "bogus"]}', "Parameter 'null' does not accept value 'bogus'" },
    }
    for i, case in ipairs(cases) do
      a:send(('{"execute": "qmp_capabilities", "arguments": %s, "id": %d}\n'):format(case[1], i))
      assert.same(error_reply("GenericError", case[2], i), a:next(case[1]), case[1])
      assert.is_false(a:info().negotiated)
    end
    a:send('{"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": "empty"}\n')
    assert.same({ ["return"] = {}, id = "empty" }, a:next())
    assert.is_true(a:info().negotiated)
    assert.is_false(a:info().oob)
  end)

  it("names a capability that is not a string as QEMU does ('enable[0]')", function()
    local vm = upstream()
    local m = mux(vm)
    local a = greeted(m, vm)
    a:send('{"execute": "qmp_capabilities", "arguments": {"enable": [1]}, "id": 1}\n')
    assert.same(error_reply("GenericError", "Invalid parameter type for 'enable[0]', expected: string", 1), a:next())
    assert.is_false(a:info().negotiated)
  end)

  -- Which of the two members QEMU names is its own fixed order; the mux's
  -- check must not depend on the order Lua's pairs() happens to take in a
  -- process (its string hashes are seeded per process): so it is asked in
  -- several processes.
  it("answers execute and exec-oob together from an oob client as QEMU does, in every process", function()
    local N = 8
    local srv = fake.start_many(N)
    cleanup(function() srv:stop() end)
    local dir = tmp.dir("qmpclash")
    cleanup(function() tmp.remove(dir) end)
    local child = [[
      local qmp, core = require "qmp", require "qmp.core"
      local vm = assert(qmp.connect(os.getenv("UP"), { timeout = 5 }))
      local m = assert(qmp.mux(vm, { listen = os.getenv("SOCK") }))
      local c, connected = assert(core.open_unix(m.path))
      if not connected then core.poll({ c:fileno() }, 5, { "w" }); assert(c:finish_connect()) end
      c:write('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\n' ..
              '{"execute": "query-status", "exec-oob": "query-status", "id": 9}\n', 0)
      local got = {}
      assert(vm:run({ timeout = 5, done = function()
        local msg = c:take()
        while msg do got[#got + 1] = msg; msg = c:take() end
        return #got >= 3
      end }))
      io.write(got[3].error.desc, "\n")
      m:close(); vm:close()
    ]]
    local env = ("LUA_PATH_5_4=%s LUA_CPATH_5_4=%s UP=%s"):format(tmp.quote(package.path),
                                                                  tmp.quote(package.cpath), tmp.quote(srv.path))
    local script = {}
    for i = 1, N do
      script[#script + 1] = ("SOCK=%s/%d.sock %s lua5.4 -e %s >%s/%d.out 2>&1 &"):format(dir, i, env,
                                                                                      tmp.quote(child), dir, i)
    end
    script[#script + 1] = "wait"
    os.execute(table.concat(script, "\n"))
    for i = 1, N do
      assert.equal("QMP input member 'execute' clashes with 'exec-oob'\n", tmp.read(("%s/%d.out"):format(dir, i)),
                   "process " .. i)
    end
  end)
end)

describe("qmp.mux: commands", function()
  it("routes each reply back with the client's own id: string, number, object, null or none", function()
    local status = fake.reply('{"status": "paused", "running": false}')
    local steps = {}
    for i = 1, 5 do steps[i] = { expect = "query-status", reply = status } end
    local vm, srv = upstream(steps)
    local m = mux(vm)
    local a = negotiated(m, vm)
    local value = { status = "paused", running = false }
    a:send('{"execute": "query-status", "id": "s-1"}\n')
    assert.same({ ["return"] = value, id = "s-1" }, a:next())
    a:send('{"execute": "query-status", "id": 42}\n')
    assert.same({ ["return"] = value, id = 42 }, a:next())
    a:send('{"execute": "query-status", "id": {"n": [1, "}"], "k": null}}\n')
    local reply = a:next()
    assert.same({ n = { 1, "}" }, k = qmp.null }, reply.id)
    a:send('{"execute": "query-status", "id": null}\n')
    reply = a:next()
    assert.equal(qmp.null, reply.id)
    assert.same(value, reply["return"])
    a:send('{"execute": "query-status"}\n')
    reply = a:next()
    assert.is_nil(reply.id)
    assert.same({ ["return"] = value }, reply)
    -- upstream, the ids are the mux's own
    local received = srv:received()
    for i = 2, 6 do assert.matches('"id":"qmp#%d+"', received[i]) end
  end)

  it("gives two clients that use the same id at once each its own answer, answered in the other order", function()
    local vm, srv = upstream({
      { expect = "query-status", save = "a" }, { expect = "query-status", save = "b" },
      { send = '{"return": {"who": "second"}, "id": %ID:b}\r\n' },
      { send = '{"return": {"who": "first"}, "id": %ID:a}\r\n' },
    })
    local m = mux(vm)
    local a, b = negotiated(m, vm), negotiated(m, vm)
    a:send('{"execute": "query-status", "id": 1}\n')
    drive(vm, function() return a:info().inflight == 1 end, "a's command to go upstream")
    b:send('{"execute": "query-status", "id": 1}\n')
    assert.same({ ["return"] = { who = "second" }, id = 1 }, b:next())
    assert.same({ ["return"] = { who = "first" }, id = 1 }, a:next())
    local received = srv:received()
    assert.are_not.equal(received[2]:match('"id":("[^"]*")'), received[3]:match('"id":("[^"]*")'))
    assert.equal(0, a:info().inflight)
    assert.equal(0, b:info().inflight)
  end)

  it("passes an upstream error reply on as QEMU sent it, with the client's id, and the arguments upstream", function()
    local vm, srv = upstream({
      { expect = "device_del", expect_args = '"nic9"',
        reply = [[{"error": {"class": "DeviceNotFound", "desc": "Device 'nic9' not found"}, "id": %ID}]] },
    })
    local m = mux(vm)
    local a = negotiated(m, vm)
    a:send('{"execute": "device_del", "arguments": {"id": "nic9"}, "id": "del"}\n')
    assert.same(error_reply("DeviceNotFound", "Device 'nic9' not found", "del"), a:next())
    assert.equal(2, #srv:received())
  end)

  it("answers a malformed upstream reply with a GenericError instead of leaving the client waiting", function()
    local vm = upstream({ { expect = "query-name", reply = '{"id": %ID}' } })
    local m = mux(vm)
    local a = negotiated(m, vm)
    a:send('{"execute": "query-name", "id": "q"}\n')
    local answer = a:next()
    assert.equal("q", answer.id)
    assert.equal("GenericError", answer.error.class)
    assert.matches("neither return nor error", answer.error.desc)
    assert.equal(0, m:clients()[1].inflight)
  end)

  -- QEMU answers a request it cannot parse with an error without id.  With
  -- one command in flight upstream, it can only be that one's answer: the
  -- session takes it as such, and the client gets it with its own id.
  it("answers the one command in flight with an upstream error that has no id, and goes on", function()
    local vm = upstream({
      { expect = "query-status" },
      { send = '{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}}\r\n' },
      { expect = "query-name", reply = fake.reply('{"name": "vm1"}') },
    })
    local m = mux(vm)
    local a, b = negotiated(m, vm), negotiated(m, vm)
    a:send('{"execute": "query-status", "id": "q"}\n')
    assert.same(error_reply("GenericError", "JSON parse error, invalid keyword", "q"), a:next())
    b:nothing_more()
    b:send('{"execute": "query-name", "id": "n"}\n')
    assert.same({ ["return"] = { name = "vm1" }, id = "n" }, b:next())
    assert.equal("ready", vm.state)
  end)

  -- With two in flight nobody can tell which one it answers: the session
  -- ends the connection (kind protocol), so without reconnect every client
  -- is disconnected and the mux closes.
  it("disconnects every client when an error without id comes while two commands are in flight", function()
    local vm = upstream({
      { expect = "query-status" }, { expect = "query-status" },
      { send = '{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}}\r\n' },
    })
    local m = mux(vm)
    local a, b = negotiated(m, vm), negotiated(m, vm)
    a:send('{"execute": "query-status", "id": "a"}\n')
    drive(vm, function() return a:info().inflight == 1 end, "a's command to go upstream")
    b:send('{"execute": "query-status", "id": "b"}\n')
    assert.equal("closed", a:ends().kind)
    assert.equal("closed", b:ends().kind)
    assert.same({}, a.queue)
    assert.same({}, b.queue)
    assert.is_true(vm:closed())
    assert.equal("closed", vm:last_error().kind)
    assert.matches("an error reply without an id .* while 2 commands are in flight", vm:last_error().message)
    assert.is_true(m:closed())
    assert.is_false(tmp.exists(m.path))
  end)

  it("takes many requests sent in one write, answering each in order", function()
    local N = 150
    local steps = {}
    for i = 1, N do steps[i] = { expect = "query-status", reply = fake.reply('{"status": "running", "running": true}') } end
    local vm = upstream(steps)
    local m = mux(vm)
    local a = negotiated(m, vm)
    local lines = {}
    for i = 1, N do lines[i] = ('{"execute": "query-status", "id": %d}\n'):format(i) end
    a:send(table.concat(lines))
    a:wait_for(N, "every answer")
    for i = 1, N do assert.equal(i, a.queue[i].id) end
  end)

  it("cuts a client that does not read once max_buffer is queued for it; the others get everything", function()
    local N = 20000
    local vm, srv = upstream({ { wait_for = "go" }, { flood = { count = N, data = '{"n": %d}' } } })
    local said = {}
    local m = mux(vm, { max_buffer = 64 * 1024, log = function(line) said[#said + 1] = line end })
    local slow, fast = negotiated(m, vm), negotiated(m, vm)
    srv:tell("go")
    fast:wait_for(N, "the whole flood")
    for i = 1, N do assert.equal(i, fast.queue[i].data.n) end
    assert.equal("closed", slow:ends().kind)
    assert.is_true(#slow.queue < N)
    for i, ev in ipairs(slow.queue) do assert.equal(i, ev.data.n) end
    assert.same({ fast.serial }, { m:clients()[1].serial })
    assert.equal(1, #vm.reported)
    assert.equal("overflow", vm.reported[1].kind)
    assert.matches("client " .. slow.serial .. " %(pid %d+, uid %d+%) cut", vm.reported[1].message)
    assert.matches("client " .. slow.serial .. " .*cut", table.concat(said, "\n"))
  end)

  it("drops the reply to a client that left with a command in flight; the others go on", function()
    local vm, srv = upstream({
      { expect = "query-status", save = "gone" }, { wait_for = "answer" },
      { send = '{"return": {"status": "running", "running": true}, "id": %ID:gone}\r\n' },
      { expect = "query-name", reply = fake.reply('{"name": "vm1"}') },
    })
    local m = mux(vm)
    local a, b = negotiated(m, vm), negotiated(m, vm)
    local replies = vm.stats.replies
    a:send('{"execute": "query-status", "id": "q"}\n')
    drive(vm, function() return a:info().inflight == 1 end, "a's command to go upstream")
    a.conn:close()
    drive(vm, function() return #m:clients() == 1 end, "the mux to see a leave")
    assert.equal(b.serial, m:clients()[1].serial)
    srv:tell("answer")   -- the peer answers a's command now, then b's
    b:send('{"execute": "query-name", "id": "n"}\n')
    assert.same({ ["return"] = { name = "vm1" }, id = "n" }, b:next())
    assert.equal(replies + 2, vm.stats.replies)
    assert.equal(0, vm.stats.unknown)
    b:nothing_more()
    assert.same({}, vm.reported)
  end)
end)

describe("qmp.mux: events", function()
  it("sends every event to every negotiated client in the upstream's order, none to one not negotiated", function()
    local first = event("STOP", nil, 1) .. event("RESUME", nil, 2) ..
                  event("RTC_CHANGE", '{"offset": 5, "qom-path": "/machine/unattached/device[0]"}', 3)
    local vm, srv = upstream({
      { wait_for = "go" }, { send = first },
      { wait_for = "more" }, { send = event("BLOCK_JOB_READY", '{"device": "j0", "len": 9}', 4) },
    })
    local m = mux(vm)
    local a, b = negotiated(m, vm), negotiated(m, vm)
    local c = greeted(m, vm)
    srv:tell("go")
    a:wait_for(3, "a's events")
    b:wait_for(3, "b's events")
    local want = {}
    for line in first:gmatch("[^\r\n]+") do want[#want + 1] = qmp.decode(line) end
    assert.same(want, a.queue)
    assert.same(want, b.queue)
    c:nothing_more()
    -- c negotiates: what came before is not for it, what comes after is
    c:send('{"execute": "qmp_capabilities", "id": "c"}\n')
    assert.same({ ["return"] = {}, id = "c" }, c:next())
    srv:tell("more")
    for _, x in ipairs({ a, b, c }) do x:wait_for(x == c and 1 or 4, "the fourth event") end
    local ready = qmp.decode(event("BLOCK_JOB_READY", '{"device": "j0", "len": 9}', 4))
    assert.same({ ready }, c.queue)
    assert.same(ready, a.queue[4])
    assert.same(ready, b.queue[4])
  end)

  -- A flood runs while a client negotiates: it gets its reply first, then
  -- an unbroken tail of the flood, in order; earlier events go only to
  -- the clients negotiated then.
  it("sends a client no event the upstream sent during its negotiation before its negotiation reply", function()
    local N = 20000
    local vm, srv = upstream({
      { wait_for = "go" }, { flood = { count = N, data = '{"n": %d}' } },
    })
    local m = mux(vm)
    local a = negotiated(m, vm)
    local b = greeted(m, vm)
    srv:tell("go")
    a:wait_for(100, "the flood to start")
    local before = #a.queue
    b:send('{"execute": "qmp_capabilities", "id": "b"}\n')
    drive(vm, function()
      a:pull(); b:pull()
      return #a.queue >= N and (b.queue[#b.queue] or {}).data ~= nil and b.queue[#b.queue].data.n == N
    end, "the whole flood")
    for i, ev in ipairs(a.queue) do
      assert(ev.event == "RTC_CHANGE" and ev.data.n == i, "a: event " .. i .. " is not the flood's " .. i)
    end
    assert.same({ ["return"] = {}, id = "b" }, b.queue[1])
    local k = b.queue[2].data.n
    assert(k > before, ("b got event %d, which a had before b asked to negotiate"):format(k))
    assert.equal(N - k + 2, #b.queue)
    for i = 2, #b.queue do assert.equal(k + i - 2, b.queue[i].data.n) end
  end)

  it("keeps the upstream's order of events and replies: an event sent before a reply arrives before it", function()
    local around = event("STOP", nil, 1) .. '{"return": {}, "id": %ID}\r\n' .. event("RESUME", nil, 2)
    local vm = upstream({ { expect = "stop" }, { send = around } })
    local m = mux(vm)
    local a, b = negotiated(m, vm), negotiated(m, vm)
    a:send('{"execute": "stop", "id": "s"}\n')
    a:wait_for(3, "the event, the reply, the event")
    assert.same({ "STOP", "reply", "RESUME" }, {
      a.queue[1].event, a.queue[2].id == "s" and "reply" or "?", a.queue[3].event })
    b:wait_for(2, "both events")
    assert.same({ "STOP", "RESUME" }, { b.queue[1].event, b.queue[2].event })
  end)
end)

describe("qmp.mux: the upstream connection", function()
  it("disconnects every client when the upstream is lost; vm closed for good: the mux closes, its socket goes", function()
    local vm, srv = upstream({ { wait_for = "bye" }, { close = true } })
    local m = mux(vm)
    local a, b = negotiated(m, vm), negotiated(m, vm)
    local c = greeted(m, vm)
    assert.is_true(tmp.exists(m.path))
    srv:tell("bye")
    for _, x in ipairs({ a, b, c }) do assert.equal("closed", x:ends().kind) end
    assert.is_true(vm:closed())
    assert.is_true(m:closed())
    assert.is_false(tmp.exists(m.path))
    assert.same({}, m:clients())
    assert.matches("closed%)$", tostring(m))
  end)

  it("with a reconnecting vm, keeps its socket and greets new clients for the new upstream", function()
    local srv = serve({
      { greet = true }, { expect = "qmp_capabilities", reply = OK },
      { wait_for = "bye" }, { close = true },
      { accept = true },
      { greet = { capabilities = {} } }, { expect = "qmp_capabilities", reply = OK },
      { expect = "query-status", reply = fake.reply('{"status": "paused", "running": false}') },
      { expect = "query-name", reply = fake.reply('{"name": "second"}') },
      { hold = 30 },
    })
    local vm = connect(srv, { timeout = 5, reconnect = { min = 0.01, max = 0.05 } })
    local m = mux(vm)
    local a = negotiated(m, vm, { "oob" })
    assert.same({ "oob" }, a.greeting.QMP.capabilities)
    srv:tell("bye")
    assert.equal("closed", a:ends().kind)
    assert.is_false(m:closed())
    assert.is_true(tmp.exists(m.path))
    drive(vm, function() return vm.state == "ready" and vm.generation == 2 end, "the reconnect")
    local b = greeted(m, vm)
    assert.same(qmp.decode(fake.greeting_with({})), b.greeting)
    b:send('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1}\n')
    assert.same(error_reply("GenericError", "Capability oob not available", 1), b:next())
    b:send('{"execute": "qmp_capabilities", "id": 2}\n')
    assert.same({ ["return"] = {}, id = 2 }, b:next())
    b:send('{"execute": "query-name", "id": 3}\n')
    assert.same({ ["return"] = { name = "second" }, id = 3 }, b:next())
    assert.equal(1, #m:clients())
  end)
end)

describe("qmp.mux: the object", function()
  it("lists its clients, says what it is, and closes once (idempotent), removing its socket", function()
    local vm, srv = upstream({
      { expect = "query-status", save = "q" }, { wait_for = "reply" },
      { send = '{"return": {"status": "paused", "running": false}, "id": %ID:q}\r\n' },
      { expect = "query-name", reply = fake.reply('{"name": "vm1"}') },
    })
    local m = mux(vm)
    local a = negotiated(m, vm, { "oob" })
    local b = greeted(m, vm)
    assert.same({
      { serial = 1, pid = PID, uid = UID, negotiated = true, oob = true, queued = 0, inflight = 0 },
      { serial = 2, pid = PID, uid = UID, negotiated = false, oob = false, queued = 0, inflight = 0 },
    }, m:clients())
    assert.equal(("qmp.Mux (%s, 2 clients)"):format(m.path), tostring(m))
    a:send('{"execute": "query-status", "id": "q"}\n')
    drive(vm, function() return a:info().inflight == 1 end, "a's command to go upstream")
    srv:tell("reply")
    assert.same({ ["return"] = { status = "paused", running = false }, id = "q" }, a:next())
    assert.equal(0, a:info().inflight)
    b.conn:close()
    drive(vm, function() return #m:clients() == 1 end, "b to leave")
    assert.equal(("qmp.Mux (%s, 1 client)"):format(m.path), tostring(m))
    m:close()
    m:close()
    assert.is_true(m:closed())
    assert.is_false(tmp.exists(m.path))
    assert.same({}, m:clients())
    assert.equal(("qmp.Mux (%s, 0 clients, closed)"):format(m.path), tostring(m))
    assert.equal("closed", a:ends().kind)
    -- the vm goes on without it
    assert.same({ name = "vm1" }, vm:execute("query-name"))
    assert.same({}, vm.reported)
  end)

  it("closes at the end of a <close> scope", function()
    local vm = upstream()
    local path = tmp.socket_path(cleanup)
    do
      local m <close> = assert(qmp.mux(vm, { listen = path }))
      assert.is_true(tmp.exists(path))
      assert.is_false(m:closed())
    end
    assert.is_false(tmp.exists(path))
  end)

  it("is served by a qmp.loop that holds the vm", function()
    local vm = upstream({ { expect = "query-name", reply = fake.reply('{"name": "vm1"}') } })
    local m = mux(vm)
    local loop = qmp.loop({ vm })
    cleanup(function() loop:close() end)
    local a = downstream(m, vm)
    local function until_n(n)
      assert(loop:run({ timeout = TEST_TIMEOUT, done = function() a:pull() return #a.queue >= n end }))
    end
    a:send('{"execute": "qmp_capabilities"}\n{"execute": "query-name", "id": 1}\n')
    until_n(3)
    assert.same(vm.greeting, a.queue[1])
    assert.same({ ["return"] = {} }, a.queue[2])
    assert.same({ ["return"] = { name = "vm1" }, id = 1 }, a.queue[3])
  end)

  it("checks its options: unknown ones and a wider mode raise; a file at the path is refused", function()
    local vm = upstream()
    local path = tmp.socket_path(cleanup)
    assert.error_matches(function() qmp.mux(vm, { listen = path, mod = "0600" }) end, 'unknown option "mod"')
    assert.error_matches(function() qmp.mux(vm, { listen = path, mode = "0644" }) end, "mode")
    assert.error_matches(function() qmp.mux(vm, { listen = path, mode = "0400" }) end, "mode")
    assert.error_matches(function() qmp.mux(vm, {}) end, "listen")
    assert.error_matches(function() qmp.mux({}, { listen = path }) end, "expected a qmp client")
    tmp.write(path, "not a socket")
    local m, err = qmp.mux(vm, { listen = path })
    assert.is_nil(m)
    assert.equal("exists", err.kind)
    assert.equal("not a socket", tmp.read(path))
    os.remove(path)
    local m2 = mux(vm, { listen = path, mode = "0660" })
    assert.equal("660", tmp.mode(m2.path))
  end)
end)
