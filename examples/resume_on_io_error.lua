#!/usr/bin/env lua5.4
--- Resume a VM that a disk I/O error paused, a bounded number of times,
-- printing the policy's timeline and every event as one line.
--   lua5.4 examples/resume_on_io_error.lua SOCKET [retries]
-- SOCKET is any qmp.connect address ("/run/vm1/qmp.sock", "tcp:127.0.0.1:4444").
-- Runs until the connection closes (QEMU exits) or Ctrl-C.
local qmp = require "qmp"

local address = arg[1]
local retries = math.tointeger(tonumber(arg[2] or "3"))
if not address or not retries or retries < 0 then
  io.stderr:write("usage: resume_on_io_error.lua SOCKET [retries]\n")
  os.exit(2)
end

local vm <close> = assert(qmp.connect(address, { name = address }))
local v = vm.greeting.QMP.version.qemu
io.stderr:write(("watching %s (QEMU %d.%d.%d), up to %d resumes per disk per minute; Ctrl-C to stop\n")
                :format(address, v.major, v.minor, v.micro, retries))

local function say(line)
  print(line)
  io.stdout:flush()
end

vm:on("*", function(ev) say(tostring(ev)) end)
qmp.policy.resume_on_io_error(vm, {
  retries = retries,
  log = function(line) say("policy: " .. line) end,
  on_give_up = function(ev)
    say(("policy: %s stays paused; fix the disk, then cont"):format(ev["node-name"] or ev.device or "the VM"))
  end,
})

local _, err = vm:run()
io.stderr:write(tostring(err), "\n")
