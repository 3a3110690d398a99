--- qmp-lua run: run a Lua script (a policy, a check) against one VM.
local qmp = require "qmp"
local cli = require "qmp.cli.common"
local signals = require "qmp.signals"

local cmd = {
  name = "run",
  args = "ADDRESS SCRIPT.lua [ARGS...]",
  min = 2,
  options_end = 2,
  connects = true,
  summary = "run a Lua script with vm (the connected client) and qmp in scope",
  details = [[
The script runs with the globals `vm` (connected to ADDRESS) and `qmp`, and
`arg` holding its own arguments (arg[0] is the script). When it returns having
registered handlers (vm:on, a policy), qmp-lua runs vm:run() for it until
vm:stop(), SIGINT/SIGTERM, or the VM's connection ends: then the status is 2
(with --reconnect the connection is followed back instead). If the script
returns an integer, that is the exit status. Options go before SCRIPT.
  qmp-lua run --reconnect /run/vm1/qmp.sock policy.lua]],
  options = {
    { "--reconnect", nil, "wait for QEMU if it is not up yet, and reconnect when it restarts" },
  },
}

-- Say why a script stopped: a signal in one line, anything else with its traceback.
local function script_failed(result)
  if type(result) == "table" and result.kind == "interrupted" then
    cli.complain("run: stopped by %s", result.signal)
  else
    cli.complain("%s", tostring(result))
  end
  return cli.FAILED
end

-- Serve the script's handlers until vm:stop() (0), a signal or the end of
-- the connection (2).
local function serve(vm, address)
  local default = vm.on_error
  vm.on_error = function(err, v)
    if default and not signals.pending() then default(err, v) end  -- a handler cut by the signal: said below
  end
  local ok, stopped, why = cli.interruptible(vm.run, cli.traceback, vm)
  if not ok then return script_failed(stopped) end
  if stopped then return cli.OK end
  if why.kind == "interrupted" then return script_failed(why) end   -- main reports the signal's status
  cli.complain("%s", cli.describe(why, address))
  return cli.CONNECTION
end

function cmd.run(opts, args)
  local address, script = args[1], args[2]
  local readable = io.open(script)
  if not readable then cli.usage_error("run: cannot read the script " .. script) end
  readable:close()
  local vm = cli.open(cmd, opts, address, opts.reconnect)
  if not vm then return cli.CONNECTION end
  local env = setmetatable({ vm = vm, qmp = qmp, arg = { [0] = script, table.unpack(args, 3) } },
                           { __index = _G })
  local chunk, err = loadfile(script, "t", env)
  local status
  if not chunk then   -- a syntax error: the script's fault
    cli.complain("%s", err)
    status = cli.FAILED
  else
    local ok, result = cli.interruptible(chunk, cli.traceback, table.unpack(args, 3))
    if not ok then status = script_failed(result)
    elseif math.type(result) == "integer" then status = result
    elseif vm:handlers() > 0 then status = serve(vm, address)
    else status = cli.OK end
  end
  if not opts.vm then vm:close() end   -- launch's client: its owner closes it
  return status
end

return cmd
