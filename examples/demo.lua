#!/usr/bin/env lua5.4
--- The demo, in three acts, each on a throwaway QEMU (TCG, no guest OS):
--   1. a tour: connect, drive the VM and print every event as one line;
--   2. a disk that fails once: the resume_on_io_error policy resumes the VM
--      and the guest boots on and powers itself off;
--   3. one monitor, many tools: the demo shares the monitor it holds
--      (qmp.mux), and qmp-lua events and exec use it at the same time.
-- Needs qemu-system-x86_64.  Cleans up after itself, also on failure.
local qmp = require "qmp"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local dir = sh("mktemp -d"):gsub("%s+$", "")
local machines, pids = {}, {}   -- the QEMUs and the tools the demo started

-- A throwaway QEMU (qmp.machine: its monitor on a socketpair, no socket
-- file); returns its client, connected and negotiated.
local function start_qemu(name, args)
  local words = { "-M", "pc", "-S", "-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
                  "-m", "64" }
  for word in args:gmatch("%S+") do words[#words + 1] = word end
  local m = assert(qmp.machine({ args = words, client = { name = name, timeout = 10 } }))
  machines[#machines + 1] = m
  return m.vm
end

-- Every QEMU goes (qmp.machine: quit, then SIGTERM, then SIGKILL), and every
-- tool we started that still runs (only while /proc says it is ours).
local function stop_all()
  for _, m in ipairs(machines) do m:close() end
  for _, pid in ipairs(pids) do
    local comm = io.open("/proc/" .. pid .. "/comm")
    if comm then
      if (comm:read("l") or ""):match("^lua") then os.execute("kill " .. pid) end
      comm:close()
    end
  end
end

local function heading(text)
  print(("\n== %s %s"):format(text, ("="):rep(math.max(0, 70 - #text))))
end

local function tour()
  heading("Act 1: a tour of the monitor")
  local vm = start_qemu("tour", "-device ide-cd,id=cd0,bus=ide.1")
  local v = vm.greeting.QMP.version.qemu
  print(("connected to QEMU %d.%d.%d (oob %s); status %s"):format(v.major, v.minor, v.micro,
        vm.oob and "enabled" or "not offered", assert(vm:execute("query-status")).status))
  local events <close> = vm:listen("*")   -- every event of the tour, in order
  local function step(title, command, args, expect)
    print(("\n> %s  (%s)"):format(title, command))
    local ret = assert(vm:execute(command, args))
    if type(ret) == "string" then io.write("  ", ret) end
    if expect then assert(vm:wait(expect, nil, 10)) end   -- the command's own event is in
    for ev in events.next, events do print("  event: " .. tostring(ev)) end  -- the listener saw it too
  end
  step("start the CPUs", "cont", nil, "RESUME")
  step("pause the VM", "stop", nil, "STOP")
  step("reset the machine", "system_reset", nil, "RESET")
  step("open the CD tray", "eject", { id = "cd0", force = true }, "DEVICE_TRAY_MOVED")
  step("ask HMP", "human-monitor-command", { ["command-line"] = "info status" })
  local _, err = vm:execute("no-such-command")
  print(("\n> a command QEMU does not know\n  %s"):format(tostring(err)))
  step("quit QEMU", "quit", nil, "SHUTDOWN")
  local _, closed = vm:execute("query-status")
  print("\nafter quit: " .. tostring(closed))
end

-- A 1 MiB raw disk whose boot sector powers the VM off (ACPI PM1a_CNT at port
-- 0x604, SLP_EN): mov dx,0x604; mov ax,0x2000; out dx,ax; hlt.
local function boot_image()
  local code = string.char(0xBA, 0x04, 0x06, 0xB8, 0x00, 0x20, 0xEF, 0xF4)
  local sector = code .. ("\0"):rep(510 - #code) .. "\x55\xAA"
  local path = dir .. "/boot.img"
  local f = assert(io.open(path, "wb"))
  f:write(sector, ("\0"):rep((1 << 20) - 512))
  f:close()
  return path
end

local function recovery()
  heading("Act 2: a disk that fails once")
  -- blkdebug fails the first read (the firmware reading the boot sector);
  -- rerror=stop makes QEMU pause the VM instead of failing the guest's read.
  local args = ("-blockdev driver=file,node-name=f0,filename=%s "
    .. "-blockdev driver=blkdebug,node-name=d0,image=f0,inject-error.0.event=read_aio,"
    .. "inject-error.0.errno=5,inject-error.0.once=on "
    .. "-blockdev driver=raw,node-name=disk0,file=d0 "
    .. "-device virtio-blk-pci,drive=disk0,cyls=2,heads=16,secs=63,rerror=stop,werror=stop")
    :format(boot_image())
  local vm = start_qemu("disk", args)
  local t0 = qmp.monotime()
  local function say(who, text) print(("[+%6.3f s] %-7s %s"):format(qmp.monotime() - t0, who, text)) end
  vm:on("*", function(ev) say("event", tostring(ev):match("^%S+ %S+ (.*)$")) end)
  local p = qmp.policy.resume_on_io_error(vm, {
    retries = 3, window = 60, delay = 1, backoff = 2,
    log = function(line) say("policy", line) end,
    on_give_up = function() say("policy", "gave up: the VM stays paused") end,
  })
  local powered_off = false
  vm:on("SHUTDOWN", { guest = true }, function() powered_off = true end)
  say("demo", "starting the CPUs; the firmware will read the boot sector")
  assert(vm:execute("cont"))
  local _, err = vm:run({ timeout = 30, done = function() return powered_off end })
  if not powered_off then error("the guest did not power off: " .. tostring(err)) end
  say("demo", ("the guest ran on and powered itself off after %d resume(s)"):format(p.resumes))
end

local function read_file(path)
  local f = io.open(path)
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

-- Serve vm until done() (it looks at files the tools write, which have no
-- fd to wait on: a timer makes the loop look again every 20 ms).
local function run_until(vm, done)
  local timer
  local function tick() timer = vm:after(0.02, tick) end
  tick()
  local ok, err = vm:run({ timeout = 10, done = done })
  timer:cancel()
  assert(ok, err)
end

local function sharing()
  heading("Act 3: one monitor, many tools")
  local vm = start_qemu("shared", "")
  local path = dir .. "/shared-mux.sock"
  local mux <close> = assert(qmp.mux(vm, { listen = path, log = function(line) print("  mux: " .. line) end }))
  print("the demo holds the monitor and shares it on " .. path)
  local function negotiated()
    local n = 0
    for _, c in ipairs(mux:clients()) do if c.negotiated then n = n + 1 end end
    return n
  end
  -- Two tools at once, each with a monitor of its own; the demo's loop serves them.
  local watched, asked = dir .. "/events.out", dir .. "/exec.out"
  pids[#pids + 1] = sh(("bin/qmp-lua events %s --count 2 >%s 2>&1 & echo $!"):format(path, watched)):match("%d+")
  run_until(vm, function() return negotiated() == 1 end)
  pids[#pids + 1] = sh(("bin/qmp-lua exec %s query-status >%s 2>&1 & echo $!"):format(path, asked)):match("%d+")
  run_until(vm, function() return read_file(asked):find("\n") ~= nil end)
  print("\n> qmp-lua exec (through the mux) query-status\n  " .. read_file(asked):gsub("\n$", ""))
  print("\n> the demo starts and pauses the VM on its own connection")
  assert(vm:execute("cont"))
  assert(vm:execute("stop"))
  run_until(vm, function() return select(2, read_file(watched):gsub("\n", "")) >= 2 end)
  print("\n> qmp-lua events (through the mux) saw:")
  for line in read_file(watched):gmatch("[^\n]+") do print("  " .. line) end
end

local ok, err = pcall(function()
  tour()
  recovery()
  sharing()
end)
stop_all()
os.execute("rm -rf '" .. dir .. "'")
if not ok then
  io.stderr:write("demo failed: ", tostring(err), "\n")
  os.exit(1)
end
print("\ndemo finished")
