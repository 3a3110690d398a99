-- Disk images for real-QEMU specs: tiny boot sectors, a firmware that only
-- halts, a blkdebug disk that fails reads, and qcow2 backing chains for
-- block jobs.
local tmp = require "support.tmp"

local M = {}

-- Boot sector code: power the VM off (ACPI PM1a_CNT, port 0x604, SLP_EN:
-- mov dx,0x604; mov ax,0x2000; out dx,ax; hlt), or spin for ever (jmp $).
M.POWER_OFF = string.pack("BBBBBBBB", 0xBA, 0x04, 0x06, 0xB8, 0x00, 0x20, 0xEF, 0xF4)
M.SPIN = "\xEB\xFE"

-- A 1 MiB raw disk in dir whose boot sector runs code; returns its path.
function M.boot_image(dir, code)
  local path = dir .. "/boot.img"
  tmp.write(path, code .. string.rep("\0", 510 - #code) .. "\x55\xAA" .. string.rep("\0", 1024 * 1024 - 512))
  return path
end

-- A firmware image in dir (for -bios) that only halts: 64 KiB of HLT, the
-- size QEMU's pc machine wants.  The CPU resets with interrupts off, so it
-- never wakes and no guest code touches the devices a spec drives itself.
function M.halt_firmware(dir)
  local path = dir .. "/halt.bin"
  tmp.write(path, string.rep("\xF4", 64 * 1024))
  return path
end

-- QEMU arguments for a virtio disk over img whose reads fail with EIO
-- (blkdebug): the first one only (once = "on") or every one ("off").  With
-- rerror=stop QEMU sends BLOCK_IO_ERROR, then STOP, and the status becomes
-- io-error.  (Without the geometry, SeaBIOS on QEMU 7.2 was seen never to
-- read this small disk.)
function M.failing_disk(img, once)
  return {
    "-blockdev", "driver=file,node-name=f0,filename=" .. img,
    "-blockdev", "driver=blkdebug,node-name=d0,image=f0,inject-error.0.event=read_aio," ..
                 "inject-error.0.errno=5,inject-error.0.once=" .. once,
    "-blockdev", "driver=raw,node-name=disk0,file=d0",
    "-device", "virtio-blk-pci,drive=disk0,cyls=2,heads=16,secs=63,rerror=stop,werror=stop",
  }
end

local function sh(command)
  assert(os.execute(command .. " >/dev/null 2>&1"), command)
end

-- In dir: base.qcow2 (64 MiB holding data_mib MiB of data), top.qcow2 over
-- it, and an empty copy.qcow2, for stream and mirror jobs.
function M.qcow2_chain(dir, data_mib)
  sh(("qemu-img create -q -f qcow2 %s/base.qcow2 64M"):format(dir))
  sh(("qemu-io -c 'write -P 0x5a 0 %dM' %s/base.qcow2"):format(data_mib, dir))
  sh(("qemu-img create -q -f qcow2 -b %s/base.qcow2 -F qcow2 %s/top.qcow2"):format(dir, dir))
  sh(("qemu-img create -q -f qcow2 %s/copy.qcow2 64M"):format(dir))
end

return M
