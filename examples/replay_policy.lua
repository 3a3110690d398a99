#!/usr/bin/env lua5.4
--- Test the I/O-error policy offline: play a recording of a real incident
-- (`qmp-lua record`, qmp.record) to resume_on_io_error and print the
-- timeline on the replay's clock: what QEMU sent, what the policy decided,
-- the commands it sent, and the answers the replay inferred.
--   lua5.4 examples/replay_policy.lua RECORDING [retries [delay]]
--   lua5.4 examples/replay_policy.lua examples/io-error-capture.qmprec 2 0.05
--   lua5.4 examples/replay_policy.lua spec/fixtures/io-error.qmprec 2 0.05
-- examples/io-error-capture.qmprec is `qmp-lua record` on a QEMU 7.2 whose
-- disk fails every read, while an operator sent cont three times from a
-- second monitor.  A passive recorder holds QEMU's events but no reply to
-- the policy's commands: the replay answers query-status with the status
-- the events played so far imply ("io-error" after a BLOCK_IO_ERROR with
-- action stop and its STOP) and cont with QEMU's answer in that status
-- ({} here; the recording goes on as it was: the operator's RESUME comes
-- in its own time); each such answer is printed as "implied", with what
-- it was inferred from (docs/recording.md).
-- spec/fixtures/io-error.qmprec was recorded by the client that ran the
-- policy: every command is answered from the recording.
-- When the recording was made by the client that ran a policy, it holds
-- that policy's commands: a decision that differs from live shows as a
-- command "not expected here" or a stall (a command live sent that this
-- policy does not), and the exit status is 1.  So does, on a passive
-- recording, a command the replay had no answer for.
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

-- The commands sent, and the answers the replay inferred (the reply that
-- carries an implied answer's id), each in its place in the timeline.
local function show_commands(direction, text)
  if not vm then return end   -- not the handshake
  local msg = qmp.decode(text)
  if direction == "out" then
    say("sent", (msg.execute or msg["exec-oob"]) .. (msg.arguments and (" " .. qmp.encode(msg.arguments)) or ""))
  elseif msg.id ~= nil then
    for _, a in ipairs(vm.recording.implied) do
      if a.id == msg.id then
        say("implied", ("%s -> %s: %s"):format(a.name, qmp.encode(a.reply, { sort = true }), a.why))
      end
    end
  end
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

local ok, verdict
if vm.recording.passive then
  -- Nothing to compare with: the policy's commands were answered from the recording's events.
  local unanswered = 0
  for _, c in ipairs(vm.recording.unmatched) do
    if c.from == "none" then
      unanswered = unanswered + 1
      print(("%9.3f  %-7s %s: the recording has no answer to it"):format(c.t, "missing", c.name))
    end
  end
  ok = vm.recording.ended and unanswered == 0
  verdict = "recorded by a passive recorder: commands answered from the implied state"
  if unanswered > 0 then verdict = ("recorded by a passive recorder: %d command%s had no answer")
                                   :format(unanswered, unanswered == 1 and "" or "s") end
else
  for _, c in ipairs(vm.recording.unmatched) do
    print(("%9.3f  %-7s %s was not expected here: live, the client did something else"):format(c.t, "differs", c.name))
  end
  ok = vm.recording.ended and #vm.recording.unmatched == 0
  verdict = ok and "every command as recorded" or "the policy differs from the recording"
end
print(("%d resume%s, %d give-up%s; %s"):format(p.resumes, p.resumes == 1 and "" or "s", p.give_ups,
      p.give_ups == 1 and "" or "s", verdict))
os.exit(ok and 0 or 1)
