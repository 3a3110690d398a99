--- qmp-lua shell: an interactive Lua REPL on a live VM.
-- Line editing, history (~/.qmp-lua_history) and completion come from GNU
-- readline through Debian's lua-readline, used through its callback
-- interface so the shell can watch the monitor while the operator types;
-- qmp.shell.rl prints arriving events above the half-typed line.
local qmp = require "qmp"
local core = require "qmp.core"
local cli = require "qmp.shell.cli"
local kv = require "qmp.shell.kv"
local pretty = require "qmp.shell.pretty"
local complete = require "qmp.shell.complete"
local help = require "qmp.shell.help"
local filter = require "qmp.filter"

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
History is kept in ~/.qmp-lua_history.]],
  options = {
    { "--reconnect", nil, "when QEMU restarts, reconnect (and say so) instead of leaving" },
    { "--no-colour", nil, "plain output even on a terminal" },
    { "--timeout", "S", "seconds to wait for the connection and each command (default 10)" },
  },
}

local PROMPT, MORE = "qmp> ", "...> "

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
  local results = table.pack(xpcall(chunk, debug.traceback))
  if not results[1] then return false, tostring(results[2]) end
  return true, table.pack(table.unpack(results, 2, results.n))
end

local Shell = {}
Shell.__index = Shell

function Shell:say(text)
  self.print(text .. "\n")
end

function Shell:error(text)
  self:say(self.colour and ("\27[31m" .. text .. "\27[0m") or text)
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
    if err.kind == "qmp" then return self:error(("error: %s: %s"):format(err.class, err.desc)) end
    return self:error("error: " .. tostring(err))
  end
  self:show(ret)
end

local SHELL_COMMANDS = {}

function SHELL_COMMANDS.help(self, rest)
  if rest == "" then return self:say(cmd.details) end
  local text, err = help.topic(self.schema, rest)
  if not text then return self:error(err.message) end
  self:say(text)
end

function SHELL_COMMANDS.hmp(self, rest)
  local text, err = self.vm:hmp(rest)
  if not text then return self:error("error: " .. tostring(err.desc or err)) end
  self.print(text)
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
  if kv.looks_like_command(line, self.schema) then return self:qmp_line(line) end
  local ok, values = run_lua(line, self.env)
  if ok == nil then
    self.pending = line      -- an unfinished chunk: read on
  elseif not ok then
    self:error(values)
  else
    for i = 1, values.n do self:show(values[i]) end
  end
end

-- Show an event if :events lets it through.
function Shell:event(ev)
  if self.events and self.events(ev) then self:say(pretty.event_line(ev, { colour = self.colour })) end
end

function cmd.run(opts, args)
  local ok_rl, readline = pcall(require, "readline")
  if not ok_rl then
    cli.complain("the shell needs lua-readline (Debian: apt install lua-readline)")
    return cli.FAILED
  end
  local rl = require "qmp.shell.rl"
  local address = args[1]
  local vm = cli.connect(address, { name = address, timeout = cli.number(cmd, opts, "timeout"),
                                    reconnect = opts.reconnect and cli.RECONNECT or nil })
  if not vm then return cli.CONNECTION end
  local schema = vm:schema()   -- for completion and :help; nil if the VM will not say
  local self = setmetatable({ vm = vm, schema = schema, events = filter.names("*"),
                              print = rl.print_above,   -- whole lines, never garbling the typed one
                              colour = not opts.no_colour and cli.is_tty(1) }, Shell)
  self.env = setmetatable({ vm = vm, qmp = qmp }, { __index = _G })
  vm.on_error = function(err) if err.kind ~= "usage" then self:error(tostring(err)) end end
  vm:on("*", function(ev) self:event(ev) end)

  readline.set_options({ histfile = "~/.qmp-lua_history", keeplines = 1000, completion = true })
  readline.set_complete_function(function(text, from, to)
    local list, append = complete.for_readline(schema, text, from, to)
    readline.set_completion_append_character(append)
    return list
  end)
  self:say(("connected to %s (%s); :help for help, Ctrl-D to leave"):format(address, pretty.qemu_version(vm.greeting)))
  local typed, installed
  local function on_line(line)
    if line == nil then typed = false else typed = line end   -- false: Ctrl-D
    readline.handler_remove()   -- the prompt comes back once the line has run
    installed = false
  end
  local lost = false
  while not self.done do
    readline.handler_install(self.pending and MORE or PROMPT, on_line)
    installed, typed = true, nil
    while typed == nil and not self.done do
      local ready = lost and core.poll({ 0 }) or core.poll({ 0, vm:pollfd() }, vm:timeout())
      if ready and ready[1] == 1 then readline.read_char() end
      local alive, err = vm:step()
      if not alive and not lost then
        lost = true
        self:error("connection lost: " .. tostring(err)
                   .. " (Lua still works; qmp-lua shell --reconnect follows restarts)")
      end
    end
    if typed == false then break end   -- Ctrl-D
    if typed then
      if typed:match("%S") then readline.add_history(typed) end
      self:line(typed)
    end
  end
  if installed then readline.handler_remove() end   -- removing twice frees twice
  readline.save_history()
  io.stdout:write("\n")
  vm:close()
  return cli.OK
end

return cmd
