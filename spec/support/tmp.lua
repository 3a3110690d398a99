-- Temporary directories and small file helpers shared by the test support code.
local M = {}

-- Quote a string for /bin/sh.
function M.quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

-- A fresh private directory. Kept short (under /tmp by default) because
-- unix socket paths are limited to about 107 bytes.
function M.dir(prefix)
  local p = assert(io.popen("mktemp -d -t " .. M.quote((prefix or "qmp") .. ".XXXXXXXX")))
  local path = p:read("l")
  p:close()
  assert(path and path:match("^/."), "mktemp -d failed")
  return path
end

-- Recursive removal; refuses anything that is not an absolute path below /.
function M.remove(path)
  if type(path) == "string" and path:match("^/[^/]") then
    os.execute("rm -rf " .. M.quote(path))
  end
end

-- A path for a unix socket nobody listens on (yet), in a fresh directory
-- that cleanup(fn) (support.cleanup) removes.
function M.socket_path(cleanup)
  local dir = M.dir("qmpsock")
  cleanup(function() M.remove(dir) end)
  return dir .. "/qmp.sock"
end

-- A file's contents, or nil when it cannot be opened.
function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

function M.write(path, text)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  f:close()
end

-- The permission bits of path as stat(1) prints them ("600"), sockets
-- included; nil when there is nothing at path.
function M.mode(path)
  local p = assert(io.popen("stat -c %a " .. M.quote(path) .. " 2>/dev/null"))
  local mode = p:read("l")
  p:close()
  return mode
end

-- Any kind of file, sockets included (io.open cannot open those).
function M.exists(path)
  return os.execute("test -e " .. M.quote(path)) == true
end

return M
