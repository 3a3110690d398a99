-- The fake QMP server itself, driven by a plain luasocket client so that
-- it can be trusted by the protocol specs that use it.
local fake = require "support.fake_qmp"
local unix = require "socket.unix"

describe("support.fake_qmp", function()
  local srv, conn

  local function start(steps)
    srv = fake.start(steps)
    conn = assert(unix.stream())
    conn:settimeout(TEST_TIMEOUT)
    assert(conn:connect(srv.path))
  end

  -- One line as the client sees it (luasocket's "*l" drops the "\r").
  local function line()
    return conn:receive("*l")
  end

  -- The error luasocket reports for the next read: "closed" at EOF.
  local function read_error()
    local _, err = line()
    return err
  end

  local function finished()
    assert.is_true(srv:wait(TEST_TIMEOUT), srv:log())
    return srv:status()
  end

  after_each(function()
    if conn then conn:close() end
    if srv then srv:stop() end
    conn, srv = nil, nil
  end)

  it("sends the greeting", function()
    start({ { greet = true } })
    assert.are.equal(fake.greeting, line() .. "\r\n")
    assert.matches('"capabilities": %["oob"%]', fake.greeting)
    assert.are.equal(0, finished(), srv:log())
  end)

  it("can offer no capabilities", function()
    start({ { greet = { capabilities = {} } } })
    assert.matches('"capabilities": %[%]}}$', line())
  end)

  it("replies with the command's id substituted", function()
    start({
      { greet = true },
      { expect = "qmp_capabilities", reply = fake.reply("{}") },
      { expect = "query-status", expect_args = '"running"',
        reply = fake.reply('{"status": "prelaunch", "running": false}') },
      { expect = "*" },
      { send = '{"return": {}, "id": %ID}\r\n' },
    })
    line()
    conn:send('{"execute": "qmp_capabilities", "id": "qmp#1"}\n')
    assert.are.equal('{"return": {}, "id": "qmp#1"}', line())
    -- the nested "id" must not be taken for the command's
    conn:send('{"execute":"query-status","arguments":{"id":"x","running":1},"id":7}\n')
    assert.are.equal('{"return": {"status": "prelaunch", "running": false}, "id": 7}', line())
    conn:send('{"exec-oob": "anything", "id": {"n": [1, "}"]}}\n')
    assert.are.equal('{"return": {}, "id": {"n": [1, "}"]}}', line())
    assert.are.equal(0, finished(), srv:log())
    assert.are.same({
      '{"execute": "qmp_capabilities", "id": "qmp#1"}',
      '{"execute":"query-status","arguments":{"id":"x","running":1},"id":7}',
      '{"exec-oob": "anything", "id": {"n": [1, "}"]}}',
    }, srv:received())
  end)

  it("leaves the id out for a command without one", function()
    start({ { expect = "stop", reply = fake.reply("{}") } })
    conn:send('{"execute": "stop"}\n')
    assert.are.equal('{"return": {}}', line())
  end)

  it("fails on an unexpected command", function()
    start({ { expect = "cont", reply = fake.reply("{}") } })
    conn:send('{"execute": "stop", "id": 1}\n')
    assert.are.equal("closed", read_error())
    assert.are.equal(1, finished())
    assert.matches("expected command cont, got stop", srv:log())
  end)

  it("delivers a chunked send completely", function()
    local data = string.rep("x", 3000)
    local event = fake.event("BLOCK_JOB_READY", '{"device": "' .. data .. '"}')
    start({ { send = event, chunk = 7 }, { send = fake.event("STOP") } })
    assert.are.equal(event, line() .. "\r\n")
    assert.are.equal('{"event": "STOP", "timestamp": {"seconds": 1700000000, ' ..
      '"microseconds": 1234}}', line())
    assert.matches("in chunks of 7", srv:log())
  end)

  it("gives EOF after close", function()
    start({ { greet = true }, { close = true }, { sleep = 0.5 } })
    line()
    assert.are.equal("closed", read_error())
  end)

  it("accepts a second connection", function()
    start({ { greet = true }, { close = true }, { accept = true }, { greet = true } })
    line()
    assert.are.equal("closed", read_error())
    conn:close()
    conn = assert(unix.stream())
    conn:settimeout(TEST_TIMEOUT)
    assert(conn:connect(srv.path))
    assert.are.equal(fake.greeting, line() .. "\r\n")
    assert.are.equal(0, finished(), srv:log())
    assert.are.equal(2, srv:accepted())
  end)

  it("half-closes and still reads", function()
    start({ { greet = true }, { shutdown_write = true }, { expect = "quit" } })
    line()
    assert.are.equal("closed", read_error())
    conn:send('{"execute": "quit"}\n')
    assert.are.equal(0, finished(), srv:log())
    assert.are.same({ '{"execute": "quit"}' }, srv:received())
  end)

  it("waits for the client to close", function()
    start({ { greet = true }, { wait_close = true } })
    line()
    assert.is_false(srv:wait(0.3))
    conn:close()
    conn = nil
    assert.are.equal(0, finished(), srv:log())
  end)

  it("holds the connection for a while", function()
    start({ { hold = 0.3 } })
    conn:send("ignored\n")
    local t0 = require("socket").gettime()
    assert.are.equal("closed", read_error())
    assert.is_true(require("socket").gettime() - t0 >= 0.25)
  end)

  it("gives up when its watchdog fires", function()
    srv = fake.start({ { expect = "qmp_capabilities" } }, { watchdog = 0.3 })
    conn = assert(unix.stream())
    assert(conn:connect(srv.path))
    assert.are.equal(2, finished(), srv:log())
    assert.matches("watchdog", srv:log())
  end)

  it("stop kills a waiting server and is idempotent", function()
    srv = fake.start({ { sleep = 30 } })
    local pid, dir = srv.pid, srv.dir
    srv:stop()
    srv:stop()
    assert.is_false(require("support.proc").alive(pid))
    assert.is_false(require("support.tmp").exists(dir .. "/steps.lua"))
  end)
end)
