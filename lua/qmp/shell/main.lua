--- qmp-lua: the command-line tool.  main(argv) runs one subcommand and
-- returns its exit status (see cli.EXIT_CODES).
local cli = require "qmp.shell.cli"

local COMMANDS = { "shell", "events", "exec", "run", "job", "record", "completion" }

local function overview()
  local lines = { "usage: qmp-lua COMMAND [options] ARGS...", "",
                  "Watch and steer QEMU virtual machines over QMP.", "", "commands:" }
  for _, name in ipairs(COMMANDS) do
    local cmd = require("qmp.shell." .. name)
    lines[#lines + 1] = ("  %-8s %s"):format(name, cmd.summary)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "ADDRESS is a QMP socket: /path/qmp.sock, unix:/path, tcp:127.0.0.1:4444, [::1]:4444."
  lines[#lines + 1] = "qmp-lua COMMAND --help tells more."
  lines[#lines + 1] = ""
  lines[#lines + 1] = cli.EXIT_CODES
  return table.concat(lines, "\n") .. "\n"
end

local function main(argv)
  local name = argv[1]
  if name == nil or name == "--help" or name == "-h" or name == "help" then
    io.write(overview())
    return name == nil and cli.USAGE or cli.OK
  end
  local known = false
  for _, n in ipairs(COMMANDS) do known = known or n == name end
  if not known then
    cli.complain("unknown command %q (commands: %s; see qmp-lua --help)", name, table.concat(COMMANDS, ", "))
    return cli.USAGE
  end
  local cmd = require("qmp.shell." .. name)
  local ok, status = pcall(function()
    local opts, args = cli.parse(cmd, { table.unpack(argv, 2) })
    if opts.help then
      io.write(cli.help(cmd))
      return cli.OK
    end
    return cmd.run(opts, args)
  end)
  if ok then return status end
  if cli.is_usage_error(status) then
    cli.complain("%s (see qmp-lua %s --help)", tostring(status), name)
    return cli.USAGE
  end
  error(status, 0)
end

return { main = main, COMMANDS = COMMANDS }
