-- Writes a Lua file as a C header: `lua5.4 embed.lua checks.lua > checks_lua.h`
-- gives static const char checks_lua[], its bytes and a closing NUL.
local path = assert(arg[1], "usage: embed.lua file.lua")
local f = assert(io.open(path, "rb"))
local text = f:read("a")
f:close()
local name = path:match("([^/]+)%.lua$"):gsub("%W", "_") .. "_lua"
local out = { ("/* Generated from %s by embed.lua. */\nstatic const char %s[] = {"):format(path, name) }
for i = 1, #text, 16 do
  local row = {}
  for j = i, math.min(i + 15, #text) do row[#row + 1] = text:byte(j) end
  out[#out + 1] = "  " .. table.concat(row, ", ") .. ","
end
out[#out + 1] = "  0\n};\n"
io.write(table.concat(out, "\n"))
