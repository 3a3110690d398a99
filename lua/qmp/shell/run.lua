--- qmp-lua run: run a Lua script (a policy, a check) against one VM.
local qmp = require "qmp"
local cli = require "qmp.shell.cli"

local cmd = {
  name = "run",
  args = "ADDRESS SCRIPT.lua [ARGS...]",
  min = 2,
  options_end = 2,
  summary = "run a Lua script with vm (the connected client) and qmp in scope",
  details = [[
The script runs with the globals `vm` (connected to ADDRESS) and `qmp`, and
`arg` holding its own arguments (arg[0] is the script). When it returns having
registered handlers (vm:on, a policy), qmp-lua runs vm:run() for it until the
VM's connection closes or Ctrl-C. If the script returns an integer, that is
the exit status. Options go before SCRIPT.
  qmp-lua run --reconnect /run/vm1/qmp.sock policy.lua]],
  options = {
    { "--reconnect", nil, "reconnect when QEMU restarts (opts.reconnect)" },
    { "--timeout", "S", "seconds to wait for the connection (default 10)" },
  },
}

function cmd.run(opts, args)
  local address, script = args[1], args[2]
  local timeout = cli.number(cmd, opts, "timeout")
  local vm = cli.connect(address, { name = address, timeout = timeout,
                                    reconnect = opts.reconnect and cli.RECONNECT or nil })
  if not vm then return cli.CONNECTION end
  local env = setmetatable({ vm = vm, qmp = qmp, arg = { [0] = script, table.unpack(args, 3) } },
                           { __index = _G })
  local readable = io.open(script)
  if not readable then
    vm:close()
    cli.usage_error("run: cannot read the script " .. script)
  end
  readable:close()
  local chunk, err = loadfile(script, "t", env)
  if not chunk then   -- a syntax error: the script's fault
    vm:close()
    cli.complain("%s", err)
    return cli.FAILED
  end
  local ok, result = xpcall(chunk, debug.traceback, table.unpack(args, 3))
  if not ok then
    vm:close()
    cli.complain("%s", tostring(result))
    return cli.FAILED
  end
  local status = math.type(result) == "integer" and result or nil
  if status == nil and vm:handlers() > 0 and not vm:closed() then
    local _, why = vm:run()
    if why and why.kind ~= "closed" then cli.complain("%s: %s", address, tostring(why)) end
  end
  vm:close()
  return status or cli.OK
end

return cmd
