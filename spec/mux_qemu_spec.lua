-- qmp-lua mux and qmp.mux on a real QEMU: many clients on one monitor,
-- each seeing a QEMU monitor of its own.  The clients are plain sockets
-- speaking JSON lines (support.raw_qmp: luasocket and lua-cjson, none of
-- the library), a library client, and qmp-lua's own commands.  Each QEMU
-- also has a monitor of its own for the spec ("direct"): what QEMU itself
-- answers there is what a client of the mux must get.
local qmp = require "qmp"
local qemu = require "support.qemu"
local proc = require "support.proc"
local raw = require "support.raw_qmp"
local tmp = require "support.tmp"
local socket = require "socket"

local cleanup = require("support.cleanup")(after_each)
local runner = require("support.qmp_lua").new("mux", cleanup)
teardown(runner.remove)

local WAIT = 10   -- seconds any bounded wait may take
local QUIET = 0.2 -- seconds a client that must get nothing is read for, after the others got theirs

-- {==================== machines, muxes and clients

-- A throwaway QEMU in a fresh directory with a second monitor for the
-- spec (direct.sock); both, and the directory, end after the test.
-- Returns machine, the direct monitor's path, the directory.
local function start_qemu(dir)
  if not dir then
    dir = tmp.dir("muxq")
    cleanup(function() tmp.remove(dir) end)
  end
  local direct = dir .. "/direct.sock"
  local machine = qemu.start({ dir = dir, args = { "-qmp", "unix:" .. direct .. ",server=on,wait=off" } })
  cleanup(function() machine:stop() end)
  assert(proc.wait_until(function() return proc.listening(direct) end, WAIT), "no second monitor")
  return machine, direct, dir
end

-- `qmp-lua mux ADDRESS --listen PATH ...` in the background, once PATH
-- listens (it is stopped after the test).
local function start_mux(address, path, ...)
  local bg = runner.background("mux", address, "--listen", path, ...)
  proc.wait_until(function() return proc.listening(path) or bg:status() ~= nil end, WAIT)
  assert(proc.listening(path), "the mux does not listen on " .. path .. ": " .. bg:err())
  return bg
end

-- A plain-socket client of path, closed after the test.
local function raw_client(path)
  local c = assert(raw.connect(path))
  cleanup(function() c:close() end)
  return c
end

-- A plain-socket client that has read the greeting and negotiated.
local function negotiated(path, args)
  local c = raw_client(path)
  local greeting, reply = c:negotiate(args)
  assert.same({ ["return"] = {} }, reply)
  return c, greeting
end

-- Read c until it holds n events (its replies are not expected now).
local function await_events(c, n)
  local deadline = socket.gettime() + WAIT
  while #c.events < n do
    local msg, err = c:read(math.max(deadline - socket.gettime(), 0))
    assert(msg, ("%d of %d events, then %s"):format(#c.events, n, tostring(err)))
    assert(msg.event, "not an event: " .. c.lines[#c.lines])
    c.events[#c.events + 1] = msg
  end
  return c:event_list()
end

-- The library's listener: its events (not the client's own qmp.* ones)
-- as raw.stamp gives them, once it has n.
local function await_listened(listener, list, n)
  while #list < n do
    local ev = assert(listener:wait(WAIT))
    if not ev.event:match("^qmp%.") then list[#list + 1] = raw.stamp(ev) end
  end
  return list
end

-- QEMU's answer to text on its own monitor (direct: a raw client there).
-- A QEMU (start_qemu) and a mux on it at dir/mux.sock: the mux's path,
-- what start_qemu returns, and the mux's background process.
local function muxed_qemu()
  local machine, direct_path, dir = start_qemu()
  local path = dir .. "/mux.sock"
  local bg = start_mux(machine.sock, path)
  return path, machine, direct_path, dir, bg
end

local function direct_answer(direct, text)
  return assert(direct:call(text))
end

local function literal(text)
  return (text:gsub("%p", "%%%0"))
end

-- }==================== machines, muxes and clients

describe("qmp-lua mux: every client sees a QEMU monitor of its own #qemu", function()
  local NOT_NEGOTIATED = "Expecting capabilities negotiation with 'qmp_capabilities'"
  local NEGOTIATED = "Capabilities negotiation is already complete, command ignored"

  it("three plain clients and a library client at once: QEMU's greeting and negotiation rules", function()
    local path, _, direct_path = muxed_qemu()
    local direct = raw_client(direct_path)
    local truth = assert(direct:read())
    local clients = { raw_client(path), raw_client(path), raw_client(path) }
    local lib <close> = assert(qmp.connect(path, { timeout = WAIT, name = "lib" }))

    -- QEMU's greeting, as QEMU sends it on a monitor of its own; its version is query-version's.
    assert.same({ ["return"] = {} }, direct:call('{"execute": "qmp_capabilities"}'))
    local version = assert(direct:call('{"execute": "query-version"}'))["return"]
    assert.equal(7, version.qemu.major)
    for _, c in ipairs(clients) do
      local greeting = assert(c:read())
      assert.same(truth, greeting)
      assert.same(version, greeting.QMP.version)
      assert.same({ "oob" }, greeting.QMP.capabilities)
    end
    assert.equal(version.qemu.major, lib.greeting.QMP.version.qemu.major)
    assert.equal(version.qemu.minor, lib.greeting.QMP.version.qemu.minor)
    assert.equal(version.qemu.micro, lib.greeting.QMP.version.qemu.micro)
    assert.equal(version.package, lib.greeting.QMP.version.package)

    -- Before negotiating: QEMU's CommandNotFound with the client's id, for each client on its own.
    for i, c in ipairs(clients) do
      local reply = c:call(('{"execute": "query-status", "id": "early-%d"}'):format(i))
      assert.same({ id = "early-" .. i, error = { class = "CommandNotFound", desc = NOT_NEGOTIATED } }, reply)
    end
    -- Negotiating, then negotiating again: QEMU's answers to the second on the direct monitor too.
    for i, c in ipairs(clients) do
      assert.same({ id = i, ["return"] = {} },
                  c:call(('{"execute": "qmp_capabilities", "id": %d}'):format(i)))
      local again = ('{"execute": "qmp_capabilities", "id": "again-%d"}'):format(i)
      local reply = c:call(again)
      assert.same({ id = "again-" .. i, error = { class = "CommandNotFound", desc = NEGOTIATED } }, reply)
      assert.same(direct_answer(direct, again), reply)
    end
    local _, err = lib:execute("qmp_capabilities")
    assert.equal("qmp", err.kind)
    assert.equal("CommandNotFound", err.class)
    assert.equal(NEGOTIATED, err.desc)
    -- And then each works, on the one QEMU.
    for _, c in ipairs(clients) do
      assert.equal("prelaunch", c:call('{"execute": "query-status"}')["return"].status)
    end
    assert.equal("prelaunch", assert(lib:execute("query-status")).status)
  end)

  it("a command before negotiating gets what QEMU answers it, id and all", function()
    local path, machine, direct_path = muxed_qemu()
    local direct, c = raw_client(direct_path), raw_client(path)
    assert.same(assert(direct:read()), assert(c:read()))
    for _, text in ipairs({ '{"execute": "query-status", "id": "x"}',
                            '{"execute": "stop", "id": {"a": [1, {"b": null}]}}',
                            '{"execute": "query-version"}' }) do
      assert.same(direct_answer(direct, text), assert(c:call(text)))
    end
    -- It did not run: the machine is still in prelaunch, not paused.
    assert.same({ ["return"] = {} }, direct:call('{"execute": "qmp_capabilities"}'))
    assert.equal("prelaunch", direct:call('{"execute": "query-status"}')["return"].status)
  end)

  it("two clients using the same id at the same time each get their own answers, in order", function()
    local path = muxed_qemu()
    local a, b = negotiated(path), negotiated(path)
    -- Everything sent before anything is read: all four are in the mux at once.
    a:send('{"execute": "query-status", "id": "x"}\n{"execute": "query-version", "id": "x"}')
    b:send('{"execute": "query-version", "id": "x"}\n{"execute": "query-status", "id": "x"}')
    local function is_status(reply) return reply.id == "x" and reply["return"].status == "prelaunch" end
    local function is_version(reply) return reply.id == "x" and reply["return"].qemu ~= nil end
    local a1, a2 = assert(a:reply()), assert(a:reply())
    local b1, b2 = assert(b:reply()), assert(b:reply())
    assert.is_true(is_status(a1), a.lines[#a.lines - 1])
    assert.is_true(is_version(a2), a.lines[#a.lines])
    assert.is_true(is_version(b1), b.lines[#b.lines - 1])
    assert.is_true(is_status(b2), b.lines[#b.lines])
    -- Nothing more for either: no answer went to both.
    assert.same({ nil, "timeout" }, { a:read(QUIET) })
    assert.same({ nil, "timeout" }, { b:read(0) })
  end)

  it("an object id comes back equal; a request without id gets a reply without id", function()
    local path = muxed_qemu()
    local c = negotiated(path)
    local reply = assert(c:call('{"execute": "query-status", "id": {"a": [1, {"b": null}]}}'))
    assert.same({ a = { 1, { b = raw.null } } }, reply.id)
    assert.equal("prelaunch", reply["return"].status)
    reply = assert(c:call('{"execute": "query-status"}'))
    assert.equal("prelaunch", reply["return"].status)
    assert.is_nil(reply.id)
    assert.is_nil(c.lines[#c.lines]:find('"id"', 1, true), c.lines[#c.lines])
    -- An error without id comes back without one too.
    reply = assert(c:call('{"execute": "no-such-command"}'))
    assert.equal("CommandNotFound", reply.error.class)
    assert.is_nil(c.lines[#c.lines]:find('"id"', 1, true), c.lines[#c.lines])
    -- Other ids of any JSON type.
    for _, id in ipairs({ '[]', '-7', '"ünï"', 'true', '2.5' }) do
      reply = assert(c:call(('{"execute": "query-name", "id": %s}'):format(id)))
      assert.same(require("cjson").decode(id), reply.id, c.lines[#c.lines])
      assert.same({}, reply["return"])
    end
  end)

  it("events reach every negotiated client in QEMU's order, from the moment each negotiated", function()
    local path, _, direct_path = muxed_qemu()
    local truth = negotiated(direct_path)          -- what QEMU sends a monitor of its own
    local one, two = negotiated(path), negotiated(path)
    local shy = raw_client(path)                   -- connected, never negotiates
    assert(shy:read().QMP)
    local lib <close> = assert(qmp.connect(path, { timeout = WAIT, name = "lib" }))
    local heard, lib_list = lib:listen("*"), {}

    -- One client's commands cause the events: RESUME (cont), then STOP (stop).
    -- QEMU sends each event before the reply to the command that caused it, and so does the mux.
    assert.same({ ["return"] = {} }, one:call('{"execute": "cont"}'))
    assert.equal(1, #one.events)
    assert.same({ ["return"] = {} }, one:call('{"execute": "stop"}'))
    assert.equal(2, #one.events)
    local expected = await_events(truth, 2)
    assert.same({ "RESUME", "STOP" }, { expected[1]:match("^%u+"), expected[2]:match("^%u+") })
    assert.same(expected, await_events(one, 2))
    assert.same(expected, await_events(two, 2))
    assert.same(expected, await_listened(heard, lib_list, 2))
    -- The client that has not negotiated got none of them (the others had theirs in the same step).
    assert.same({ nil, "timeout" }, { shy:read(QUIET) })

    -- A client negotiating now gets what comes next only.
    local late = negotiated(path)
    assert.same({ ["return"] = {} }, two:call('{"execute": "cont"}'))
    assert.equal(3, #two.events)
    expected = await_events(truth, 3)
    assert.matches("^RESUME@", expected[3])
    assert.same(expected, await_events(one, 3))
    assert.same(expected, await_events(two, 3))
    assert.same(expected, await_listened(heard, lib_list, 3))
    assert.same({ expected[3] }, await_events(late, 1))
    assert.same({ nil, "timeout" }, { shy:read(QUIET) })
    assert.same({ nil, "timeout" }, { late:read(0) })
    -- And the shy one is still served once it negotiates (its events start then).
    assert.same({ ["return"] = {} }, shy:call('{"execute": "qmp_capabilities"}'))
    assert.equal("running", shy:call('{"execute": "query-status"}')["return"].status)
    assert.same({}, shy.events)
  end)

  it("a client leaving with commands in flight does not disturb the others", function()
    local path, _, _, _, bg = muxed_qemu()
    local stay = negotiated(path)
    local leave = negotiated(path)
    local burst = {}
    for i = 1, 50 do burst[i] = ('{"execute": "query-qmp-schema", "id": %d}'):format(i) end
    leave:send(table.concat(burst, "\n"))
    leave:close()
    for i = 1, 3 do
      local reply = assert(stay:call(('{"execute": "query-status", "id": "s%d"}'):format(i)))
      assert.same("s" .. i, reply.id)
      assert.equal("prelaunch", reply["return"].status)
    end
    -- QEMU answers in order: once this is answered, so are all the leaver's.
    local reply = assert(stay:call('{"execute": "query-qmp-schema", "id": "last"}'))
    assert.equal("last", reply.id)
    assert.is_true(#reply["return"] > 100)
    assert.is_nil(bg:status(), bg:err())
    assert.same({}, stay.events)
  end)
end)

describe("qmp-lua mux: malformed requests #qemu", function()
  -- Send each text to QEMU's own monitor and through the mux: the same answer, decoded.
  local function same_answers(texts, negotiate)
    local path, _, direct_path = muxed_qemu()
    local direct, c
    if negotiate then
      direct, c = negotiated(direct_path), negotiated(path)
    else
      direct, c = raw_client(direct_path), raw_client(path)
      assert.same(assert(direct:read()), assert(c:read()))
    end
    for _, text in ipairs(texts) do
      local want = direct_answer(direct, text)
      local got, err = c:call(text)
      assert(got, ("%s: no answer through the mux (%s); QEMU's: %s")
                  :format(text, tostring(err), direct.lines[#direct.lines]))
      assert.same(want, got, text)
    end
    -- The client is still served.
    local last = '{"execute": "query-name", "id": "end"}'
    assert.same(direct_answer(direct, last), c:call(last))
  end

  it("before negotiating: QEMU's checks of the request and of qmp_capabilities' arguments", function()
    same_answers({
      '{"execute": 5, "id": 1}',
      '{"id": 2}',
      '{"execute": "query-status", "foo": 1, "id": 3}',
      '{"execute": "query-status", "arguments": [], "id": 4}',
      '{"execute": "query-status", "arguments": null, "id": 5}',
      '{"exec-oob": "migrate-pause", "id": 6}',
      '{"execute": "qmp_capabilities", "exec-oob": "x", "id": 7}',
      '{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}, "id": 8}',
      '{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}, "id": 9}',
      '{"execute": "qmp_capabilities", "arguments": {"x": 1}, "id": 10}',
      '{"execute": "qmp_capabilities", "arguments": {"enable": ["oob", "oob"]}, "id": 11}',
    }, false)
  end)

  it("before negotiating: a capability that is not a string, worded as QEMU words it", function()
    same_answers({ '{"execute": "qmp_capabilities", "arguments": {"enable": [1]}, "id": 1}' }, false)
  end)

  it("once negotiated: QEMU's checks, and its answers to bad arguments", function()
    same_answers({
      '{"execute": "query-status", "foo": 1, "id": 1}',
      '{"execute": "query-status", "arguments": {"bogus": 1}, "id": 2}',
      '{"execute": "query-status", "arguments": [], "id": 3}',
      '{"execute": "no-such-command", "id": 4}',
      '{"exec-oob": "query-status", "id": 5}',
      '{"execute": "query-status", "id": 9007199254740993}',
    }, true)
  end)

  -- QEMU reads on after it; the mux's framer stops at a top-level value that
  -- is not an object, so the mux answers as QEMU does, then disconnects the
  -- client (docs/decisions.md, "Sharing a monitor").
  it("a JSON value that is not an object gets QEMU's answer, then the client is disconnected", function()
    for _, text in ipairs({ '[1]', '7' }) do
      local path, _, direct_path = muxed_qemu()
      local direct, c = negotiated(direct_path), negotiated(path)
      assert.same(direct_answer(direct, text), assert(c:call(text)), text)
      local after, err = c:read()
      assert.is_nil(after, text)
      assert.matches("closed", tostring(err))
    end
  end)

  it("a JSON parse error is answered before the client is disconnected", function()
    local path = muxed_qemu()
    local c = negotiated(path)
    local reply, err = c:call('{"execute": }')
    assert(reply, "no answer, " .. tostring(err))
    assert.is_nil(reply.id)
    assert.equal("GenericError", reply.error.class)
    assert.matches("^JSON parse error, ", reply.error.desc)
    assert.is_true(c:closed_within(WAIT))
  end)
end)

describe("qmp-lua mux: out-of-band commands #qemu", function()
  it("oob is granted to a client that asks, and exec-oob reaches QEMU; refused to one that did not", function()
    local path, _, direct_path = muxed_qemu()
    local pause = '{"exec-oob": "migrate-pause", "id": "o1"}'
    -- QEMU's answers on a monitor of its own, with oob and without (one client at a time there).
    local direct = negotiated(direct_path, { enable = { "oob" } })
    local with_oob = assert(direct:call(pause))
    direct:close()
    direct = negotiated(direct_path)
    local without = assert(direct:call(pause))

    local oob, greeting = negotiated(path, { enable = { "oob" } })
    assert.same({ "oob" }, greeting.QMP.capabilities)
    local plain = negotiated(path)
    local reply = assert(oob:call(pause))
    -- QEMU ran it: its own refusal (no migration runs), not the framing error of a client without oob.
    assert.equal("o1", reply.id)
    assert.equal("GenericError", reply.error.class)
    assert.matches("migrate%-pause", reply.error.desc)
    assert.is_nil(reply.error.desc:find("exec-oob", 1, true))
    assert.same(with_oob, reply)

    reply = assert(plain:call(pause))
    assert.same({ id = "o1", error = { class = "GenericError", desc = "QMP input member 'exec-oob' is unexpected" } },
                reply)
    assert.same(without, reply)
    -- In-band commands still work for both.
    assert.equal("prelaunch", oob:call('{"execute": "query-status", "id": 2}')["return"].status)
    assert.equal("prelaunch", plain:call('{"execute": "query-status", "id": 2}')["return"].status)
  end)
end)

describe("qmp-lua mux: fds passed with a command #qemu", function()
  -- A 1 MiB raw image in dir, open for reading and writing: its path and fd number.
  local function open_image(dir)
    local img = dir .. "/disk.raw"
    local status, out = proc.run("qemu-img create -q -f raw " .. tmp.quote(img) .. " 1M")
    assert.equal(0, status, out)
    local f = assert(io.open(img, "r+b"))
    cleanup(function() f:close() end)
    return img, raw.fd_of(img)
  end

  it("add-fd takes the fd sent with it, and blockdev-add opens /dev/fdset/1", function()
    local path, _, _, dir = muxed_qemu()
    local _, fd = open_image(dir)
    local c = raw.fd_client(path)
    cleanup(function() c:close() end)
    assert(c:read().QMP)
    assert.same({}, c:call('{"execute": "qmp_capabilities"}')["return"])
    -- Without an fd, QEMU has none to add: the fd below is what the mux passed on.
    local reply = c:call('{"execute": "add-fd", "arguments": {"fdset-id": 2}, "id": "none"}')
    assert.equal("none", reply.id)
    assert.same({ class = "GenericError", desc = "No file descriptor supplied via SCM_RIGHTS" }, reply.error)

    reply = c:call('{"execute": "add-fd", "arguments": {"fdset-id": 1}, "id": "add"}', { fd })
    assert.equal("add", reply.id)
    assert.equal(1, reply["return"]["fdset-id"], qmp.encode(reply))
    assert.equal("integer", math.type(reply["return"].fd))
    reply = c:call('{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "fdnode", '
                   .. '"filename": "/dev/fdset/1"}, "id": "blk"}')
    assert.same({ id = "blk", ["return"] = {} }, reply)
    reply = c:call('{"execute": "query-named-block-nodes", "id": "q"}')
    local node
    for _, n in ipairs(reply["return"]) do
      if n["node-name"] == "fdnode" then node = n end
    end
    assert(node, "no fdnode in " .. qmp.encode(reply))
    assert.equal("/dev/fdset/1", node.file)
    assert.equal(1024 * 1024, node.image["virtual-size"])
    assert.is_false(node.ro)
  end)

  it("getfd takes the fd sent with it; closefd closes it", function()
    local path, _, _, dir = muxed_qemu()
    local _, fd = open_image(dir)
    local c = raw.fd_client(path)
    cleanup(function() c:close() end)
    assert(c:read().QMP)
    assert.same({}, c:call('{"execute": "qmp_capabilities"}')["return"])
    assert.same({ id = 1, ["return"] = {} },
                c:call('{"execute": "getfd", "arguments": {"fdname": "myfd"}, "id": 1}', { fd }))
    assert.same({ id = 2, ["return"] = {} }, c:call('{"execute": "closefd", "arguments": {"fdname": "myfd"}, "id": 2}'))
    local reply = c:call('{"execute": "closefd", "arguments": {"fdname": "myfd"}, "id": 3}')
    assert.same({ class = "GenericError", desc = "File descriptor named 'myfd' not found" }, reply.error)
    -- getfd without an fd: QEMU got none (no fd kept over from the first getfd).
    reply = c:call('{"execute": "getfd", "arguments": {"fdname": "other"}, "id": 4}')
    assert.same({ class = "GenericError", desc = "No file descriptor supplied via SCM_RIGHTS" }, reply.error)
  end)
end)

describe("qmp.mux: max_buffer #qemu", function()
  it("a client that never reads is cut past it and reported as overflow; one that reads gets every event", function()
    local machine, _, dir = start_qemu()
    local path = dir .. "/mux.sock"
    local MAX_BUFFER = 16 * 1024
    local BATCH = 20   -- cont/stop pairs the reader sends at once
    local vm = assert(qmp.connect(machine.sock, { timeout = WAIT, name = "upstream" }))
    cleanup(function() vm:close() end)
    local reported, logged = {}, {}
    vm.on_error = function(e) reported[#reported + 1] = e end
    local m = assert(qmp.mux(vm, { listen = path, max_buffer = MAX_BUFFER,
                                   log = function(line) logged[#logged + 1] = line end }))
    cleanup(function() m:close() end)
    local upstream_events = vm:listen({ "STOP", "RESUME" }, nil, { max_queue = 100000 })

    -- Both in this process, so neither may block: the loop serving the mux is vm:run below.
    local reader, sleeper = raw_client(path), raw_client(path)
    sleeper:post('{"execute": "qmp_capabilities"}')   -- negotiated, then never reads
    local ready, outstanding, batches, cut_at = false, 0, 0, nil
    local ok, err = vm:run({ timeout = WAIT, done = function()
      sleeper:push()
      reader:push()
      while true do
        local msg = reader:read(0)
        if not msg then break end
        if msg.QMP then
          reader:post('{"execute": "qmp_capabilities", "id": "hello"}')
        elseif msg.event then
          reader.events[#reader.events + 1] = msg
        elseif msg.id == "hello" then
          ready = true
        else
          assert(msg["return"], reader.lines[#reader.lines])
          outstanding = outstanding - 1
        end
      end
      if not ready or outstanding > 0 then return false end
      if cut_at == nil and #m:clients() == 1 then cut_at = batches end
      if cut_at and batches >= cut_at + 3 then return true end   -- and it flows on after the cut
      for _ = 1, BATCH do reader:post('{"execute": "cont"}\n{"execute": "stop"}') end
      outstanding, batches = 2 * BATCH, batches + 1
      return false
    end })
    assert(ok, tostring(err))

    -- The cut: reported once, kind overflow, past the bound; logged; the reader still there.
    assert.equal(1, #reported, tostring(reported[2]))
    assert.equal("overflow", reported[1].kind)
    local queued = tonumber(tostring(reported[1]):match("left (%d+) bytes unread"))
    assert(queued and queued > MAX_BUFFER, tostring(reported[1]))
    local cut_lines = 0
    for _, line in ipairs(logged) do
      if line:match("^client 2 .*cut") then cut_lines = cut_lines + 1 end
    end
    assert.equal(1, cut_lines, table.concat(logged, "\n"))
    local left = m:clients()
    assert.equal(1, #left)
    assert.equal(1, left[1].serial)
    assert(cut_at > 0, "cut before any event")

    -- The reader got every event QEMU sent, in order: one for each command it sent.
    local all = {}
    for ev in function() return upstream_events:next() end do all[#all + 1] = raw.stamp(ev) end
    assert.equal(2 * BATCH * batches, #all)
    assert.same(all, reader:event_list())
    -- The sleeper: what the socket held (a first part of the same events), then the end.
    assert.is_true(sleeper:closed_within(WAIT))
    local got = sleeper:event_list()
    assert(#got > 0 and #got < #all, ("%d of %d events"):format(#got, #all))
    assert.same({ table.unpack(all, 1, #got) }, got)
  end)

  it("a client that reads is not cut for one reply larger than max_buffer", function()
    local machine, _, dir = start_qemu()
    local path = dir .. "/mux.sock"
    local vm = assert(qmp.connect(machine.sock, { timeout = WAIT, name = "upstream" }))
    cleanup(function() vm:close() end)
    local reported = {}
    vm.on_error = function(e) reported[#reported + 1] = e end
    local m = assert(qmp.mux(vm, { listen = path, max_buffer = 64 * 1024 }))
    cleanup(function() m:close() end)
    local c = raw_client(path)
    local schema   -- query-qmp-schema's reply: some 190 kB on QEMU 7.2
    local ok, err = vm:run({ timeout = WAIT, done = function()
      while not schema and not c.eof do
        local msg = c:read(0)
        if not msg then break end
        if msg.QMP then
          c:post('{"execute": "qmp_capabilities", "id": "hello"}')
        elseif msg.id == "hello" then
          c:post('{"execute": "query-qmp-schema", "id": "schema"}')
        else
          schema = msg
        end
      end
      return schema ~= nil or c.eof
    end })
    assert(ok, tostring(err))
    assert.same({}, reported)
    assert(schema, "cut while reading")
    assert.equal("schema", schema.id)
    assert.is_true(#c.lines[#c.lines] > 64 * 1024)
  end)
end)

describe("qmp-lua mux when QEMU goes away #qemu", function()
  it("without --reconnect: every client disconnected, exit status 2, the socket removed", function()
    local path, machine, _, _, bg = muxed_qemu()
    local one, two = negotiated(path), negotiated(path)
    local shy = raw_client(path)
    assert(shy:read().QMP)
    local lib = assert(qmp.connect(path, { timeout = WAIT, name = "lib" }))
    cleanup(function() lib:close() end)

    proc.kill(machine.pid, "KILL")
    assert.is_true(proc.wait_exit(machine.pid, WAIT))
    for _, c in ipairs({ one, two, shy }) do assert.is_true(c:closed_within(WAIT)) end
    local _, err = lib:execute("query-status")
    assert.equal("closed", err.kind)
    assert.equal(2, bg:wait(WAIT), bg:err())
    assert.is_false(tmp.exists(path))
    assert.matches(literal(machine.sock), bg:err())
  end)

  it("with --reconnect: clients disconnected, then served again once QEMU is back; SIGTERM ends it", function()
    local machine, _, dir = start_qemu()
    local path = dir .. "/mux.sock"
    local bg = start_mux(machine.sock, path, "--reconnect")
    local one = negotiated(path)
    local shy = raw_client(path)
    assert(shy:read().QMP)
    assert.same({ ["return"] = {} }, one:call('{"execute": "cont"}'))

    proc.kill(machine.pid, "KILL")
    assert.is_true(proc.wait_exit(machine.pid, WAIT))
    assert.is_true(one:closed_within(WAIT))
    assert.is_true(shy:closed_within(WAIT))
    -- The mux stays, and a newcomer waits: no greeting while there is no QEMU.
    local waiting = raw_client(path)
    assert.same({ nil, "timeout" }, { waiting:read(QUIET) })
    assert.is_nil(bg:status(), bg:err())
    assert.is_true(proc.listening(path))

    local again = start_qemu(dir)   -- on the same monitor path
    local greeting = assert(waiting:read(WAIT))
    assert.equal(7, greeting.QMP.version.qemu.major)
    assert.same({ ["return"] = {} }, waiting:call('{"execute": "qmp_capabilities"}'))
    -- The new QEMU: in prelaunch, not running as the first one was left.
    assert.equal("prelaunch", waiting:call('{"execute": "query-status"}')["return"].status)
    local fresh = negotiated(path)
    assert.equal("prelaunch", fresh:call('{"execute": "query-status"}')["return"].status)
    assert(again:alive())
    -- Events of the new QEMU reach both.
    assert.same({ ["return"] = {} }, fresh:call('{"execute": "cont"}'))
    local resumed = await_events(fresh, 1)
    assert.matches("^RESUME@", resumed[1])
    assert.same(resumed, await_events(waiting, 1))

    bg:signal("TERM")
    assert.equal(143, bg:wait(WAIT), bg:err())
    assert.is_false(tmp.exists(path))
    assert.matches("stopped by SIGTERM", bg:err())
    assert.is_true(waiting:closed_within(WAIT))
  end)
end)

describe("qmp-lua mux when a client sends quit #qemu", function()
  it("QEMU quits, every negotiated client gets SHUTDOWN, all are disconnected, status 0", function()
    local path, machine, _, _, bg = muxed_qemu()
    local quitter, other = negotiated(path), negotiated(path)
    local shy = raw_client(path)
    assert(shy:read().QMP)
    assert.same({ ["return"] = {} }, quitter:call('{"execute": "quit"}'))
    for _, c in ipairs({ quitter, other }) do
      assert.is_true(c:closed_within(WAIT))
      assert.same({ "SHUTDOWN" }, { (c:event_list()[1] or ""):match("^%u+") })
    end
    assert.is_true(shy:closed_within(WAIT))
    assert.same({}, shy.events)
    assert.equal(0, bg:wait(WAIT), bg:err())
    assert.is_false(tmp.exists(path))
    assert.is_true(machine:wait_exit(WAIT))
  end)
end)

describe("qmp-lua mux: its socket #qemu", function()
  -- qmp-lua mux under umask 000 (a mode that depended on the umask would show it).
  local function mux_under_umask(address, path, ...)
    local log = runner.scratch("log")
    local line = runner.command_line({ "mux", address, "--listen", path, ... })
    local pid = proc.spawn({ "sh", "-c", "umask 000; exec " .. line }, log)
    cleanup(function() proc.terminate(pid, 2) end)
    proc.wait_until(function() return proc.listening(path) or not proc.alive(pid) end, WAIT)
    assert(proc.listening(path), tmp.read(log))
    return pid
  end

  it("is 0600 by default and 0660 with --mode 0660, whatever the umask", function()
    local machine, direct, dir = start_qemu()
    mux_under_umask(machine.sock, dir .. "/default.sock")
    mux_under_umask(direct, dir .. "/group.sock", "--mode", "0660")
    assert.equal("600", tmp.mode(dir .. "/default.sock"))
    assert.equal("660", tmp.mode(dir .. "/group.sock"))
    -- Each serves.
    for _, name in ipairs({ "default.sock", "group.sock" }) do
      local c = negotiated(dir .. "/" .. name)
      assert.equal("prelaunch", c:call('{"execute": "query-status"}')["return"].status)
    end
  end)

  it("--mode 0666 is refused: status 64, no socket", function()
    local machine, _, dir = start_qemu()
    local path = dir .. "/wide.sock"
    local out, err, status = runner.run("mux", machine.sock, "--listen", path, "--mode", "0666")
    assert.equal(64, status, err)
    assert.equal("", out)
    assert.matches("%-%-mode", err)
    assert.is_false(tmp.exists(path))
  end)

  it("an existing file at PATH is refused and left as it was", function()
    local machine, _, dir = start_qemu()
    local path = dir .. "/precious"
    tmp.write(path, "keep me\n")
    local out, err, status = runner.run("mux", machine.sock, "--listen", path)
    assert.is_not.equal(0, status)
    assert.equal("", out)
    assert.matches(literal(path), err)
    assert.equal("keep me\n", tmp.read(path))
    assert.equal(0, (proc.run("test -f " .. tmp.quote(path))))
  end)

  it("a socket another mux serves is refused and keeps serving", function()
    local machine, direct, dir = start_qemu()
    local path = dir .. "/mux.sock"
    local first = start_mux(machine.sock, path)
    local out, err, status = runner.run("mux", direct, "--listen", path)
    assert.is_not.equal(0, status)
    assert.equal("", out)
    assert.matches(literal(path), err)
    assert.is_nil(first:status())
    local c = negotiated(path)
    assert.equal("prelaunch", c:call('{"execute": "query-status"}')["return"].status)
  end)
end)

describe("qmp-lua commands through qmp-lua mux #qemu", function()
  it("exec answers as on QEMU's own monitor", function()
    local machine, direct, dir = start_qemu()
    local path = dir .. "/mux.sock"
    start_mux(machine.sock, path)
    local other = negotiated(path)   -- the mux is shared meanwhile
    for _, words in ipairs({ { "query-version" }, { "query-status" }, { "query-name" } }) do
      local out, err, status = runner.run("exec", path, table.unpack(words))
      assert.equal(0, status, err)
      local want = runner.run("exec", direct, table.unpack(words))
      assert.equal(want, out)
    end
    local out, err, status = runner.run("exec", path, "no-such-command")
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("CommandNotFound", err)
    assert.equal("prelaunch", other:call('{"execute": "query-status"}')["return"].status)
  end)

  it("events --count 2 prints the two events another client causes, status 0", function()
    local path = muxed_qemu()
    local causer = negotiated(path)
    local bg = runner.background("events", "--count", "2", path)
    -- The watcher says nothing when it is ready: cause events until it has two.
    local running = false
    local deadline = socket.gettime() + WAIT
    repeat
      assert.same({}, causer:call(running and '{"execute": "stop"}' or '{"execute": "cont"}')["return"])
      running = not running
    until proc.wait_until(function() return bg:status() ~= nil end, 0.3) or socket.gettime() > deadline
    assert.equal(0, bg:status(), bg:err())
    local list = runner.lines(bg:out())
    assert.equal(2, #list)
    local names = {}
    for i, line in ipairs(list) do
      names[i] = line:match("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d+ (%u+)$")
    end
    -- Two in a row of what the causer did: RESUME then STOP, or STOP then RESUME.
    assert.is_true((names[1] == "RESUME" and names[2] == "STOP") or (names[1] == "STOP" and names[2] == "RESUME"),
                   bg:out())
  end)
end)

describe("qmp-lua record and shell through qmp-lua mux #qemu", function()
  it("record writes the stream it sees through the mux, events included", function()
    local path, _, _, dir = muxed_qemu()
    local causer = negotiated(path)
    local file = dir .. "/rec.qmprec"
    local bg = runner.background("record", path, file, "--count", "1")
    local deadline = socket.gettime() + WAIT
    local running = false
    repeat   -- the recorder says nothing when it is ready: cause events until it has one
      assert.same({}, causer:call(running and '{"execute": "stop"}' or '{"execute": "cont"}')["return"])
      running = not running
    until proc.wait_until(function() return bg:status() ~= nil end, 0.3) or socket.gettime() > deadline
    assert.equal(0, bg:status(), bg:err())
    local text = tmp.read(file)
    assert.matches('"qmp%-recording":1', text)
    assert.matches('"event":"[RS][ET][SO][UP]', text)   -- RESUME or STOP, as the mux passed it on
  end)

  it("shell runs a command through the mux in a terminal, and Ctrl-D ends it", function()
    local tmux = require "support.tmux"
    local path, _, _, dir = muxed_qemu()
    local home = dir .. "/home"
    assert(os.execute("mkdir " .. tmp.quote(home)))
    tmp.write(home .. "/inputrc", "")
    local pwd = assert(io.popen("pwd"))
    local cwd = pwd:read("l")
    pwd:close()
    local term = tmux.start("muxshell", { cwd = cwd, width = 160, height = 40 },
      ("HOME=%s INPUTRC=%s timeout --foreground 60 bin/qmp-lua shell %s; echo \"[shell exited $?]\"; sleep 60")
        :format(tmp.quote(home), tmp.quote(home .. "/inputrc"), tmp.quote(path)))
    cleanup(function() term:stop() end)
    term:wait_for("connected to " .. path, tmux.WAIT, true)
    term:wait_for("\nqmp>")
    term:type("query-status")
    term:keys("Enter")
    term:wait_for('"status": "prelaunch"', tmux.WAIT, true)
    term:keys("C-d")
    term:wait_for("[shell exited 0]", tmux.WAIT, true)
  end)
end)
