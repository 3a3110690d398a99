-- Files that may hold monitor traffic or typed commands (recordings, the
-- shell's history) are readable by their owner only, whatever the umask,
-- and an existing file is never made looser than it was.
local core = require "qmp.core"
local tmp = require "support.tmp"

-- Run Lua source in a child lua5.4 under umask 022 (the usual one): its status.
local function under_umask_022(source)
  local cmd = ("umask 022; LUA_PATH_5_4='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH_5_4='./?.so;;' lua5.4 -e %s")
    :format(tmp.quote(source))
  local ok = os.execute("sh -c " .. tmp.quote(cmd))
  return ok
end

describe("private files", function()
  local dir
  before_each(function() dir = tmp.dir("private") end)
  after_each(function() tmp.remove(dir) end)

  it("qmp.record.open creates the recording 0600 under umask 022", function()
    local path = dir .. "/incident.qmprec"
    assert.is_true(under_umask_022(("local r = assert(require('qmp').record.open(%q)); r:close('done')"):format(path)))
    assert.are.equal("600", tmp.mode(path))
    assert.matches('^{"qmp%-recording":1', tmp.read(path))
  end)

  it("tightens an existing file to its owner's bits, and never loosens one", function()
    for _, case in ipairs({ { "644", "600" }, { "640", "600" }, { "666", "600" }, { "400", "400" }, { "600", "600" } }) do
      local path = ("%s/f%s"):format(dir, case[1])
      tmp.write(path, "old\n")
      assert(os.execute(("chmod %s %s"):format(case[1], tmp.quote(path))))
      local f = assert(core.private_file(path))
      f:write("new\n")
      f:close()
      assert.are.equal(case[2], tmp.mode(path), "from " .. case[1])
      assert.are.equal("new\n", tmp.read(path))   -- "w" truncates
    end
  end)

  it("appends with mode a, and fails as io.open does", function()
    local path = dir .. "/history"
    tmp.write(path, "one\n")
    local f = assert(core.private_file(path, "a"))
    f:write("two\n")
    f:close()
    assert.are.equal("one\ntwo\n", tmp.read(path))
    local none, msg = core.private_file(dir .. "/no/such/dir/file")
    assert.is_nil(none)
    assert.matches("No such file or directory", msg)
    assert.has_error(function() core.private_file(path, "r") end)
  end)

  it("qmp-lua record writes its capture 0600 under umask 022", function()
    local fake = require "support.fake_qmp"
    local srv = fake.start(fake.opening({ { close = true } }))
    finally(function() srv:stop() end)
    local path = dir .. "/capture.qmprec"
    local ok = os.execute(("sh -c %s >/dev/null 2>&1"):format(
      tmp.quote(("umask 022; exec bin/qmp-lua record --quiet %s %s"):format(tmp.quote(srv.path), tmp.quote(path)))))
    assert.is_true(ok)
    assert.are.equal("600", tmp.mode(path))
    assert.matches('"dir":"end"', tmp.read(path))
  end)
end)
