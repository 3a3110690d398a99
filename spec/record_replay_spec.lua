-- The incident of docs/recording.md, end to end: a real QEMU
-- 7.2 whose disk fails every read, `qmp-lua record` on one monitor, an
-- operator's cont (three times) on a second, then
-- examples/replay_policy.lua on the capture.  A passive recorder holds
-- QEMU's events but no reply to the policy's commands: the replay answers
-- them from the status the events imply, and says so.
--
-- examples/io-error-capture.qmprec is such a capture; to make it afresh,
-- run this spec with QMP_RECORD_SAMPLE=examples/io-error-capture.qmprec.
local qmp = require "qmp"
local qemu = require "support.qemu"
local disks = require "support.disks"
local proc = require "support.proc"
local tmp = require "support.tmp"

local cleanup = require("support.cleanup")(after_each)

local CHECKOUT = assert(io.popen("pwd")):read("l")   -- busted runs from the checkout
local ENV = { "env", "LUA_PATH=./lua/?.lua;./lua/?/init.lua;;", "LUA_CPATH=./?.so;;", "lua5.4" }

local function count(path, pattern)
  local n = 0
  for _ in (tmp.read(path) or ""):gmatch(pattern) do n = n + 1 end
  return n
end

-- Run argv in the foreground: exit status true/false and its output.
local function run(argv)
  local words = {}
  for i, w in ipairs(argv) do words[i] = tmp.quote(w) end
  local p = assert(io.popen(table.concat(words, " ") .. " 2>&1"))
  local text = p:read("a")
  return p:close() == true, text
end

describe("qmp-lua record, then replay_policy.lua, on a real QEMU #qemu", function()
  it("the policy resumes a passive capture from the status its events imply, and says so", function()
    local dir = tmp.dir("recrep")
    local ctl_sock = dir .. "/ctl.sock"
    local args = disks.failing_disk(disks.boot_image(dir, disks.POWER_OFF), "off")
    args[#args + 1] = "-qmp"
    args[#args + 1] = "unix:" .. ctl_sock .. ",server=on,wait=off"
    local machine = qemu.start({ dir = dir, args = args })
    cleanup(function() machine:stop(); tmp.remove(dir) end)
    assert.is_true(proc.wait_until(function() return proc.listening(ctl_sock) end, 10))

    -- The recorder, as an operator runs it: in the VM's directory, so the
    -- capture is named after the socket, not after this machine's paths.
    local capture = dir .. "/capture.qmprec"
    local recorder = proc.spawn({ "env", "-C", dir, CHECKOUT .. "/bin/qmp-lua", "record", "qmp.sock",
                                  "capture.qmprec", "--count", "9" }, dir .. "/record.out")
    cleanup(function() proc.kill(recorder) end)
    assert.is_true(proc.wait_until(function() return count(capture, '"return"') >= 1 end, 10),
                   tmp.read(dir .. "/record.out"))   -- negotiated: it sees every event from now on

    -- The operator starts the VM, and resumes it twice after the I/O error
    -- paused it, each time once the recorder has the STOP and after a look
    -- longer than the policy's delays (0.05 s, then 0.1 s): so in the
    -- replay the policy acts before the operator does.
    local ctl = assert(qmp.connect(ctl_sock, { timeout = 10 }))
    cleanup(function() ctl:close() end)
    for round = 1, 3 do
      assert(ctl:execute("cont"))
      assert(ctl:wait("STOP", 10))
      assert.equal("io-error", assert(ctl:execute("query-status")).status)
      assert.is_true(proc.wait_until(function() return count(capture, '"event":"STOP"') >= round end, 10))
      if round < 3 then ctl:run({ timeout = 0.3 }) end   -- the operator's look: a timeout, by design
    end
    assert.is_true(proc.wait_exit(recorder, 10), "the recorder did not stop after 9 events")
    assert.matches("9 events", tmp.read(dir .. "/record.out"))
    local sample = os.getenv("QMP_RECORD_SAMPLE")
    if sample then tmp.write(sample, assert(tmp.read(capture))) end

    local argv = { table.unpack(ENV) }
    for _, w in ipairs({ "examples/replay_policy.lua", capture, "2", "0.05" }) do argv[#argv + 1] = w end
    local ok, text = run(argv)
    assert.is_true(ok, text)
    assert.matches("policy%s+disk0: cont sent %(attempt 1 of 2%)", text)
    assert.matches("policy%s+disk0: cont sent %(attempt 2 of 2%)", text)
    assert.matches("policy%s+giving up: disk0", text)
    local implied = {}
    for line in text:gmatch("[^\n]+") do
      local what = line:match("^%s*[%d.]+%s+implied%s+(.*)")
      if what then implied[#implied + 1] = what end
    end
    assert.equal(4, #implied, text)   -- query-status and cont, twice
    for i = 1, 3, 2 do
      assert.matches('^query%-status %-> {"return":{"running":false,"status":"io%-error"}}: the STOP at [%d.]+ s, '
                     .. "after the BLOCK_IO_ERROR at", implied[i])
      assert.matches('^cont %-> {"return":{}}: not recorded', implied[i + 1])
    end
    assert.matches("2 resumes, 1 give%-up; recorded by a passive recorder: commands answered from the implied state",
                   text)
    assert.not_matches("GenericError", text)
  end)
end)
