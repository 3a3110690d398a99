--- qmp-lua events: watch the events of one or many VMs, one line each.
local qmp = require "qmp"
local cli = require "qmp.shell.cli"
local kv = require "qmp.shell.kv"
local pretty = require "qmp.shell.pretty"
local catalogue = require "qmp.events"

local cmd = {
  name = "events",
  args = "ADDRESS...",
  min = 1,
  summary = "watch the events of one or many VMs, one line each",
  details = [[
Prints each event as one line: local time, name, members. With several VMs
each line starts with the VM's address. --json prints one JSON object per
line ({"vm", "event", "data", "timestamp"}) for log shippers and jq.
Ends after --count events or --timeout seconds (status 0), or when every VM's
connection has closed (status 2; with --follow it waits for them to return).
--count counts QEMU's events, not the qmp.* lines --follow adds.
With --follow a VM may also be started after the watch: connection changes
show as qmp.disconnected / qmp.reconnected lines.]],
  options = {
    { "--event", "GLOB", "only events named GLOB (STOP, BLOCK_JOB_*); repeat for any of several", many = true },
    { "--where", "KEY=VALUE", "only events whose data member KEY (a.b: nested) is VALUE; repeat: all must hold",
      many = true },
    { "--json", nil, "one JSON object per line" },
    { "--pretty", nil, "each event as indented, coloured (on a terminal) JSON" },
    { "--count", "N", "stop after N events" },
    { "--timeout", "S", "stop after S seconds" },
    { "--follow", nil, "keep watching across QEMU restarts (reconnects)" },
  },
}

-- The data filter from --where KEY=VALUE words.
local function data_filter(wheres)
  if not wheres then return nil end
  local data, err = kv.pairs(wheres)
  if not data then cli.usage_error("events: --where: " .. err) end
  return data
end

-- How to print one event.
local function printer(opts, many)
  if opts.json then
    return function(ev, vm)
      return qmp.encode({ vm = vm.name, event = ev.event, data = ev.data, timestamp = ev.timestamp },
                        { sort = true })
    end
  end
  local colour = cli.is_tty(1)
  if opts.pretty then
    return function(ev, vm)
      local head = (many and vm.name .. " " or "") .. pretty.event_line(ev, { colour = colour })
      return head .. "\n" .. pretty.format(ev.data, { colour = colour })
    end
  end
  return function(ev, vm)
    return (many and vm.name .. "  " or "") .. pretty.event_line(ev, { colour = colour })
  end
end

function cmd.run(opts, args)
  if opts.json and opts.pretty then cli.usage_error("events: --json and --pretty exclude each other") end
  local count = cli.number(cmd, opts, "count", true)
  local timeout = cli.number(cmd, opts, "timeout")
  local names = opts.event or "*"
  local data = data_filter(opts.where)
  io.stdout:setvbuf("line")
  local vms = {}
  for i, address in ipairs(args) do
    if opts.follow then   -- a VM not up yet is waited for; a refused address still ends it
      vms[i] = cli.connect(address, { name = address, reconnect = cli.RECONNECT }, qmp.client)
    else
      vms[i] = cli.connect(address, { name = address })
    end
    if not vms[i] then
      for _, vm in ipairs(vms) do vm:close() end
      return cli.CONNECTION
    end
    vms[i].on_error = function(err, vm)
      if err.kind ~= "usage" then cli.complain("%s: %s", vm.name, tostring(err)) end
    end
  end
  local loop = qmp.loop(vms)
  local show, seen = printer(opts, #args > 1), 0
  loop:on(names, data, function(ev, vm)
    if count and seen >= count then return end
    if not catalogue.is_synthetic[ev.event] then seen = seen + 1 end   -- --follow's own lines are not counted
    io.stdout:write(show(ev, vm), "\n")
  end)
  if opts.follow then
    loop:on(catalogue.synthetic_names, function(ev, vm)
      if names ~= "*" then io.stdout:write(show(ev, vm), "\n") end  -- "*" printed them already
    end)
  end
  loop.on_close = function(vm, err) cli.complain("%s: %s", vm.name, tostring(err)) end
  local ok, err = loop:run({ timeout = timeout, done = function() return count ~= nil and seen >= count end })
  for _, vm in ipairs(vms) do vm:close() end
  if ok or err.kind == "timeout" then return cli.OK end
  return cli.CONNECTION
end

return cmd
