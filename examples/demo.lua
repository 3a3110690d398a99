#!/usr/bin/env lua5.4
--- The demo: start a throwaway QEMU, connect, drive it and print every event.
-- Needs qemu-system-x86_64 (TCG; no disk image, no guest OS).
local qmp = require "qmp"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local dir = sh("mktemp -d"):gsub("%s+$", "")
local sock = dir .. "/qmp.sock"
local pid

-- QEMU in the background; its pid lets us clean up whatever happens.
local function start_qemu()
  pid = sh(("qemu-system-x86_64 -M pc -S -accel tcg -display none -nodefaults -no-user-config "
    .. "-m 64 -device ide-cd,id=cd0,bus=ide.1 -qmp unix:%s,server=on,wait=off "
    .. ">%s/qemu.log 2>&1 & echo $!"):format(sock, dir)):match("%d+")
  -- The socket appears once QEMU is up: retry connecting for up to 10 s.
  local deadline = qmp.monotime() + 10
  while true do
    local vm, err = qmp.connect(sock, { name = "demo", timeout = 5 })
    if vm then return vm end
    if qmp.monotime() > deadline then error("QEMU did not start: " .. tostring(err)) end
    os.execute("sleep 0.05")
  end
end

local function step(vm, title, command, args, expect)
  print(("\n> %s  (%s)"):format(title, command))
  local ret = assert(vm:execute(command, args))
  if type(ret) == "string" then io.write(ret) end
  if expect then
    local ev = assert(vm:wait(expect, nil, 10))
    print("  event: " .. tostring(ev))
  end
  while true do  -- any other event that came along
    local other = vm:wait("*", nil, 0)
    if not other then break end
    print("  event: " .. tostring(other))
  end
end

local function main()
  local vm <close> = start_qemu()
  local v = vm.greeting.QMP.version.qemu
  print(("connected to QEMU %d.%d.%d at %s (oob %s)"):format(v.major, v.minor, v.micro, sock,
        vm.oob and "enabled" or "not offered"))
  print("status: " .. assert(vm:execute("query-status")).status)
  step(vm, "start the CPUs", "cont", nil, "RESUME")
  step(vm, "pause the VM", "stop", nil, "STOP")
  step(vm, "reset the machine", "system_reset", nil, "RESET")
  step(vm, "open the CD tray", "eject", { id = "cd0", force = true }, "DEVICE_TRAY_MOVED")
  step(vm, "ask HMP", "human-monitor-command", { ["command-line"] = "info status" })
  local ok, err = vm:execute("no-such-command")
  print(("\n> a command QEMU does not know\n  %s %s"):format(tostring(ok), tostring(err)))
  step(vm, "quit QEMU", "quit", nil, "SHUTDOWN")
  local _, closed = vm:execute("query-status")
  print("\nafter quit: " .. tostring(closed))
end

local ok, err = pcall(main)
-- Stop QEMU if it still runs (it is ours only while /proc says it is QEMU).
local comm = pid and io.open("/proc/" .. pid .. "/comm")
if comm then
  if comm:read("l"):match("^qemu") then os.execute("kill " .. pid) end
  comm:close()
end
os.execute("rm -rf '" .. dir .. "'")
if not ok then
  io.stderr:write("demo failed: ", tostring(err), "\n")
  os.exit(1)
end
print("\ndemo finished")
