-- qmp-lua completion: the bash, zsh and fish scripts made from the
-- subcommands' own descriptions.  The shells check their syntax; bash (and
-- fish when installed) answer completion requests with them, word for word;
-- a real bash in tmux completes as an operator would see it.
local completion = require "qmp.cli.completion"
local main = require "qmp.cli.main"
local cli = require "qmp.cli.common"
local events = require "qmp.events"
local proc = require "support.proc"
local tmp = require "support.tmp"
local tmux = require "support.tmux"
local unix = require "socket.unix"

local SHELLS = { "bash", "zsh", "fish" }

-- Run a /bin/sh command line: its exit status, stdout and stderr together.
local function sh(line)
  local p = assert(io.popen("(" .. line .. ") 2>&1"))
  local out = p:read("a")
  local _, _, status = p:close()
  return status, out
end

local function sorted(list)
  local copy = { table.unpack(list) }
  table.sort(copy)
  return copy
end

-- Whether text has word whole (not inside a longer name).
local function word_in(word, text)
  return text:find("%f[%w_%-]" .. word:gsub("%p", "%%%0") .. "%f[^%w_%-]") ~= nil
end

-- A subcommand's option names, --help included, as the scripts offer them.
local function option_names(name)
  local list = { "--help" }
  for _, o in ipairs(cli.options_of(require("qmp.cli." .. name))) do list[#list + 1] = o[1] end
  return sorted(list)
end

-- A scratch directory with a unix socket (vm.sock), a regular file (vm.log)
-- and a directory (sub/): what an ADDRESS may and may not complete to.
local function socket_dir(prefix)
  local dir = tmp.dir(prefix)
  local listener = assert(unix.stream())
  assert(listener:bind(dir .. "/vm.sock"))
  tmp.write(dir .. "/vm.log", "not a socket\n")
  assert(os.execute("mkdir " .. tmp.quote(dir .. "/sub")))
  return dir, listener
end

-- {==================== asking a shell for completions

-- The candidates a shell printed for each of n lines, each list ended by a
-- "<end>" line, sorted; clean(word) (optional) trims a candidate first.
local function answers_in(out, n, clean)
  local answers, current = {}, {}
  for word in out:gmatch("([^\n]*)\n") do
    if word == "<end>" then
      answers[#answers + 1] = sorted(current)
      current = {}
    else
      current[#current + 1] = clean and clean(word) or word
    end
  end
  assert(#answers == n, out)
  return answers
end

-- What bash's completion function offers for each line (the text before the
-- cursor), asked in one bash run from dir: a sorted list per line.
local function bash_offers(script, lines, dir)
  local body = { "source " .. tmp.quote(script),
                 'ask() { COMP_LINE=$1; COMP_POINT=${#1}; COMPREPLY=(); _qmp_lua; '
                 .. 'if (( ${#COMPREPLY[@]} )); then printf "%s\\n" "${COMPREPLY[@]}"; fi; echo "<end>"; }' }
  for _, line in ipairs(lines) do body[#body + 1] = "ask " .. tmp.quote(line) end
  local file = dir .. "/ask.bash"
  tmp.write(file, table.concat(body, "\n") .. "\n")
  local status, out = sh("cd " .. tmp.quote(dir) .. " && bash --norc --noprofile " .. tmp.quote(file))
  assert(status == 0, out)
  return answers_in(out, #lines)
end

-- The same from fish (complete -C), descriptions and a directory's "/" left
-- off, and a value offered as --option=value cut to the value, as bash does.
local function fish_offers(script, lines, dir)
  local body = { "source " .. tmp.quote(script) }
  for _, line in ipairs(lines) do
    body[#body + 1] = "complete -C " .. tmp.quote(line)
    body[#body + 1] = "echo '<end>'"
  end
  local file = dir .. "/ask.fish"
  tmp.write(file, table.concat(body, "\n") .. "\n")
  local status, out = sh("cd " .. tmp.quote(dir) .. " && HOME=" .. tmp.quote(dir)
                               .. " fish --no-config " .. tmp.quote(file))
  assert(status == 0, out)
  return answers_in(out, #lines, function(word)
    return (word:gsub("\t.*", ""):gsub("/$", ""):gsub("^%-%-[%w-]+=", ""))
  end)
end

-- }====================

-- Lines before the cursor and what must be offered there, exactly.
local function expectations()
  local list = {
    { "qmp-lua ", sorted(main.COMMANDS) },
    { "qmp-lua ev", { "events" } },
    { "qmp-lua events --fol", { "--follow" } },
    { "qmp-lua events --event ", events.known_names() },
    { "qmp-lua events --event SHUTD", { "SHUTDOWN" } },
    { "qmp-lua events --event=SHUTD", { "SHUTDOWN" } },
    { "qmp-lua events --count ", {} },                    -- a number: no file names
    { "qmp-lua events v", { "vm.sock" } },                -- a socket, not vm.log
    { "qmp-lua events ", { "sub", "vm.sock" } },          -- and directories on the way
    { "qmp-lua events --count 5 vm.sock v", { "vm.sock" } },
    { "qmp-lua record vm.sock v", { "vm.log", "vm.sock" } },   -- FILE: any file
    { "qmp-lua run vm.sock --re", { "--reconnect" } },
    { "qmp-lua run vm.sock check.lua --re", {} },         -- the script's own words
    { "qmp-lua exec vm.sock query-status --", {} },       -- the command's own words
    { "qmp-lua events -- --f", {} },                      -- "--" ended the options
    { "qmp-lua completion ", { "bash", "fish", "zsh" } },
    { "qmp-lua completion bash ", {} },
  }
  for _, name in ipairs(main.COMMANDS) do list[#list + 1] = { "qmp-lua " .. name .. " -", option_names(name) } end
  return list
end

describe("qmp-lua completion", function()
  local dir, listener

  setup(function() dir, listener = socket_dir("completion") end)
  teardown(function()
    listener:close()
    tmp.remove(dir)
  end)

  -- The script for shell in a file of dir.
  local function script_file(shell)
    local path = ("%s/qmp-lua.%s"):format(dir, shell)
    tmp.write(path, completion.script(shell))
    return path
  end

  it("bin/qmp-lua completion prints the same scripts, with no VM to connect to", function()
    for _, shell in ipairs(SHELLS) do
      local status, out = sh("bin/qmp-lua completion " .. shell .. " 2>/dev/null")
      assert.equal(0, status)
      assert.equal(completion.script(shell), out)
    end
  end)

  it("each script names every subcommand, each option of each and the catalogue's events", function()
    for _, shell in ipairs(SHELLS) do
      local text = completion.script(shell)
      for _, name in ipairs(main.COMMANDS) do
        assert.is_truthy(word_in(name, text), shell .. " lacks " .. name)
        for _, option in ipairs(option_names(name)) do
          assert.is_truthy(word_in(option, text), shell .. " lacks " .. option)
        end
      end
      for _, ev in ipairs(events.known_names()) do
        assert.is_truthy(word_in(ev, text), shell .. " lacks " .. ev)
      end
    end
  end)

  it("bash accepts the bash script", function()
    local status, out = sh("bash -n " .. tmp.quote(script_file("bash")))
    assert.equal(0, status, out)
  end)

  it("zsh accepts the zsh script", function()
    if not proc.have("zsh") then return pending("zsh is not installed (Debian: apt-get install zsh)") end
    local status, out = sh("zsh -n " .. tmp.quote(script_file("zsh")))
    assert.equal(0, status, out)
  end)

  it("fish accepts the fish script", function()
    if not proc.have("fish") then return pending("fish is not installed (Debian: apt-get install fish)") end
    local status, out = sh("fish -n " .. tmp.quote(script_file("fish")))
    assert.equal(0, status, out)
  end)

  -- Every line of expectations() completed by offers (bash_offers or fish_offers) with shell's script.
  local function assert_offers(offers, shell)
    local cases = expectations()
    local lines = {}
    for i, case in ipairs(cases) do lines[i] = case[1] end
    local answers = offers(script_file(shell), lines, dir)
    for i, case in ipairs(cases) do assert.same(case[2], answers[i], case[1]) end
  end

  it("bash completes subcommands, options, event names, sockets, and nothing in a script's words", function()
    assert_offers(bash_offers, "bash")
  end)

  it("fish completes the same", function()
    if not proc.have("fish") then return pending("fish is not installed (Debian: apt-get install fish)") end
    assert_offers(fish_offers, "fish")
  end)

  it("an option a subcommand gains later completes with no change to the generator", function()
    local record = require "qmp.cli.record"
    table.insert(record.options, { "--spec-only", "N", "an option the spec adds" })
    finally(function() table.remove(record.options) end)
    local answers = bash_offers(script_file("bash"), { "qmp-lua record --spec" }, dir)
    assert.same({ "--spec-only" }, answers[1])
    for _, shell in ipairs(SHELLS) do
      assert.is_truthy(completion.script(shell):find("--spec-only", 1, true), shell)
    end
  end)

  it("an unknown option names the closest known one, status 64", function()
    local status, out = sh("bin/qmp-lua events --evnt STOP /nonexistent.sock")
    assert.equal(64, status)
    assert.matches("\n?qmp%-lua: events: unknown option %-%-evnt; did you mean %-%-event%?", out)
  end)

  it("an unknown shell names the shells, status 64", function()
    local status, out = sh("bin/qmp-lua completion tcsh")
    assert.equal(64, status)
    assert.matches('no completion for "tcsh" %(shells: bash, zsh, fish%)', out)
    status = sh("bin/qmp-lua completion")
    assert.equal(64, status)
  end)

  it("make install-completion writes the three scripts under DESTDIR and PREFIX", function()
    local root = dir .. "/root"
    local status, out = sh("make --no-print-directory -o build install-completion PREFIX=/usr DESTDIR="
                                 .. tmp.quote(root))
    assert.equal(0, status, out)
    assert.equal(completion.script("bash"), tmp.read(root .. "/usr/share/bash-completion/completions/qmp-lua"))
    assert.equal(completion.script("zsh"), tmp.read(root .. "/usr/share/zsh/site-functions/_qmp-lua"))
    assert.equal(completion.script("fish"), tmp.read(root .. "/usr/share/fish/vendor_completions.d/qmp-lua.fish"))
  end)
end)

describe("qmp-lua completion in bash in a terminal", function()
  local dir, listener, term

  local function wait_for_screen(pattern, seconds) return term:wait_for(pattern, seconds) end
  local function keys(...) term:keys(...) end
  local function type_text(text) term:type(text) end

  -- An empty line on a clear screen.
  local function fresh()
    keys("C-e", "C-u", "C-l")
    wait_for_screen("^%$ \n")
  end

  setup(function()
    if not proc.have("tmux") then return end
    dir, listener = socket_dir("completion-tty")
    tmp.write(dir .. "/inputrc", "")   -- readline's defaults, whatever this machine's /etc/inputrc says
    local _, cwd = sh("pwd")
    local bin = cwd:gsub("\n$", "") .. "/bin"
    term = tmux.start("completion", { cwd = dir, width = 160, height = 40, blanks = true },
      ("env HOME=%s INPUTRC=%s PATH=%s:\"$PATH\" PS1='$ ' timeout 120 bash --norc --noprofile")
      :format(tmp.quote(dir), tmp.quote(dir .. "/inputrc"), tmp.quote(bin)))
    wait_for_screen("^%$ ")
    type_text("source <(qmp-lua completion bash) && echo completion-loaded")
    keys("Enter")
    wait_for_screen("\ncompletion%-loaded\n")
  end)

  teardown(function()
    if not dir then return end
    term:stop()
    listener:close()
    tmp.remove(dir)
  end)

  before_each(function()
    if not dir then pending("tmux is not installed (Debian: apt-get install tmux)") end
  end)

  it("Tab completes a subcommand, then its option", function()
    if not dir then return end
    fresh()
    type_text("qmp-lua ev")
    keys("Tab")
    wait_for_screen("^%$ qmp%-lua events \n")
    type_text("--fol")
    keys("Tab")
    wait_for_screen("^%$ qmp%-lua events %-%-follow \n")
  end)

  it("Tab completes an event name after --event", function()
    if not dir then return end
    fresh()
    type_text("qmp-lua events --event SHUTD")
    keys("Tab")
    wait_for_screen("^%$ qmp%-lua events %-%-event SHUTDOWN \n")
  end)

  it("Tab completes a socket for ADDRESS and lists no other files", function()
    if not dir then return end
    fresh()
    type_text("qmp-lua events v")
    keys("Tab")
    wait_for_screen("^%$ qmp%-lua events vm%.sock \n")
    fresh()
    type_text("qmp-lua events ")
    keys("Tab", "Tab")
    local text = wait_for_screen("\nsub/ +vm%.sock *\n")
    assert.is_nil(text:find("vm.log", 1, true))
  end)
end)
