#!/usr/bin/env lua5.4
--- Test the I/O-error policy offline: play a recording of a real incident
-- (`qmp-lua record`, qmp.record) to resume_on_io_error and print the
-- timeline on the replay's clock: what QEMU sent, what the policy decided,
-- the commands it sent.
--   lua5.4 examples/replay_policy.lua RECORDING [retries [delay]]
--   lua5.4 examples/replay_policy.lua spec/fixtures/io-error.qmprec 2 0.05
-- When the recording was made by the client that ran a policy, it holds
-- that policy's commands: a decision that differs from live shows as a
-- command "not expected here" or a stall (a command live sent that this
-- policy does not), and the exit status is 1.
local qmp = require "qmp"

local path = arg[1]
local retries = math.tointeger(tonumber(arg[2] or "3"))
local delay = tonumber(arg[3] or "1")
if not path or not retries or retries < 0 or not delay or delay < 0 then
  io.stderr:write("usage: replay_policy.lua RECORDING [retries [delay]]\n")
  os.exit(2)
end

local vm   -- the replay; say() reads its clock

local function say(what, text)
  print(("%9.3f  %-7s %s"):format(vm and vm.recording:now() or 0, what, text))
end

local function show_commands(direction, text)
  if direction ~= "out" or not vm then return end   -- not the handshake
  local msg = qmp.decode(text)
  say("sent", (msg.execute or msg["exec-oob"]) .. (msg.arguments and (" " .. qmp.encode(msg.arguments)) or ""))
end

local err
vm, err = qmp.replay(path, { trace = show_commands })
if not vm then
  io.stderr:write(tostring(err), "\n")
  os.exit(2)
end
local v = vm.greeting.QMP.version.qemu
say("replay", ("%s: QEMU %d.%d.%d, recorded %s"):format(path, v.major, v.minor, v.micro, vm.recording.started or "?"))

vm:on("*", function(ev) say("event", (tostring(ev):gsub("^%S+ %S+ ", ""))) end)  -- without QEMU's date
local p = qmp.policy.resume_on_io_error(vm, {
  retries = retries, delay = delay,
  log = function(line) say("policy", line) end,
})

-- A recording of a paused guest goes on from the cont its operator sent.
if vm.recording:expected() == "cont" then assert(vm:execute("cont")) end
local _, ended = vm:run()
say("end", tostring(ended))

for _, c in ipairs(vm.recording.unmatched) do
  print(("%9.3f  %-7s %s was not expected here: live, the client did something else"):format(c.t, "differs", c.name))
end
local as_live = vm.recording.ended and #vm.recording.unmatched == 0
local verdict = as_live and "every command as recorded" or "the policy differs from the recording"
print(("%d resume%s, %d give-up%s; %s"):format(p.resumes, p.resumes == 1 and "" or "s", p.give_ups,
      p.give_ups == 1 and "" or "s", verdict))
os.exit(as_live and 0 or 1)
