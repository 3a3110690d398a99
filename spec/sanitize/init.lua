-- LUA_INIT_5_4 of the sanitizer runs (see lua5.4 here): the C modules found
-- in QMP_SAN_CPATH (a package.cpath template) win over every other path, so
-- the specs' own "./?.so" in front of package.cpath does not matter.
local template = os.getenv("QMP_SAN_CPATH")
if template and template ~= "" then   -- a spec empties it to find only its own modules
  table.insert(package.searchers, 2, function(name)
    local path = package.searchpath(name, template)
    if not path then return "\n\tno file in the sanitizer build (" .. template .. ")" end
    local open = assert(package.loadlib(path, "luaopen_" .. name:gsub("%.", "_")))
    return open, path
  end)
end
