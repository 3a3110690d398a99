--- qmp-lua: the command-line tool.  main(argv) runs one subcommand and
-- returns its exit status (see cli.EXIT_CODES).
-- SIGINT, SIGTERM and SIGHUP are caught for the whole run (qmp.signals):
-- the library's waits return kind "interrupted", each subcommand ends
-- the way it ends on a timeout (closing lines, files, the terminal), and
-- the status is then 128 + the signal's number, as a shell reports it.
local cli = require "qmp.cli.common"
local errors = require "qmp.errors"
local signals = require "qmp.signals"

local COMMANDS = { "shell", "events", "exec", "run", "job", "record", "mux", "launch", "completion" }

local function overview()
  local lines = { "usage: qmp-lua COMMAND [options] ARGS...", "",
                  "Watch and steer QEMU virtual machines over QMP.", "", "commands:" }
  for _, name in ipairs(COMMANDS) do
    local cmd = require("qmp.cli." .. name)
    lines[#lines + 1] = ("  %-10s %s"):format(name, cmd.summary)
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
  local cmd = require("qmp.cli." .. name)
  signals.catch("INT", "TERM", "HUP")
  local ok, status = pcall(function()
    local opts, args = cli.parse(cmd, { table.unpack(argv, 2) })
    if opts.help then
      io.write(cli.help(cmd))
      return cli.OK
    end
    return cmd.run(opts, args)
  end)
  local _, signo = signals.take()
  if signo then return 128 + signo end
  if ok then return status end
  if cli.is_usage_error(status) then
    cli.complain("%s (see qmp-lua %s --help)", tostring(status), name)
    return cli.USAGE
  end
  -- A defect of qmp-lua: one line, without the library's file names
  -- (QMP_LUA_DEBUG=1 shows the whole traceback).
  if os.getenv("QMP_LUA_DEBUG") then io.stderr:write(debug.traceback(tostring(status)), "\n") end
  local text = errors.is(status) and status.message or tostring(status)
  cli.complain("%s: internal error: %s (QMP_LUA_DEBUG=1 shows where)", name, (text:gsub("^[^:\n]*:%d+: ", "")))
  return cli.FAILED
end

return { main = main, COMMANDS = COMMANDS }
