-- qmp.loop: one poll loop for many connections, against fake peers and,
-- tagged #qemu, real QEMUs.
local qmp = require "qmp"
local core = require "qmp.core"
local fake = require "support.fake_qmp"

local EV = fake.event
local cleanup = require("support.cleanup")(after_each)

local serve = fake.bound(cleanup)
local opening = fake.opening

local function connect(path, name)
  local vm, err = qmp.connect(path, { timeout = 5, name = name })
  assert(vm, tostring(err))
  cleanup(function() vm:close() end)
  return vm
end

describe("core.poll()", function()
  it("returns the indices of the readable fds, skipping negative ones", function()
    -- After a pause, so the event is not read along with the handshake.
    local a = connect(serve(opening({ { sleep = 0.1 }, { send = EV("STOP") }, { hold = 5 } })).path, "a")
    local b = connect(serve(opening({ { hold = 5 } })).path, "b")
    local t0 = qmp.monotime()
    local ready = assert(core.poll({ -1, b:pollfd(), a:pollfd() }, 2))
    assert.same({ 3 }, ready)
    assert.is_true(qmp.monotime() - t0 < 1.5)
  end)

  it("returns an empty list at the timeout; 0 just checks", function()
    local b = connect(serve(opening({ { hold = 5 } })).path, "b")
    local t0 = qmp.monotime()
    assert.same({}, core.poll({ b:pollfd() }, 0.1))
    assert.is_true(qmp.monotime() - t0 >= 0.09)
    assert.same({}, core.poll({ b:pollfd() }, 0))
    assert.same({}, core.poll({}, 0))
  end)

  it("rejects non-integer fds and too many fds", function()
    assert.has_error(function() core.poll({ "x" }, 0) end)
    local many = {}
    for i = 1, 65537 do many[i] = -1 end
    assert.has_error(function() core.poll(many, 0) end)
  end)
end)

for _, backend in ipairs({ "epoll", "poll" }) do
describe("qmp.loop (" .. backend .. ")", function()
  local function new_loop(vms) return qmp.loop(vms, { backend = backend }) end

  it("delivers each of 200 connections its own event, with the right vm", function()
    local N = 200
    local srv = fake.start_many(N)
    cleanup(function() srv:stop() end)
    local loop = new_loop()
    local by_name = {}
    for k = 1, N do
      local vm = connect(srv.path, "vm" .. k)
      by_name[vm.name] = k
      loop:add(vm)
    end
    assert.equal(N, #loop:vms())
    local got, count = {}, 0
    loop:on("RTC_CHANGE", function(ev, vm)
      assert.is_nil(got[vm.name])
      got[vm.name] = ev.offset
      count = count + 1
    end)
    local t0 = qmp.monotime()
    assert.is_true(loop:run({ timeout = 10, done = function() return count >= N end }))
    assert.is_true(qmp.monotime() - t0 < 10)
    for name, k in pairs(by_name) do assert.equal(k, got[name], name) end
    for _, vm in ipairs(loop:vms()) do vm:close() end
    assert.is_true(srv:wait(5))
    assert.equal(0, srv:status(), srv:log())
  end)

  it("keeps the others going when one peer closes, and reports it through on_close", function()
    local a = connect(serve(opening({ { sleep = 0.05 }, { send = EV("STOP") }, { close = true } })).path, "a")
    local b = connect(serve(opening({ { sleep = 0.3 }, { send = EV("RESUME") }, { hold = 5 } })).path, "b")
    local c = connect(serve(opening({ { sleep = 0.4 }, { send = EV("RESUME") }, { hold = 5 } })).path, "c")
    local loop = new_loop{ a, b, c }
    local seen, closed = {}, {}
    loop.on_close = function(vm, err) closed[#closed + 1] = vm.name .. ":" .. err.kind end
    loop:on("*", function(ev, vm) seen[#seen + 1] = vm.name .. ":" .. ev.event end)
    assert.is_true(loop:run({ timeout = 5, done = function() return #seen >= 3 end }))
    assert.same({ "a:STOP", "b:RESUME", "c:RESUME" }, seen)
    assert.same({ "a:closed" }, closed)
    assert.same({ b, c }, loop:vms())
  end)

  it("ends with closed when the last VM has gone", function()
    local a = connect(serve(opening({ { send = EV("STOP") }, { close = true } })).path, "a")
    local loop = new_loop{ a }
    local seen = 0
    loop:on("STOP", function() seen = seen + 1 end)
    local ok, err = loop:run({ timeout = 5 })
    assert.is_nil(ok)
    assert.equal("closed", err.kind)
    assert.equal(1, seen)
    assert.same({}, loop:vms())
  end)

  it("ends on loop:stop() from a handler, leaving later events queued", function()
    local a = connect(serve(opening({ { send = EV("STOP") .. EV("RESUME") }, { hold = 5 } })).path, "a")
    assert(a:listen("RESUME"):wait(2))   -- both events are in
    local loop = new_loop{ a }
    local seen = {}
    loop:on("*", function(ev, vm)
      seen[#seen + 1] = ev.event
      if ev.event == "STOP" then loop:stop() end
      assert.equal(a, vm)
    end)
    assert.is_true(loop:run({ timeout = 5 }))
    assert.same({ "STOP" }, seen)
    assert.is_true(loop:run({ timeout = 5, done = function() return #seen >= 2 end }))
    assert.same({ "STOP", "RESUME" }, seen)
  end)

  it("returns timeout when nothing ends it", function()
    local loop = new_loop{ connect(serve(opening({ { hold = 5 } })).path, "a"),
                           connect(serve(opening({ { hold = 5 } })).path, "b") }
    local t0 = qmp.monotime()
    local ok, err = loop:run({ timeout = 0.2 })
    assert.is_nil(ok)
    assert.equal("timeout", err.kind)
    local took = qmp.monotime() - t0
    assert.is_true(took >= 0.19 and took < 2, took)
  end)

  it("fires each VM's timers inside run", function()
    local a = connect(serve(opening({ { hold = 5 } })).path, "a")
    local b = connect(serve(opening({ { hold = 5 } })).path, "b")
    local fired = {}
    a:after(0.1, function(vm) fired[#fired + 1] = vm.name .. "@0.1" end)
    b:after(0.05, function(vm) fired[#fired + 1] = vm.name .. "@0.05" end)
    local loop = new_loop{ a, b }
    b:after(0.15, function() fired[#fired + 1] = "stop"; loop:stop() end)
    local t0 = qmp.monotime()
    assert.is_true(loop:run({ timeout = 5 }))
    assert.same({ "b@0.05", "a@0.1", "stop" }, fired)
    assert.is_true(qmp.monotime() - t0 < 2)
  end)

  it("gives fleet handlers to VMs added later, not to removed ones; off() removes them all", function()
    local a = connect(serve(opening({ { sleep = 0.1 }, { send = EV("STOP") }, { sleep = 0.2 }, { send = EV("RESUME") },
                                      { hold = 5 } })).path, "a")
    local b = connect(serve(opening({ { sleep = 0.1 }, { send = EV("STOP") }, { hold = 5 } })).path, "b")
    local loop = new_loop{ a }
    local seen = {}
    local sub = loop:on("STOP", function(ev, vm) seen[#seen + 1] = vm.name .. ":" .. ev.event end)
    local all = loop:on(function(ev) return ev.event ~= "STOP" end, function(ev, vm)
      seen[#seen + 1] = "any " .. vm.name .. ":" .. ev.event
    end)
    loop:add(b)
    loop:add(b)  -- no double subscription
    assert.is_true(loop:run({ timeout = 5, done = function() return #seen >= 2 end }))
    table.sort(seen)
    assert.same({ "a:STOP", "b:STOP" }, seen)
    assert.is_true(loop:remove(b))
    assert.is_false(loop:remove(b))
    assert.same({ a }, loop:vms())
    sub:off()
    sub:off()
    seen = {}
    assert.is_true(loop:run({ timeout = 5, done = function() return #seen >= 1 end }))
    assert.same({ "any a:RESUME" }, seen)
    all:off()
    assert.equal(0, a:handlers())
    assert.equal(0, b:handlers())
  end)

  it("never visits a client with nothing to do while another one's events flow", function()
    local busy_srv = serve(opening({ { wait_for = "go" }, { ticks = { count = 20, every = 0.01 } }, { hold = 5 } }))
    local busy = connect(busy_srv.path, "busy")
    local idle, visits = {}, 0
    local loop = new_loop{ busy }
    for k = 1, 20 do
      local vm = connect(serve(opening({ { hold = 5 } })).path, "idle" .. k)
      idle[k] = vm
      loop:add(vm)
    end
    assert.equal("timeout", select(2, loop:run({ timeout = 0.1 })).kind)   -- all registered
    for _, vm in ipairs(idle) do   -- from now on, count every question the loop asks them
      for _, method in ipairs({ "step", "pollfd", "events", "timeout" }) do
        local inherited = vm[method]
        vm[method] = function(...) visits = visits + 1; return inherited(...) end
      end
    end
    local seen = 0
    loop:on("RTC_CHANGE", function() seen = seen + 1 end)
    busy_srv:tell("go")
    assert.is_true(loop:run({ timeout = 5, done = function() return seen >= 20 end }))
    assert.equal(0, visits)
  end)

  it("dispatches events a command read outside the loop, with no more bytes to come", function()
    local a = connect(serve(opening({ { expect = "query-status",
                                        reply = EV("STOP") .. fake.reply('{"status": "running", "running": true}') },
                                      { hold = 5 } })).path, "a")
    local loop = new_loop{ a }
    assert.equal("timeout", select(2, loop:run({ timeout = 0.05 })).kind)
    local seen = {}
    loop:on("STOP", function(_, vm) seen[#seen + 1] = vm.name end)
    assert(a:execute("query-status"))   -- the STOP came in with the reply: queued, the socket quiet
    local t0 = qmp.monotime()
    assert.is_true(loop:run({ timeout = 5, done = function() return #seen == 1 end }))
    assert.is_true(qmp.monotime() - t0 < 1)
  end)

  it("lets a handler command another VM of the loop and still sees that VM's events", function()
    local a = connect(serve(opening({ { sleep = 0.05 }, { send = EV("STOP") }, { hold = 5 } })).path, "a")
    local b = connect(serve(opening({ { expect = "cont", reply = EV("RESUME") .. fake.reply("{}") },
                                      { hold = 5 } })).path, "b")
    local loop = new_loop{ a, b }
    local seen = {}
    loop:on("STOP", function(_, vm)
      seen[#seen + 1] = vm.name .. ":STOP"
      assert(b:execute("cont"))
    end)
    loop:on("RESUME", function(_, vm) seen[#seen + 1] = vm.name .. ":RESUME" end)
    assert.is_true(loop:run({ timeout = 5, done = function() return #seen == 2 end }))
    assert.same({ "a:STOP", "b:RESUME" }, seen)
  end)

  it("fires a timer set between runs, and one set by another VM's handler", function()
    local a = connect(serve(opening({ { sleep = 0.05 }, { send = EV("STOP") }, { hold = 5 } })).path, "a")
    local b = connect(serve(opening({ { hold = 5 } })).path, "b")
    local loop = new_loop{ a, b }
    assert.equal("timeout", select(2, loop:run({ timeout = 0.01 })).kind)
    local fired = {}
    b:after(0.02, function() fired[#fired + 1] = "between runs" end)
    loop:on("STOP", function()
      b:after(0.02, function() fired[#fired + 1] = "from a's handler"; loop:stop() end)
    end)
    local t0 = qmp.monotime()
    assert.is_true(loop:run({ timeout = 5 }))
    assert.same({ "between runs", "from a's handler" }, fired)
    assert.is_true(qmp.monotime() - t0 < 1)   -- not when b's peer goes away
  end)

  it("keeps a due timer that a stop in the same turn left unfired, for the next run", function()
    local a = connect(serve(opening({ { hold = 5 } })).path, "a")
    local b = connect(serve(opening({ { hold = 5 } })).path, "b")
    local loop = new_loop{ a, b }
    assert.equal("timeout", select(2, loop:run({ timeout = 0.01 })).kind)
    local fired = {}
    a:after(0.01, function() fired[#fired + 1] = "a"; loop:stop() end)
    b:after(0.02, function() fired[#fired + 1] = "b" end)
    local until_due = qmp.monotime() + 0.03
    repeat until qmp.monotime() >= until_due   -- both due before the next turn
    assert.is_true(loop:run({ timeout = 5 }))
    assert.same({ "a" }, fired)
    local t0 = qmp.monotime()
    assert.is_true(loop:run({ timeout = 5, done = function() return #fired == 2 end }))
    assert.same({ "a", "b" }, fired)
    assert.is_true(qmp.monotime() - t0 < 1)
  end)

  it("does not stay alive through its clients once dropped", function()
    local a = connect(serve(opening({ { hold = 5 } })).path, "a")
    local seen = setmetatable({}, { __mode = "k" })
    do
      local loop = new_loop{ a }
      seen[loop] = true
    end
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(seen))
    local again = new_loop{ a }   -- the client joins another loop as if new
    a:after(0, function() again:stop() end)
    assert.is_true(again:run({ timeout = 5 }))
  end)

  it("close takes the clients out and leaves their connections open", function()
    local a = connect(serve(opening({ { sleep = 0.05 }, { send = EV("STOP") }, { hold = 5 } })).path, "a")
    local seen = 0
    do
      local loop <close> = new_loop{ a }
      loop:on("STOP", function() seen = seen + 1 end)
    end
    assert.equal(0, a:handlers())   -- its fleet handler went with it
    assert.equal("ready", a.state)
    local again = new_loop{ a }
    again:on("STOP", function() seen = seen + 1 end)
    assert.is_true(again:run({ timeout = 5, done = function() return seen == 1 end }))
    again:close()
    assert.equal("closed", select(2, again:run({ timeout = 0 })).kind)
    assert.has_error(function() again:add(a) end, "qmp.loop: add: the loop is closed")
  end)

  it("rejects what is not a client or a handler", function()
    assert.has_error(function() new_loop{ 42 } end)
    assert.has_error(function() new_loop():on("STOP") end)
    assert.has_error(function() new_loop():run({ timeout = -1 }) end)
  end)
end)
end

describe("qmp.loop with few file descriptors", function()
  -- In a child lua5.4 under `ulimit -n`.  poll() answers EINVAL when it is
  -- given more entries than RLIMIT_NOFILE, skipped ones (fd -1) included:
  -- a loop of clients waiting to reconnect (fd -1 each) failed every run with
  -- "io: poll: Invalid argument" while 7 fds were really open.
  local tmp = require "support.tmp"
  local proc = require "support.proc"

  local CHILD = [==[
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local qmp = require "qmp"
local core = require "qmp.core"
local socket = require "socket"
local what, path = arg[1], arg[2]   -- path: where nothing listens
local function say(k, v) io.write(k, " ", tostring(v), "\n") io.flush() end
if what == "loop" then
  -- a readable fd behind 1,100 skipped ones: its index is still its place in the list
  local server = assert(socket.bind("127.0.0.1", 0))
  local ip, port = server:getsockname()
  local peer = assert(socket.connect(ip, port))   -- pending: the listener is readable
  local list = {}
  for i = 1, 1100 do list[i] = -1 end
  list[1101], list[1102] = math.tointeger(server:getfd()), -1
  local ready, err = core.poll(list, 5)
  say("poll", ready and table.concat(ready, ",") or err)
  peer:close()
  server:close()
  local loop = qmp.loop()
  for i = 1, 1100 do
    loop:add(assert(qmp.client(path, { name = "vm" .. i, reconnect = { min = 0.05, max = 0.2 } })))
  end
  local t0 = core.monotime()
  local ok, rerr = loop:run({ timeout = 1 })
  say("run", ok or tostring(rerr))
  say("took", core.monotime() - t0)
  say("vms", #loop:vms())
  say("attempts", loop:vms()[1]._backoff.attempts)
  -- fds in the loop's epoll set ("tfd:" lines of an eventpoll fd's fdinfo)
  local pid = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
  local watched, polls = 0, 0
  for line in io.popen("ls -l /proc/" .. pid .. "/fd"):lines() do
    local fd = line:match(" (%d+) %-> anon_inode:%[eventpoll%]")
    if fd then
      polls = polls + 1
      for info in io.lines("/proc/" .. pid .. "/fdinfo/" .. fd) do
        if info:match("^tfd:") then watched = watched + 1 end
      end
    end
  end
  say("epoll", polls .. " " .. watched)
elseif what == "emfile" then
  local vm = assert(qmp.client(path, { name = "late", reconnect = { min = 0.01, max = 0.02 } }))
  local loop = qmp.loop({ vm })
  local hold = {}
  while true do   -- every fd this process may have
    local f = io.open("/dev/null")
    if not f then break end
    hold[#hold + 1] = f
  end
  local _, err = qmp.connect(path, { timeout = 1 })
  say("connect", err.kind .. ": " .. err.message)
  local ok, rerr = loop:run({ timeout = 0.3 })
  say("run", ok or tostring(rerr))
  say("last", tostring(vm:last_error()))
  for _, f in ipairs(hold) do f:close() end
  ok, rerr = loop:run({ timeout = 0.3 })
  say("run", ok or tostring(rerr))
  say("last", tostring(vm:last_error()))
end
]==]

  local function run_child(what, nofile)
    local dir = tmp.dir("qmpnofile")
    tmp.write(dir .. "/child.lua", CHILD)
    local status, out = proc.run(("sh -c 'ulimit -n %d && exec lua5.4 \"$0\" \"$1\" \"$2\"' %s %s %s")
                                 :format(nofile, tmp.quote(dir .. "/child.lua"), what, tmp.quote(dir .. "/nobody.sock")))
    tmp.remove(dir)
    assert.equal(0, status, out)
    local said = {}
    for k, v in out:gmatch("(%S+) ([^\n]*)\n") do
      said[k] = said[k] or {}
      table.insert(said[k], v)
    end
    return said, out
  end

  it("runs 1,100 clients waiting to reconnect under ulimit -n 64: none holds a slot in the poller", function()
    local said, out = run_child("loop", 64)
    assert.same({ "1101" }, said.poll, out)
    assert.same({ "timeout: loop: 1 s passed" }, said.run, out)
    assert.is_true(tonumber(said.took[1]) >= 0.95, out)
    assert.same({ "1100" }, said.vms, out)
    assert.is_true(tonumber(said.attempts[1]) >= 2, out)   -- it kept trying
    assert.same({ "1 0" }, said.epoll, out)                 -- and none of them holds a slot
  end)

  it("says io, not refused, when no fd is left for a socket, and the loop goes on", function()
    local said, out = run_child("emfile", 32)
    assert.matches("^io: cannot connect to .*nobody%.sock: Too many open files %(this process has no file "
                   .. "descriptor left: see ulimit %-n%)$", said.connect[1], out)
    assert.same({ "timeout: loop: 0.3 s passed", "timeout: loop: 0.3 s passed" }, said.run, out)
    assert.matches("^io: .*Too many open files", said.last[1], out)   -- while none is left
    assert.matches("^refused: no socket at ", said.last[2], out)      -- and once there are again
  end)
end)

describe("qmp.loop with real QEMUs #qemu", function()
  local qemu = require "support.qemu"

  it("sees each machine's RESUME with its vm, among 200 fake peers", function()
    local loop = qmp.loop()
    local real = {}
    for i = 1, 3 do
      local machine = qemu.start()
      cleanup(function() machine:stop() end)
      local vm = connect(machine.sock, "qemu" .. i)
      real[#real + 1] = vm
      loop:add(vm)
    end
    local N = 200
    local srv = fake.start_many(N)
    cleanup(function() srv:stop() end)
    for k = 1, N do loop:add(connect(srv.path, "fake" .. k)) end
    local resumed, offsets = {}, {}
    loop:on("RESUME", function(_, vm) resumed[#resumed + 1] = vm.name end)
    loop:on("RTC_CHANGE", function(ev, vm) offsets[vm.name] = ev.offset end)
    local function fakes_done()
      for k = 1, N do if offsets["fake" .. k] ~= k then return false end end
      return true
    end
    -- cont from inside the loop: timers run by loop:run.
    for _, vm in ipairs(real) do
      vm:after(0, function(v) assert(v:execute("cont")) end)
    end
    assert.is_true(loop:run({ timeout = 20, done = function() return #resumed >= 3 and fakes_done() end }))
    table.sort(resumed)
    assert.same({ "qemu1", "qemu2", "qemu3" }, resumed)
    assert.equal(N + 3, #loop:vms())
    for _, vm in ipairs(real) do
      assert.equal("running", assert(vm:execute("query-status")).status)
    end
  end)
end)
