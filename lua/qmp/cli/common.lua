--- What every qmp-lua subcommand shares: option parsing, --help, exit
-- codes, connecting with a readable failure, colour, signals.
--
-- A subcommand describes itself:
--   { name = "events", args = "ADDRESS...", summary = "...", min = 1, max = nil,
--     options = { { "--event", "GLOB", "only events named GLOB (repeatable)", many = true },
--                 { "--json", nil, "one JSON object per line" } },
--     connects = true,   -- gets --connect-timeout and --allow-remote (cli.CONNECT_OPTIONS)
--     details = "longer text", run = function(opts, args) -> exit code }
-- Options come before, after or between the positional arguments; "--"
-- ends them, and so does the options_end-th positional argument when the
-- command sets it (the words after a script or a QMP command are its own).
-- A value is the next word or follows "=" (--count=5).
local qmp = require "qmp"
local core = require "qmp.core"
local signals = require "qmp.signals"
local escape = require("qmp.text").escape

local cli = {}

--- The back-off of every subcommand's --reconnect / --follow (seconds).
cli.RECONNECT = { min = 0.2, max = 5 }

--- Exit codes, the same for every subcommand; a signal adds 128 to its number.
cli.OK, cli.FAILED, cli.CONNECTION, cli.USAGE = 0, 1, 2, 64

cli.EXIT_CODES = [[
exit status:
  0    success: done, --count or --timeout reached, the script finished
  1    the command failed: a QMP error reply, a failed job, a script error
  2    connection trouble: refused, closed, timed out, not a QMP monitor
  64   bad usage (see --help)
  129  SIGHUP, 130 SIGINT (Ctrl-C), 143 SIGTERM: stopped cleanly by that signal]]

--- The options of every subcommand that connects (cmd.connects).
cli.CONNECT_OPTIONS = {
  { "--connect-timeout", "S", "seconds to connect and negotiate (default 10)" },
  { "--allow-remote", nil, "allow TCP to a non-loopback address (the monitor is root-equivalent)" },
}

-- A subcommand's options, the shared ones included.
local function options_of(cmd)
  local all = { table.unpack(cmd.options or {}) }
  if cmd.connects then
    for _, o in ipairs(cli.CONNECT_OPTIONS) do all[#all + 1] = o end
  end
  return all
end
cli.options_of = options_of

-- A usage error: main prints it with a hint and exits 64.
local Usage = {}
Usage.__index = Usage
Usage.__tostring = function(u) return u.message end

function cli.usage_error(message)
  error(setmetatable({ message = message }, Usage), 0)
end

function cli.is_usage_error(v)
  return getmetatable(v) == Usage
end

--- The --help text of a subcommand.
function cli.help(cmd)
  local lines = { ("usage: qmp-lua %s [options] %s"):format(cmd.name, cmd.args or ""), "", cmd.summary }
  if cmd.details then lines[#lines + 1] = ""; lines[#lines + 1] = cmd.details end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "options:"
  local all = options_of(cmd)
  all[#all + 1] = { "--help", nil, "show this text and exit" }
  for _, o in ipairs(all) do
    local left = o[2] and (o[1] .. " " .. o[2]) or o[1]
    lines[#lines + 1] = ("  %-22s %s"):format(left, o[3])
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = cli.EXIT_CODES
  return table.concat(lines, "\n") .. "\n"
end

--- Parse argv (a list of words) for cmd: opts (by option name without
-- "--"; repeatable ones are lists; flags are true), args | raises a usage
-- error.  opts.help is true for --help (nothing else is checked then).
function cli.parse(cmd, argv)
  local by_name = { ["--help"] = { "--help" } }
  for _, o in ipairs(options_of(cmd)) do by_name[o[1]] = o end
  local opts, args = {}, {}
  local i, rest = 1, false
  while i <= #argv do
    local word = argv[i]
    if rest or word == "-" or word:sub(1, 1) ~= "-" then
      args[#args + 1] = word
      rest = rest or (cmd.options_end and #args >= cmd.options_end)
    elseif word == "--" then
      rest = true
      args.dashdash = args.dashdash or #args + 1   -- where the words after "--" start (qmp-lua launch)
    else
      local name, value = word:match("^(%-%-[^=]+)=(.*)$")
      name = name or word
      local o = by_name[name]
      if not o then   -- a typo: name the option meant, when one is close
        local known = {}
        for option in pairs(by_name) do known[#known + 1] = option end
        table.sort(known)
        local guess = require("qmp.errors").closest(name, known)
        cli.usage_error(("%s: unknown option %s%s"):format(cmd.name, name,
                        guess and ("; did you mean %s?"):format(guess) or ""))
      end
      local key = name:sub(3):gsub("-", "_")
      if o[2] then
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then cli.usage_error(("%s: %s needs a value (%s)"):format(cmd.name, name, o[2])) end
        end
        if o.many then
          opts[key] = opts[key] or {}
          table.insert(opts[key], value)
        else
          opts[key] = value
        end
      else
        if value ~= nil then cli.usage_error(("%s: %s takes no value"):format(cmd.name, name)) end
        opts[key] = true
      end
    end
    i = i + 1
  end
  if opts.help then return opts, args end
  if #args < (cmd.min or 0) then
    cli.usage_error(("%s: expected %s"):format(cmd.name, cmd.args or "no arguments"))
  end
  if cmd.max and #args > cmd.max then
    cli.usage_error(("%s: too many arguments (expected %s)"):format(cmd.name, cmd.args or "none"))
  end
  return opts, args
end

--- A number option, or a usage error naming it.
function cli.number(cmd, opts, key, integer)
  local v = opts[key]
  if v == nil then return nil end
  local n = tonumber(v)
  if not n or n < 0 or (integer and math.type(n) ~= "integer") then
    cli.usage_error(("%s: --%s wants a %s, not %q"):format(cmd.name, key:gsub("_", "-"),
                    integer and "non-negative integer" or "non-negative number", v))
  end
  return n
end

--- Print an error on stderr, one line (a script's traceback takes more).
-- It may quote the peer (an error reply, a name from its schema): escaped
-- as qmp.text.escape does, keeping only line breaks and tabs.
function cli.complain(fmt, ...)
  io.stderr:write("qmp-lua: ", escape(fmt:format(...), "\n\t"), "\n")
end

--- An error as one line for the operator: the library's advice in the
-- command's words, and the address in front unless the text names it.
function cli.describe(err, address)
  local text = tostring(err):gsub("pass allow_remote = true", "pass --allow-remote")
  if address and not text:find(address, 1, true) then text = address .. ": " .. text end
  return text
end

--- Say a world event on stderr (cli.describe), unless it is a signal:
-- main reports that with the exit status, and the command its closing line.
function cli.fail(err, address)
  if err.kind ~= "interrupted" then cli.complain("%s", cli.describe(err, address)) end
end

--- Options for qmp.client / qmp.connect from the shared ones; extra adds more.
function cli.client_options(cmd, opts, address, extra)
  local o = { name = address, timeout = cli.number(cmd, opts, "connect_timeout"),
              allow_remote = opts.allow_remote or nil }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

--- Connect to address for cmd, or say why not on stderr: vm | nil.
-- opts.vm, set by qmp-lua launch, is a client already connected: it is used.
-- With reconnect, QEMU may come later: the first failure is told once
-- ("waiting for ADDRESS: ...") and it waits until QEMU is up or a signal.
function cli.open(cmd, opts, address, reconnect)
  if opts.vm then return opts.vm end   -- a client already connected (qmp-lua launch)
  if not reconnect then
    local vm, err = qmp.connect(address, cli.client_options(cmd, opts, address))
    if not vm then cli.fail(err, address) end
    return vm
  end
  local vm, err = qmp.client(address, cli.client_options(cmd, opts, address, { reconnect = cli.RECONNECT }))
  if not vm then
    cli.fail(err, address)
    return nil
  end
  local told = false
  local ok, why = vm:run({ done = function()
    if vm.state == "reconnecting" and not told then
      told = true
      cli.complain("waiting for %s: %s (Ctrl-C to give up)", address, cli.describe(vm:last_error()))
    end
    return vm.state == "ready"
  end })
  if ok then
    if told then cli.complain("%s: connected", address) end
    return vm
  end
  vm:close()
  cli.fail(why, address)
  return nil
end

--- true when fd (default stdout) is a terminal (progress bars).
function cli.is_tty(fd)
  return core.isatty(fd or 1)
end

--- Colour on stdout: a terminal, no --no-colour, and no NO_COLOR in the
-- environment (https://no-color.org: any non-empty value).
function cli.colour(opts)
  local no_color = os.getenv("NO_COLOR")
  return not opts.no_colour and (no_color == nil or no_color == "") and cli.is_tty(1)
end

--- xpcall(fn, msgh, ...) so that a caught signal also ends busy Lua code
-- in fn: a count hook raises the "interrupted" error once per signal.  The
-- library's waits return that error by themselves; this is for loops in a
-- script or a line typed at the shell.
function cli.interruptible(fn, msgh, ...)
  local raised
  debug.sethook(function()
    local name = signals.pending()
    if name and name ~= raised then
      raised = name
      error(signals.error(), 2)
    end
  end, "", 100000)
  local results = table.pack(xpcall(fn, msgh, ...))
  debug.sethook()
  return table.unpack(results, 1, results.n)
end

-- The library's own directory (".../qmp/"), whose frames a script's
-- traceback leaves out.
local LIBRARY = debug.getinfo(1, "S").source:match("^@(.*[/\\])shell[/\\]cli%.lua$")

--- A message handler for cli.interruptible: the interrupted error as it
-- is, anything else as text with the traceback of the script's own frames
-- (not the library's, qmp-lua's or C's: the operator's code is what to fix).
function cli.traceback(e)
  if type(e) == "table" and e.kind == "interrupted" then return e end
  local lines = {}
  for line in debug.traceback(tostring(e), 2):gmatch("[^\n]+") do
    local frame = line:match("^%s+(.*)$")
    local ours = frame and (frame:find("^%[C%]") or frame:find("^%(%.%.%.tail calls%.%.%.%)")
                            or frame:find("qmp%-lua:%d+:") or (LIBRARY and frame:find(LIBRARY, 1, true)))
    if not ours then lines[#lines + 1] = line end
  end
  return table.concat(lines, "\n")
end

return cli
