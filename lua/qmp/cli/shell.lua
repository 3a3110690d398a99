--- qmp-lua shell: an interactive Lua REPL on a live VM.
-- Line editing, history (~/.qmp-lua_history) and completion come from GNU
-- readline through Debian's lua-readline, used through its callback
-- interface so the shell can watch the monitor while the operator types;
-- qmp.cli.rl prints arriving events above the half-typed line.
local qmp = require "qmp"
local core = require "qmp.core"
local errors = require "qmp.errors"
local signals = require "qmp.signals"
local cli = require "qmp.cli.common"
local kv = require "qmp.cli.kv"
local pretty = require "qmp.cli.pretty"
local complete = require "qmp.cli.complete"
local help = require "qmp.cli.help"
local filter = require "qmp.filter"
local escape = require("qmp.text").escape   -- for the peer's text

local cmd = {
  name = "shell",
  args = "ADDRESS",
  min = 1,
  max = 1,
  summary = "an interactive Lua shell on a VM: commands, events, completion, history",
  details = [[
Type Lua (vm and qmp are bound; `local x = ...` is kept for later lines) or a
QMP command as in qmp-shell: `query-block`, `block-job-cancel device=job0
force=true`, `blockdev-add driver=qcow2 file.driver=file file.filename=a.qcow2`,
`transaction {"actions": []}`. Results are printed indented, keys sorted.
Tab completes command names, argument names (a.b for nested ones) and enum
values from the VM's own schema. Events print as they arrive, above the line
being typed. Shell commands:
  :help NAME        a command's arguments and result, or an event's members
  :hmp LINE         a human monitor command (:hmp info block)
  :events off|on|GLOB   hide events, show all, or only those named GLOB
  :quit             leave the shell (so does Ctrl-D; the QMP command `quit` stops QEMU)
Ctrl-C cancels the line being typed, or a command waiting for its reply (the
reply is then dropped), or Lua that runs long, and gives a fresh prompt.
A word that is neither a command of this VM nor a defined Lua name is an
unknown command, with the closest command names.
History is kept in ~/.qmp-lua_history (mode 0600).]],
  connects = true,
  options = {
    { "--reconnect", nil, "wait for QEMU if it is not up yet, and follow its restarts instead of leaving" },
    { "--no-colour", nil, "plain output even on a terminal (so does NO_COLOR)" },
  },
}

local PROMPT, MORE = "qmp> ", "...> "
local HISTORY = ".qmp-lua_history"   -- in $HOME

-- Lua input: an expression's values, or a statement; `local` names become
-- the shell's own so they live on.  ok, values (packed) | false, message |
-- nil (incomplete: wants more lines).
local function run_lua(source, env)
  source = source:gsub("^%s*local%s+function%s+", "function "):gsub("^%s*local%s+", "")
  local chunk = load("return " .. source, "=shell", "t", env)
  local err
  if not chunk then chunk, err = load(source, "=shell", "t", env) end
  if not chunk then
    if err:find("<eof>$") then return nil end
    return false, err
  end
  local results = table.pack(cli.interruptible(chunk, cli.traceback))   -- Ctrl-C ends a long loop
  if not results[1] then
    local e = results[2]
    if errors.is(e) and e.kind == "interrupted" then return false, "interrupted" end
    return false, tostring(e)
  end
  return true, table.pack(table.unpack(results, 2, results.n))
end

local Shell = {}
Shell.__index = Shell

--- A shell on vm (schema: its parsed schema, or nil) that writes each
-- piece of output with print(text).  opts: colour (ANSI colours),
-- below_echo (put before a line that follows an echoed ^C).
function Shell.new(vm, schema, print, opts)
  opts = opts or {}
  local self = setmetatable({ vm = vm, schema = schema, events = filter.names("*"), print = print,
                              colour = opts.colour == true, below_echo = opts.below_echo or "" }, Shell)
  self.env = setmetatable({ vm = vm, qmp = qmp }, { __index = _G })
  return self
end

function Shell:say(text)
  self.print(text .. "\n")
end

-- An error may quote the peer (a reply, a schema name) or hold whatever a
-- Lua error says: escaped (qmp.text), keeping a traceback's lines.
function Shell:error(message)
  message = escape(message, "\n\t")
  self:say(self.colour and ("\27[31m" .. message .. "\27[0m") or message)
end

function Shell:show(value)
  self:say(pretty.format(value, { colour = self.colour }))
end

-- A QMP command line: run it and show its result or error.
function Shell:qmp_line(line)
  local name, args = kv.parse(line)
  if not name then return self:error("error: " .. args) end
  local ret, err = self.vm:execute(name, args)
  if ret == nil then
    if err.kind == "qmp" then   -- the peer's text, escaped to one line
      return self:error(("error: %s: %s"):format(escape(err.class), escape(err.desc)))
    end
    if err.kind == "interrupted" then
      return self:error(("%sinterrupted: %s's reply, if QEMU sends one, will be dropped"):format(self.below_echo, name))
    end
    return self:error("error: " .. tostring(err))
  end
  self:show(ret)
end

local SHELL_COMMANDS = {}

function SHELL_COMMANDS.help(self, rest)
  if rest == "" then return self:say(cmd.details) end
  local page, err = help.topic(self.schema, rest)   -- escaped there: names and values are the peer's
  if not page then return self:error(err.message) end
  self:say(page)
end

function SHELL_COMMANDS.hmp(self, rest)
  local output, err = self.vm:hmp(rest)
  if not output then return self:error("error: " .. escape(tostring(err.desc or err))) end
  -- HMP's text is the peer's too: its lines stay, its other control bytes show escaped.
  if output ~= "" then self:say(escape(output, "\n\t")) end   -- vm:hmp: no last line end
end

function SHELL_COMMANDS.events(self, rest)
  if rest == "on" or rest == "" then rest = "*" end
  self.events = rest ~= "off" and filter.names(rest)
  self:say("events: " .. (rest == "*" and "all" or rest))
end

function SHELL_COMMANDS.quit(self)
  self.done = true
end
SHELL_COMMANDS.q = SHELL_COMMANDS.quit

-- One line typed by the operator.
function Shell:line(line)
  if self.pending then
    line = self.pending .. "\n" .. line
    self.pending = nil
  end
  if line:match("^%s*$") then return end
  local word, rest = line:match("^%s*:(%a+)%s*(.-)%s*$")
  if word then
    local f = SHELL_COMMANDS[word]
    if not f then return self:error(("unknown shell command :%s (try :help)"):format(word)) end
    return f(self, rest)
  end
  local unknown = self:unknown_command(line)
  if unknown then return self:error(unknown) end
  if kv.looks_like_command(line, self.schema) then return self:qmp_line(line) end
  local ok, values = run_lua(line, self.env)
  if ok == nil then
    self.pending = line      -- an unfinished chunk: read on
  elseif not ok then
    self:error(values == "interrupted" and (self.below_echo .. values) or values)
  else
    for i = 1, values.n do self:show(values[i]) end
  end
end

-- "unknown command W; did you mean X?" for a line that is meant as a
-- command but names none of this VM's: its first word W is no command and
-- no defined Lua name, and either it is all there is (`stpo`), or it takes
-- arguments (`stpo force=true`, `query-stauts`), or the line is no Lua at
-- all (`system_rest now`).  nil for anything else (Lua, a real command).
function Shell:unknown_command(line)
  local word, rest = line:match("^%s*([%a_][%w_%-]*)%s*(.-)%s*$")
  if not word or kv.is_keyword(word) then return nil end
  local commands = self.schema and self.schema.commands
  if commands and commands[word] then return nil end
  local lua_name = not word:find("-", 1, true)
  if lua_name and self.env[word] ~= nil then return nil end
  if rest ~= "" and not kv.looks_like_command(line, self.schema) then
    if not lua_name then return nil end   -- "a-b ..." that is no command shape: Lua will say
    local _, err = load(line, "=shell", "t", {})
    if not err or err:find("<eof>$") then return nil end   -- Lua, or Lua not finished
    if load("return " .. line, "=shell", "t", {}) then return nil end   -- an expression: Lua's own error
  end
  if not commands then
    if not lua_name then return nil end   -- no schema: QEMU will answer for a command
    return ("unknown command or undefined name %s"):format(word)
  end
  local names = {}
  for name in pairs(commands) do names[#names + 1] = name end
  table.sort(names)
  local guess = errors.closest(word, names)
  guess = guess and escape(guess)   -- a name of the peer's schema
  return ("unknown command %s%s"):format(word, guess and ("; did you mean %s?"):format(guess)
                                                or " (:help lists none like it; Tab completes names)")
end

-- Show an event if :events lets it through.
function Shell:event(ev)
  if self.events and self.events(ev) then self:say(pretty.event_line(ev, { colour = self.colour })) end
end

-- A signal at the prompt: SIGINT drops the line being typed; SIGTERM and
-- SIGHUP end the shell (its exit status).  Returns that status or nil.
function Shell:signal(rl)
  local name, signo = signals.take()
  if name ~= "SIGINT" then return 128 + signo end
  rl.cancel_line()
  self.pending = nil
end

-- The read-eval-print loop, until :quit, Ctrl-D, SIGTERM/SIGHUP or the
-- end of the input.  Returns the exit status.
function Shell:repl(readline, rl)
  local vm, status = self.vm, nil
  local typed   -- the line read (a string), false (Ctrl-D), true (dropped by Ctrl-C), nil (none yet)
  local function on_line(line)
    if line == nil then typed = false else typed = line end   -- false: Ctrl-D
    readline.handler_remove()   -- the prompt comes back once the line has run
    self.installed = false
  end
  local lost = false
  while not self.done and not status do
    readline.handler_install(self.pending and MORE or PROMPT, on_line)
    self.installed, typed = true, nil
    while typed == nil and not self.done and not status do
      local ready, err
      if lost then ready, err = core.poll({ 0 }) else ready, err = core.poll({ 0, vm:pollfd() }, vm:timeout()) end
      if not ready then
        if err.kind ~= "interrupted" then error(tostring(err), 0) end   -- poll() itself failed
        status = self:signal(rl)
        if not status then
          readline.handler_remove()
          self.installed, typed = false, true   -- true: the line was dropped
        end
      elseif ready[1] == 1 then
        readline.read_char()
      end
      local alive, why = vm:step()
      if not alive and not lost then
        lost = true
        self:error("connection lost: " .. cli.describe(why)
                   .. " (Lua still works; qmp-lua shell --reconnect follows restarts)")
      end
    end
    if typed == false then break end   -- Ctrl-D
    if type(typed) == "string" then
      if typed:match("%S") then readline.add_history(typed) end
      self:line(typed)
      if signals.pending() == "SIGINT" then signals.take() end   -- it ended that line
    end
  end
  return status or cli.OK
end

-- The shell's two readline modules, or nil and what to install, in a line:
-- qmp.cli.rl comes in its own rock (qmp-readline) so that the library rock
-- builds where readline is missing; lua-readline is Debian's or a rock.
local function readline_modules()
  local has_rl, rl = pcall(require, "qmp.cli.rl")
  if not has_rl then
    return nil, nil, "the shell needs its readline part: in qmp's source tree, luarocks --lua-version=5.4"
      .. " make qmp-readline-scm-1.rockspec (Debian: apt install libreadline-dev lua-readline)"
  end
  local has_readline, readline = pcall(require, "readline")
  if not has_readline then
    return nil, nil, "the shell needs lua-readline: apt install lua-readline"
      .. " (or luarocks --lua-version=5.4 install readline)"
  end
  return readline, rl
end

function cmd.run(opts, args)
  local readline, rl, advice = readline_modules()
  if not readline then
    cli.complain("%s", advice)
    return cli.FAILED
  end
  local address = args[1]
  local vm = cli.open(cmd, opts, address, opts.reconnect)
  if not vm then return cli.CONNECTION end
  local schema = vm:schema()   -- for completion and :help; nil if the VM will not say
  local self = Shell.new(vm, schema, rl.print_above,   -- whole lines, never garbling the typed one
                         { colour = cli.colour(opts),
                           below_echo = cli.is_tty(0) and "\n" or "" })   -- the terminal echoes ^C
  local on_error = vm.on_error
  vm.on_error = function(err) if err.kind ~= "usage" then self:error(cli.describe(err)) end end
  local printing = vm:on("*", function(ev) self:event(ev) end)

  local home = os.getenv("HOME")
  local histfile = home and home ~= "" and (home .. "/" .. HISTORY) or ""
  readline.set_options({ histfile = histfile, keeplines = 1000, completion = true })
  readline.set_complete_function(function(text, from, to)
    local list, append = complete.for_readline(schema, text, from, to)
    readline.set_completion_append_character(append)
    return list
  end)
  self:say(("connected to %s (%s); :help for help, Ctrl-D to leave"):format(address, pretty.qemu_version(vm.greeting)))
  -- Whatever ends the loop, even a defect of the shell: the terminal is
  -- given back and the history written, before anything else is said.
  local ran, status = pcall(self.repl, self, readline, rl)
  if self.installed then   -- removing twice frees twice
    rl.release()
    readline.handler_remove()
  end
  local private = histfile ~= "" and core.private_file(histfile, "a")   -- typed passwords stay the owner's
  if private then
    private:close()
    readline.save_history()
  end
  io.stdout:write("\n")
  if opts.vm then   -- launch's client: its owner closes it, after the shell is gone
    printing:off()
    vm.on_error = on_error
  else
    vm:close()
  end
  if not ran then error(status, 0) end
  return status
end

cmd.Shell = Shell   -- for specs: a shell without a terminal

return cmd
