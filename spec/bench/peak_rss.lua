-- Decode one big message in a fresh process and report its memory.
--   lua5.4 peak_rss.lua qmp|cjson <file>
-- qmp: the file is fed to a qmp.decoder in 64 KiB chunks, as a connection
-- reads it; cjson: read whole, then cjson.decode (what a Lua user does).
-- Prints a Lua chunk: return { before, peak, size } (bytes: VmRSS before
-- reading, VmHWM after decoding with the result still alive, file size).
local spec_dir = arg[0]:match("^(.*)/bench/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local memory = require "support.memory"

local which, path = arg[1], arg[2]
local decode
if which == "qmp" then
  local qmp = require "qmp"
  decode = function(f)
    local d = qmp.decoder()
    for chunk in function() return f:read(64 * 1024) end do d:feed(chunk) end
    return assert(d:next())
  end
elseif which == "cjson" then
  local cjson = require "cjson"
  decode = function(f) return cjson.decode(f:read("a")) end
else
  error("peak_rss: qmp or cjson")
end

collectgarbage("collect")
local before = memory.rss()
local f = assert(io.open(path, "rb"))
local size = f:seek("end")
f:seek("set", 0)
local value = decode(f)
f:close()
local peak = memory.peak()
assert(type(value["return"]) == "table")
io.write(("return { before = %d, peak = %d, size = %d }\n"):format(before, peak, size))
