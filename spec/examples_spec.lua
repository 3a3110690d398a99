-- The examples run: each against real QEMUs, driven from a second monitor.
local qemu = require "support.qemu"
local proc = require "support.proc"
local tmp = require "support.tmp"
local qmp = require "qmp"

local cleanup = require("support.cleanup")(after_each)
local ENV = { "env", "LUA_PATH=./lua/?.lua;./lua/?/init.lua;;", "LUA_CPATH=./?.so;;", "lua5.4" }

-- A QEMU with a second monitor (drive.sock), so a script can watch while the spec drives.
local function machine()
  local dir = tmp.dir("example")
  local m = qemu.start({ dir = dir, args = { "-qmp", "unix:" .. dir .. "/drive.sock,server=on,wait=off" } })
  cleanup(function() m:stop(); tmp.remove(dir) end)
  return m
end

local function drive(m, commands)
  local vm = assert(qmp.connect(m.dir .. "/drive.sock", { timeout = 10 }))
  for _, c in ipairs(commands) do assert(vm:execute(c)) end
  vm:close()
end

-- Run an example in the background; returns a function that waits for its end and gives its output.
local function start(script, ...)
  local dir = tmp.dir("out")
  cleanup(function() tmp.remove(dir) end)
  local argv = { table.unpack(ENV) }
  argv[#argv + 1] = script
  for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
  local pid = proc.spawn(argv, dir .. "/out")
  cleanup(function() proc.kill(pid) end)
  return function()
    assert.is_true(proc.wait_exit(pid, 20), "example did not end")
    return tmp.read(dir .. "/out")
  end, dir .. "/out", pid
end

-- Wait until the example's output contains pattern (it is connected and ready).
local function until_output(file, pattern)
  assert.is_true(proc.wait_until(function() return (tmp.read(file) or ""):find(pattern) ~= nil end, 10),
                 tmp.read(file))
end

describe("the examples #qemu", function()
  it("demo.lua tours a VM and shows the policy resuming it", function()
    local p = io.popen("sh examples/demo.sh 2>&1")
    local text = p:read("a")
    local ok = p:close()
    assert.is_true(ok, text)
    assert.matches("DEVICE_TRAY_MOVED", text)
    assert.matches("policy%s+disk0: cont sent", text)
    assert.matches("powered itself off after 1 resume", text)
    assert.matches('qmp%-lua exec %(through the mux%) query%-status\n%s+{"running":false', text)
    assert.matches("qmp%-lua events %(through the mux%) saw:\n[^\n]*RESUME\n[^\n]*STOP\n", text)
    assert.matches("demo finished", text)
  end)

  it("watch_events.lua prints the events its filters select", function()
    local m = machine()
    local finish, out = start("examples/watch_events.lua", m.sock, "STOP", "SHUTDOWN")
    until_output(out, "watching")
    drive(m, { "cont", "stop", "quit" })
    local text = finish()
    assert.matches("STOP", text)
    assert.matches("SHUTDOWN reason=host%-qmp%-quit", text)
    assert.not_matches("RESUME", text)
  end)

  it("watch_events.lua ends on SIGINT with its count, idle or not", function()
    local m = machine()
    local finish, out, pid = start("examples/watch_events.lua", m.sock, "STOP")
    until_output(out, "watching")
    drive(m, { "cont", "stop" })
    until_output(out, "STOP")
    proc.kill(pid, "INT")
    local text = finish()
    assert.matches("stopped by SIGINT after 1 event\n$", text)
    assert.not_matches("traceback", text)
  end)

  it("fleet.lua watches several VMs in one loop until the last is gone", function()
    local a, b = machine(), machine()
    local finish, out = start("examples/fleet.lua", a.sock, b.sock)
    until_output(out, "connected.*\n.*connected")
    drive(a, { "cont", "quit" })
    drive(b, { "quit" })
    local text = finish()
    assert.matches(a.sock:gsub("%p", "%%%0") .. "%s+%S+ %S+ RESUME", text)
    assert.matches(b.sock:gsub("%p", "%%%0") .. "%s+gone", text)
    assert.matches("no VM left", text)
  end)

  it("resume_on_io_error.lua and cqueues_watch.lua run until the VM goes", function()
    local m = machine()
    local finish1, out1 = start("examples/resume_on_io_error.lua", m.sock, "2")
    local other = machine()
    local finish2, out2 = start("examples/cqueues_watch.lua", other.sock)
    until_output(out1, "watching")
    until_output(out2, "watching")
    drive(m, { "quit" })
    drive(other, { "cont" })
    until_output(out2, "status after RESUME: running")   -- the command of the second coroutine
    drive(other, { "quit" })
    assert.matches("SHUTDOWN", finish1())
    local text = finish2()
    assert.matches("RESUME", text)
    assert.matches("SHUTDOWN", text)
    assert.matches("closed: ", text)
  end)

  it("shared_monitor.lua shares the monitor its policy holds, and removes the socket on SIGTERM", function()
    local m = machine()
    local path = m.dir .. "/mux.sock"
    local finish, out, pid = start("examples/shared_monitor.lua", m.sock, path)
    until_output(out, "sharing it on")
    local tool = assert(qmp.connect(path, { timeout = 10 }))   -- a tool through the mux
    cleanup(function() tool:close() end)
    drive(m, { "cont" })                                        -- from QEMU's second monitor
    assert(tool:wait("RESUME", nil, 10))
    assert.equal("running", assert(tool:execute("query-status")).status)
    tool:close()
    until_output(out, "client 1 %(pid %d+, uid %d+%) left")
    proc.kill(pid, "TERM")
    local text = finish()
    assert.matches("ending: interrupted", text)
    assert.is_false(tmp.exists(path))
  end)

  it("luv_watch.lua runs a command per pause or resume from a second coroutine until the VM goes", function()
    local m = machine()
    local finish, out = start("examples/luv_watch.lua", m.sock)
    until_output(out, "watching")
    drive(m, { "cont" })
    until_output(out, "status after RESUME: running")
    drive(m, { "stop" })
    until_output(out, "status after STOP: paused")
    drive(m, { "quit" })
    local text = finish()
    assert.matches("RESUME", text)
    assert.matches("SHUTDOWN", text)
    assert.matches("closed: ", text)
  end)

  it("luv_watch.lua closes its clients and ends on SIGINT", function()
    local m = machine()
    local finish, out, pid = start("examples/luv_watch.lua", m.sock)
    until_output(out, "watching")
    drive(m, { "cont" })
    until_output(out, "status after RESUME: running")   -- both coroutines parked again
    proc.kill(pid, "INT")
    local text = finish()
    assert.matches("closed: the connection was closed by this client", text)
  end)
end)

describe("replay_policy.lua", function()
  it("plays the recording of a real incident to the policy and prints its timeline", function()
    local words = { table.unpack(ENV) }
    for _, w in ipairs({ "examples/replay_policy.lua", "spec/fixtures/io-error.qmprec", "2", "0.05" }) do words[#words + 1] = w end
    for i, w in ipairs(words) do words[i] = tmp.quote(w) end
    local p = io.popen(table.concat(words, " ") .. " 2>&1")
    local text = p:read("a")
    assert.is_true(p:close(), text)
    assert.matches("policy%s+disk0: cont sent %(attempt 2 of 2%)", text)
    assert.matches("policy%s+giving up: disk0", text)
    assert.matches("end%s+closed: end of the recording", text)
    assert.matches("2 resumes, 1 give%-up; every command as recorded", text)
  end)

  it("plays the README's sample capture by a passive recorder, naming every answer it inferred", function()
    local words = { table.unpack(ENV) }
    for _, w in ipairs({ "examples/replay_policy.lua", "examples/io-error-capture.qmprec", "2", "0.05" }) do
      words[#words + 1] = w
    end
    for i, w in ipairs(words) do words[i] = tmp.quote(w) end
    local p = io.popen(table.concat(words, " ") .. " 2>&1")
    local text = p:read("a")
    assert.is_true(p:close(), text)
    local _, queries = text:gsub('implied query%-status %-> {"return":{"running":false,"status":"io%-error"}}: '
                                 .. "the STOP at [%d.]+ s, after the BLOCK_IO_ERROR at [%d.]+ s\n", "")
    local _, conts = text:gsub('implied cont %-> {"return":{}}: not recorded', "")
    assert.same({ 2, 2 }, { queries, conts }, text)
    assert.matches("policy%s+disk0: cont sent %(attempt 2 of 2%)", text)
    assert.matches("2 resumes, 1 give%-up; recorded by a passive recorder: commands answered from the implied state",
                   text)
  end)
end)
