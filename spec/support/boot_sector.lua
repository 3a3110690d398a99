-- Tiny raw boot images for real-QEMU specs: a boot sector (x86 real mode)
-- that writes a text to the first serial port and then halts, or powers
-- the machine off.  No OS: the guest ignores system_powerdown.
--   local path = boot_sector.image(dir .. "/boot.img", { serial = "hello\nlogin: " })
--   qmp.machine{ args = { "-M", "pc", ..., "-drive", "file=" .. path .. ",format=raw" }, console = true }
local tmp = require "support.tmp"

local M = {}

local LOAD = 0x7C00        -- where the BIOS puts the sector
local SIZE = 1 << 20       -- bytes of the image: a disk the BIOS takes without a geometry guess

local function le16(n) return string.char(n & 0xFF, n >> 8) end

-- The machine code: the text at the end of the code, NUL-terminated.
local function code(power_off, text_offset)
  return table.concat({
    "\xFA",                       -- cli: no interrupt ever wakes the hlt below
    "\xFC",                       -- cld: lodsb counts up
    "\x31\xC0", "\x8E\xD8",       -- xor ax,ax; mov ds,ax
    "\xBE", le16(LOAD + text_offset),   -- mov si,text
    "\xBA\xF8\x03",               -- mov dx,0x3f8 (COM1's data register)
    "\xAC",                       -- next: lodsb
    "\x84\xC0",                   -- test al,al
    "\x74\x03",                   -- jz done
    "\xEE",                       -- out dx,al
    "\xEB\xF8",                   -- jmp next
    -- done: with power_off, SLP_EN in PIIX4's PM1a control register (0x604): off
    power_off and "\xBA\x04\x06\xB8\x00\x20\xEF" or "",
    "\xF4", "\xEB\xFD",           -- halt: hlt; jmp halt
  })
end

--- Write the image to path and return path.  opts.serial: the text the
-- guest writes to COM1 (no NUL; default none); opts.power_off: then power
-- the machine off (QEMU sends SHUTDOWN and exits) instead of halting.
function M.image(path, opts)
  opts = opts or {}
  local text = opts.serial or ""
  assert(not text:find("\0", 1, true), "boot_sector: the text cannot hold a NUL")
  local offset = #code(opts.power_off, 0)
  local sector = code(opts.power_off, offset) .. text .. "\0"
  assert(#sector <= 510, "boot_sector: the text does not fit in the sector")
  sector = sector .. ("\0"):rep(510 - #sector) .. "\x55\xAA"
  tmp.write(path, sector .. ("\0"):rep(SIZE - #sector))
  return path
end

--- QEMU arguments that boot the image at path: a small TCG pc, no devices
-- but the disk, no display.
function M.args(path)
  return { "-M", "pc", "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "32",
           "-drive", "file=" .. path .. ",format=raw" }
end

return M
