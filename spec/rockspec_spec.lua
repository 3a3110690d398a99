-- The two rockspecs build and install working rocks on their own: a
-- `luarocks make` into a fresh tree, then a lua5.4 that sees only that tree.
-- The library rock (qmp-scm-1) needs no GNU readline; the shell's readline
-- part is the qmp-readline rock.
local tmp = require "support.tmp"

local LIBRARY, READLINE = "qmp-scm-1.rockspec", "qmp-readline-scm-1.rockspec"

-- Run a shell command; returns success, its combined output and exit status.
local function run(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1"))
  local out = p:read("a")
  local ok, _, status = p:close()
  return ok == true, out, status
end

-- A rockspec's fields, read as the Lua it is.
local function load_rockspec(path)
  local fields = {}
  assert(loadfile(path, "t", fields))()
  return fields
end

-- The paths `ls` lists for a glob.
local function ls(glob)
  local list = {}
  local p = assert(io.popen("ls " .. glob))
  for path in p:lines() do list[#list + 1] = path end
  p:close()
  return list
end

-- The Lua file a module name stands for: qmp -> lua/qmp/init.lua, qmp.a.b -> lua/qmp/a/b.lua.
local function lua_file_of(name)
  if name == "qmp" then return "lua/qmp/init.lua" end
  return "lua/" .. name:gsub("%.", "/") .. ".lua"
end

local keys = require("support.text").sorted_keys

-- Whether a rockspec mentions readline anywhere it builds or links.
local function names_readline(spec)
  for name in pairs(spec.external_dependencies or {}) do
    if name:lower():find("readline") then return true end
  end
  for _, module in pairs(spec.build.modules) do
    if type(module) == "table" then
      for _, lib in ipairs(module.libraries or {}) do
        if lib:find("readline") then return true end
      end
      for _, source in ipairs(module.sources or {}) do
        if source:find("^csrc/cli/") then return true end
      end
    end
  end
  return false
end

describe("the rockspecs #slow", function()
  it("list every C source, Lua module and program of the tree, each module named after its file", function()
    local library, readline = load_rockspec(LIBRARY), load_rockspec(READLINE)
    local modules = library.build.modules
    local core_sources = {}
    for _, source in ipairs(modules["qmp.core"].sources) do core_sources[source] = true end
    for _, path in ipairs(ls("csrc/*.c")) do
      assert.is_true(core_sources[path], path .. " is missing from qmp.core's sources")
    end
    -- Named after its path, no module of the command can stand in for a library module.
    local lua_modules = 0
    for name, path in pairs(modules) do
      if type(path) == "string" then
        assert.are.equal(lua_file_of(name), path, name)
        lua_modules = lua_modules + 1
      end
    end
    local files = ls("lua/qmp/*.lua lua/qmp/cli/*.lua")
    for _, path in ipairs(files) do
      local name = path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.are.equal(path, modules[name], path .. " is missing from " .. LIBRARY)
    end
    assert.are.equal(#files, lua_modules)
    -- The library stands without the command.
    for _, path in ipairs(ls("lua/qmp/*.lua")) do
      assert.is_nil(tmp.read(path):find("qmp%.cli%."), path .. " names the command's modules")
    end
    for _, path in ipairs(ls("bin/*")) do
      local program = path:match("[^/]+$")
      assert.are.equal(path, library.build.install.bin[program], path .. " is missing from " .. LIBRARY)
    end

    assert.is_false(names_readline(library))
    assert.is_true(names_readline(readline))   -- the check can fail
    assert.are.same({ "qmp.cli.rl" }, keys(readline.build.modules))
    assert.are.same(ls("csrc/cli/*.c"), readline.build.modules["qmp.cli.rl"].sources)
    assert.are.same({ header = "readline/readline.h", library = "readline" },
                    readline.external_dependencies.READLINE)
    local needs_qmp = false
    for _, dependency in ipairs(readline.dependencies) do
      needs_qmp = needs_qmp or dependency == "qmp" or dependency:find("^qmp ") ~= nil
    end
    assert.is_true(needs_qmp, READLINE .. " depends on qmp")
  end)

  it("install into one tree: the library without readline, then the shell's readline part", function()
    local dir = tmp.dir("rock")
    finally(function() tmp.remove(dir) end)

    -- luarocks builds objects next to the sources and writes ./qmp/core.so,
    -- so build in a copy and leave the working tree alone.
    local src, tree = dir .. "/src", dir .. "/tree"
    assert(run("mkdir " .. tmp.quote(src) .. " && cp -R bin csrc lua examples " .. LIBRARY .. " " .. READLINE ..
      " " .. tmp.quote(src)))

    -- A host without GNU readline, as far as a build can tell: a compiler whose
    -- readline/readline.h is an #error and that cannot link -lreadline.
    local cc, noreadline = dir .. "/cc", dir .. "/noreadline"
    assert(run("mkdir -p " .. tmp.quote(noreadline .. "/readline")))
    tmp.write(noreadline .. "/readline/readline.h", '#error "no GNU readline on this host"\n')
    tmp.write(cc, ([[
#!/bin/sh
for a; do case $a in -lreadline) echo "cc: cannot find -lreadline" >&2; exit 1;; esac; done
exec cc -I%s "$@"
]]):format(tmp.quote(noreadline)))
    assert(run("chmod +x " .. tmp.quote(cc)))
    local ok, out = run("cd " .. tmp.quote(src) .. " && luarocks --lua-version=5.4 make" ..
      " --deps-mode=none --tree=" .. tmp.quote(tree) .. " " .. LIBRARY ..
      " CC=" .. tmp.quote(cc) .. " LD=" .. tmp.quote(cc))
    assert.is_true(ok, out)
    assert.matches("\n" .. cc:gsub("%p", "%%%0") .. " ", out)   -- the build did use that compiler

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

    -- The command, on the tree's bin, finds its modules by itself; Lua's
    -- default paths (Debian's lua-readline) and the tree, nothing else.
    local qmp_lua = "cd / && LUA_INIT= LUA_INIT_5_4= LUA_PATH_5_4=';;' LUA_CPATH_5_4=';;' " ..
      tmp.quote(tree .. "/bin/qmp-lua")
    ok, out = run(qmp_lua .. " exec --help")
    assert.is_true(ok, out)
    assert.matches("usage: qmp%-lua exec", out)
    ok, out = run(qmp_lua .. " exec /nonexistent.sock query-status")
    assert.is_false(ok)
    assert.matches("no socket at /nonexistent.sock", out)
    -- The shell says what it lacks, in one line, status 1.
    local _, advice, status = run(qmp_lua .. " shell /nonexistent.sock")
    assert.are.equal(1, status, advice)
    assert.matches("^qmp%-lua: the shell needs its readline part: [^\n]*make qmp%-readline%-scm%-1%.rockspec[^\n]*\n$",
                   advice)

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

    -- Where readline's header is missing, qmp-readline refuses before building.
    local empty = dir .. "/empty"
    assert(run("mkdir " .. tmp.quote(empty)))
    ok, out = run("cd " .. tmp.quote(src) .. " && luarocks --lua-version=5.4 make --tree=" .. tmp.quote(tree) ..
      " " .. READLINE .. " READLINE_INCDIR=" .. tmp.quote(empty))
    assert.is_false(ok, out)
    assert.matches("No file readline/readline.h in " .. empty:gsub("%p", "%%%0"), out)

    -- qmp-readline on the same tree: its qmp dependency is the rock just installed.
    ok, out = run("cd " .. tmp.quote(src) .. " && luarocks --lua-version=5.4 make --tree=" .. tmp.quote(tree) ..
      " " .. READLINE)
    assert.is_true(ok, out)
    assert.matches("depends on qmp %(scm%-1 installed%)", out)
    ok, out = run("cd / && " .. env .. " lua5.4 -e " ..
      tmp.quote('print(package.searchpath("qmp.cli.rl", package.cpath)) require "qmp.cli.rl"'))
    assert.is_true(ok, out)
    assert.are.equal(lib .. "/qmp/cli/rl.so\n", out)
    -- The shell now gets as far as connecting.
    _, out, status = run(qmp_lua .. " shell /nonexistent.sock")
    assert.are.equal(2, status, out)
    assert.matches("no socket at /nonexistent.sock", out)
  end)
end)
