--- qmp-lua launch: a throwaway QEMU with a shell, an event watch or a
-- script on it; QEMU goes when the command ends, however it ends.
local qmp = require "qmp"
local cli = require "qmp.cli.common"
local signals = require "qmp.signals"
local events = require "qmp.cli.events"

local cmd = {
  name = "launch",
  args = "[--shell | --events | --run SCRIPT.lua [ARGS...]] -- QEMU-ARGS...",
  min = 0,
  summary = "start a throwaway QEMU and open a shell (or watch events, or run a script) on it",
  details = [[
Starts QEMU (--binary, default qemu-system-x86_64) with the arguments after
"--", its monitor on a socketpair (qmp.machine: no socket file), and opens
the shell on it; --events watches its events instead (with the options of
qmp-lua events), --run runs SCRIPT.lua as qmp-lua run does. When that ends
(Ctrl-D or :quit in the shell, --count, --timeout, the script's end, Ctrl-C,
SIGTERM), QEMU is shut down: quit, then SIGTERM, then SIGKILL, a few seconds
each. A QEMU that cannot start is said with its own complaint (status 1).
  qmp-lua launch -- -M pc -m 256 -display none
  qmp-lua launch --events --count 1 -- -M pc -display none -S]],
  options = {
    { "--shell", nil, "open the shell on the VM (the default)" },
    { "--events", nil, "watch the VM's events, as qmp-lua events does (its options below apply)" },
    { "--run", "SCRIPT.lua", "run a script with vm and qmp in scope, as qmp-lua run does; its ARGS before --" },
    { "--binary", "PATH", "the QEMU to start (default qemu-system-x86_64, searched in PATH)" },
    { "--connect-timeout", "S", "seconds QEMU has to start and answer on its monitor (default 10)" },
  },
}
for _, o in ipairs(events.options) do   -- --event, --where, --json, --count, --timeout ...
  if o[1] ~= "--follow" then cmd.options[#cmd.options + 1] = o end
end

local EVENT_OPTIONS = { event = true, where = true, json = true, pretty = true, no_colour = true,
                        count = true, timeout = true }

-- What to run on the VM: the subcommand's module name and its arguments.
local function mode_of(opts, before)
  local modes = (opts.shell and 1 or 0) + (opts.events and 1 or 0) + (opts.run and 1 or 0)
  if modes > 1 then cli.usage_error("launch: --shell, --events and --run exclude each other") end
  if not opts.run and #before > 0 then
    cli.usage_error(("launch: %q before --: QEMU's arguments go after --"):format(before[1]))
  end
  if not opts.events then
    for key in pairs(EVENT_OPTIONS) do
      if opts[key] ~= nil then cli.usage_error(("launch: --%s needs --events"):format(key:gsub("_", "-"))) end
    end
  end
  if opts.events then return "events" end
  if opts.run then return "run" end
  return "shell"
end

-- How QEMU went, from machine:close().
local function describe(ended)
  local how = ended.how == "exited" and "exited" or ("shut down (" .. ended.how .. ")")
  if ended.signal then return ("%s, signal %d"):format(how, ended.signal) end
  return ("%s, status %d"):format(how, ended.status or -1)
end

function cmd.run(opts, args)
  local split = args.dashdash
  if not split then
    cli.usage_error("launch: QEMU's arguments come after --: qmp-lua launch -- -M pc -display none")
  end
  local before = { table.unpack(args, 1, split - 1) }
  local qemu_args = { table.unpack(args, split) }
  local mode = mode_of(opts, before)
  local m, err = qmp.machine({ binary = opts.binary, args = qemu_args,
                               timeout = cli.number(cmd, opts, "connect_timeout") })
  if not m then
    if err.kind ~= "interrupted" then
      cli.complain("launch: %s", err.kind == "launch" and err.message or cli.describe(err))
    end
    return err.kind == "launch" and cli.FAILED or cli.CONNECTION
  end
  local label = m.vm.name
  cli.complain("launch: %s started", label)
  local sub_opts, sub_args = { vm = m.vm }, { label }
  if mode == "events" then
    for key in pairs(EVENT_OPTIONS) do sub_opts[key] = opts[key] end
  elseif mode == "run" then
    sub_args[2] = opts.run
    for _, a in ipairs(before) do sub_args[#sub_args + 1] = a end
  end
  local ok, status = pcall(require("qmp.cli." .. mode).run, sub_opts, sub_args)
  -- QEMU goes, however the command ended; a signal that ended it is taken
  -- first, so that the shutdown's own waits are not cut short by it.
  local _, signo = signals.take()
  local ended = m:close()
  cli.complain("launch: %s %s", label, ended and describe(ended) or "is gone")
  if not ok then error(status, 0) end
  if signo then return 128 + signo end
  return status
end

return cmd
