--- qmp-lua exec: run one command and print its result as JSON.
local qmp = require "qmp"
local cli = require "qmp.cli.common"
local kv = require "qmp.cli.kv"
local text = require "qmp.text"

local cmd = {
  name = "exec",
  args = "ADDRESS COMMAND [KEY=VALUE... | JSON]",
  min = 2,
  options_end = 2,
  connects = true,
  summary = "run one QMP command and print its result as JSON",
  details = [[
Arguments are KEY=VALUE words (qmp-shell style: a value that reads as JSON is
JSON — 5, true, null, "text", [1,2], {"a":1} — anything else a string;
a.b=1 sets a nested member) or one JSON object. Options go before COMMAND.
The result is printed as one line of JSON, keys sorted (indented with
--pretty). On a QMP
error the error class and text go to stderr and the status is 1.
  qmp-lua exec /run/vm1/qmp.sock query-status
  qmp-lua exec /run/vm1/qmp.sock block-job-cancel device=job0 force=true
  qmp-lua exec /run/vm1/qmp.sock human-monitor-command command-line="info block"]],
  options = {
    { "--pretty", nil, "indent the result" },
    { "--timeout", "S", "give up after S seconds in all: connecting and the reply (status 2)" },
  },
}

-- The command's arguments from the words after its name.
local function arguments(words)
  if #words == 0 then return nil end
  if #words == 1 and words[1]:match("^%s*{") then
    local args, err = qmp.decode(words[1])
    if type(args) ~= "table" then cli.usage_error("exec: the JSON arguments do not parse: " .. tostring(err)) end
    return args
  end
  local args, err = kv.pairs(words)
  if not args then cli.usage_error("exec: " .. err) end
  return args
end

function cmd.run(opts, args)
  local timeout = cli.number(cmd, opts, "timeout")
  local address, name = args[1], args[2]
  local command_args = arguments({ table.unpack(args, 3) })
  local started = qmp.monotime()
  if timeout then   -- the connection gets no more than the whole
    local connect = cli.number(cmd, opts, "connect_timeout")
    opts.connect_timeout = connect and math.min(connect, timeout) or timeout
  end
  local vm = cli.open(cmd, opts, address)
  if not vm then return cli.CONNECTION end
  local left = timeout and math.max(0, timeout - (qmp.monotime() - started))
  local ret, err = vm:execute(name, command_args, { timeout = left })
  vm:close()
  if ret == nil then
    if err.kind == "qmp" then
      cli.complain("%s", err.message)   -- "COMMAND: CLASS: DESC", the peer's text escaped
      return cli.FAILED
    end
    if err.kind == "timeout" and timeout and err.command then   -- name --timeout, not the part of it left
      err.message = err.message:gsub("within %S+ s", ("within %g s"):format(timeout), 1)
    end
    cli.fail(err, address)
    return cli.CONNECTION
  end
  -- The result is the peer's: JSON whose strings show DEL and C1 controls escaped too.
  io.stdout:write(text.json(qmp.encode(ret, { pretty = opts.pretty == true, sort = true })), "\n")
  return cli.OK
end

return cmd
