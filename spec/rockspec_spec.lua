-- The rockspec builds and installs a working library on its own: a
-- `luarocks make` into a fresh tree, then a lua5.4 that sees only that tree.
local tmp = require "support.tmp"

-- Run a shell command; returns success and its combined output.
local function run(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok == true, out
end

describe("qmp-scm-1.rockspec #slow", function()
  it("lists every C source and every Lua module of the tree", function()
    local f = assert(io.open("qmp-scm-1.rockspec"))
    local spec = f:read("a")
    f:close()
    local p = assert(io.popen("ls csrc/*.c csrc/cli/*.c lua/qmp/*.lua lua/qmp/cli/*.lua bin/*"))
    for path in p:lines() do
      assert.is_truthy(spec:find('"' .. path .. '"', 1, true), path .. " is missing from the rockspec")
    end
    p:close()
  end)

  it("installs with luarocks make and loads from the tree", function()
    local dir = tmp.dir("rock")
    finally(function() tmp.remove(dir) end)

    -- luarocks builds objects next to the sources and writes ./qmp/core.so,
    -- so build in a copy and leave the working tree alone.
    local src, tree = dir .. "/src", dir .. "/tree"
    assert(run("mkdir " .. tmp.quote(src) .. " && cp -R bin csrc lua examples qmp-scm-1.rockspec " ..
      tmp.quote(src)))
    local ok, out = run("cd " .. tmp.quote(src) .. " && luarocks --lua-version=5.4 make" ..
      " --deps-mode=none --tree=" .. tmp.quote(tree) .. " qmp-scm-1.rockspec")
    assert.is_true(ok, out)

    -- Only the tree on the module paths: nothing from the source checkout.
    local share, lib = tree .. "/share/lua/5.4", tree .. "/lib/lua/5.4"
    local env = "LUA_INIT= LUA_INIT_5_4= " ..
      "LUA_PATH_5_4=" .. tmp.quote(share .. "/?.lua;" .. share .. "/?/init.lua") ..
      " LUA_CPATH_5_4=" .. tmp.quote(lib .. "/?.so")
    local script = [[
      print(package.searchpath("qmp.core", package.cpath))
      require "qmp.core"
      print(require("qmp").encode({ a = 1 }))
    ]]
    ok, out = run("cd / && " .. env .. " lua5.4 -e " .. tmp.quote(script))
    assert.is_true(ok, out)
    local core_path, json = out:match("^([^\n]*)\n([^\n]*)")
    assert.are.equal(lib .. "/qmp/core.so", core_path, out)
    assert.matches('^{%s*"a"%s*:%s*1%s*}$', json, nil, false, out)

    -- The command, on the tree's bin, finds its modules by itself.
    ok, out = run("cd / && " .. tmp.quote(tree .. "/bin/qmp-lua") .. " exec --help")
    assert.is_true(ok, out)
    assert.matches("usage: qmp%-lua exec", out)
    ok, out = run("cd / && " .. tmp.quote(tree .. "/bin/qmp-lua") .. " exec /nonexistent.sock query-status")
    assert.is_false(ok)
    assert.matches("no socket at /nonexistent.sock", out)

    -- The examples come with the rock and run from there with the tree's paths.
    ok, out = run("ls -d " .. tmp.quote(tree) .. "/lib/luarocks/rocks-5.4/qmp/*/examples")
    assert.is_true(ok, out)
    local examples = out:match("^[^\n]+")
    ok, out = run("cd / && " .. env .. " lua5.4 " .. tmp.quote(examples .. "/watch_events.lua"))
    assert.is_false(ok)   -- no socket given: its usage, after require "qmp" worked
    assert.matches("usage: watch_events.lua SOCKET", out)
    -- with the sample capture the README replays
    ok, out = run("cd " .. tmp.quote(examples) .. " && " .. env ..
                  " lua5.4 replay_policy.lua io-error-capture.qmprec 2 0.05")
    assert.is_true(ok, out)
    assert.matches("2 resumes, 1 give%-up; recorded by a passive recorder", out)
  end)
end)
