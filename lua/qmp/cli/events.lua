--- qmp-lua events: watch the events of one or many VMs, one line each.
local qmp = require "qmp"
local cli = require "qmp.cli.common"
local kv = require "qmp.cli.kv"
local pretty = require "qmp.cli.pretty"
local catalogue = require "qmp.events"
local text = require "qmp.text"

local cmd = {
  name = "events",
  args = "ADDRESS...",
  min = 1,
  connects = true,
  summary = "watch the events of one or many VMs, one line each",
  details = [[
Prints each event as one line: local time, name, members. With several VMs
each line starts with the VM's address. --json prints one JSON object per
line ({"vm", "event", "data", "timestamp"}) for log shippers and jq.
Every VM that can be watched is: one that refuses, never greets (its monitor
held by another client) or drops is said once on stderr ("ADDRESS: not
watched: ...") and the others go on; with --follow it is retried.
Ends after --count events, --timeout seconds, or SIGINT/SIGTERM (a closing
line on stderr), or when no VM is left. Status 0 when at least one VM was
watched to the end, 2 when none could be (see the exit status table).
--count counts QEMU's events, not the qmp.* lines --follow adds.
With --follow a VM may also be started after the watch: connection changes
show as qmp.connected / qmp.disconnected / qmp.reconnected lines.
An --event name that neither the catalogue nor the VM's schema knows is
warned about on stderr, with the closest name.]],
  options = {
    { "--event", "GLOB", "only events named GLOB (STOP, BLOCK_JOB_*); repeat for any of several", many = true },
    { "--where", "KEY=VALUE", "only events whose data member KEY (a.b: nested) is VALUE; repeat: all must hold",
      many = true },
    { "--json", nil, "one JSON object per line" },
    { "--pretty", nil, "each event as indented, coloured (on a terminal) JSON" },
    { "--no-colour", nil, "plain output even on a terminal (so does NO_COLOR)" },
    { "--count", "N", "stop after N events" },
    { "--timeout", "S", "stop after S seconds (status 0)" },
    { "--follow", nil, "keep watching across QEMU restarts (reconnects), and retry VMs not up yet" },
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
      return text.json(qmp.encode({ vm = vm.name, event = ev.event, data = ev.data, timestamp = ev.timestamp },
                                  { sort = true }))   -- the same JSON, DEL and C1 controls escaped too
    end
  end
  local colour = cli.colour(opts)
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

local SCHEMA_WAIT = 2   -- seconds the watch may wait for the first VM's schema (a typo check)

-- --event names neither the catalogue nor live (a VM's schema, or nil)
-- knows, each said once on stderr with the closest name.
local function warn_unknown(names, live)
  for _, name in ipairs(names) do
    local why = catalogue.unknown_name(name, live)
    if why then cli.complain("warning: --event %s: %s", name, why) end
  end
end

-- The plain --event names the catalogue does not know, or nil: checked
-- against the first VM's schema once one is up (a newer QEMU has events of
-- its own).  nil when there are none, so no schema is asked for.
local function suspicious_names(list)
  local out = {}
  for _, name in ipairs(list or {}) do
    if not name:find("[*?]") and catalogue.unknown_name(name) then out[#out + 1] = name end
  end
  return #out > 0 and out or nil
end

function cmd.run(opts, args)
  if opts.json and opts.pretty then cli.usage_error("events: --json and --pretty exclude each other") end
  local count = cli.number(cmd, opts, "count", true)
  local timeout = cli.number(cmd, opts, "timeout")
  local names = opts.event or "*"
  local data = data_filter(opts.where)
  local suspicious = suspicious_names(opts.event)
  io.stdout:setvbuf("line")

  -- Every VM connects in the background: none waits for another.
  local loop, vms = qmp.loop(), {}
  local watched = {}   -- vm -> true once it was ready
  local told = {}      -- vm -> true while its outage has been said (--follow)
  local function not_watched(vm, err)
    if told[vm] then return end
    told[vm] = true
    -- A VM never watched lost no connection: say why it could not connect.
    if not watched[vm] and type(err) == "table" and err.kind == "closed" and err.cause then err = err.cause end
    cli.complain("%s: not watched: %s%s", vm.name, cli.describe(err), opts.follow and "; retrying" or "")
  end
  for _, address in ipairs(args) do
    local vm, err = opts.vm, nil   -- qmp-lua launch: its machine's client, connected already
    if vm then
      watched[vm] = true
    else
      vm, err = qmp.client(address, cli.client_options(cmd, opts, address,
                                                       { reconnect = opts.follow and cli.RECONNECT or nil }))
    end
    if vm then
      vm.on_error = function(e, v)
        if e.kind ~= "usage" then cli.complain("%s", cli.describe(e, v.name)) end  -- names: warn_unknown
      end
      vms[#vms + 1] = vm
      loop:add(vm)
    else
      cli.complain("%s: not watched: %s", address, cli.describe(err))
    end
  end

  local show, seen = printer(opts, #args > 1), 0
  loop:on(names, data, function(ev, vm)
    if count and seen >= count then return end
    if catalogue.is_synthetic[ev.event] then
      if not opts.follow then return end   -- qmp.connected: only --follow shows connection changes
    else
      seen = seen + 1
    end
    io.stdout:write(show(ev, vm), "\n")
  end)
  if opts.follow and names ~= "*" then   -- "*" printed them already
    loop:on(catalogue.synthetic_names, function(ev, vm) io.stdout:write(show(ev, vm), "\n") end)
  end
  loop:on(catalogue.synthetic_names, function(ev, vm)
    if ev.event == "qmp.disconnected" then
      not_watched(vm, ev.data.reason)
    else   -- connected, reconnected
      watched[vm], told[vm] = true, nil
      if suspicious then   -- only with a name the catalogue lacks; bounded: the watch waits meanwhile
        local live = vm:schema(SCHEMA_WAIT)
        warn_unknown(suspicious, live)
        suspicious = nil
      end
    end
  end)
  loop.on_close = not_watched

  local ok, err = loop:run({ timeout = timeout, done = function()
    for _, vm in ipairs(vms) do
      if vm.state == "reconnecting" then not_watched(vm, vm:last_error()) end
    end
    return count ~= nil and seen >= count
  end })
  if suspicious then warn_unknown(suspicious) end   -- no VM came up to ask
  local live = 0
  for _, vm in ipairs(vms) do
    if watched[vm] and vm.state == "ready" then live = live + 1 end
    if vm == opts.vm then loop:remove(vm) else vm:close() end   -- launch's client: its owner closes it
  end
  if not ok and err.kind == "interrupted" then
    cli.complain("events: %d event%s from %d VM%s watched; stopped by %s", seen, seen == 1 and "" or "s",
                 live, live == 1 and "" or "s", err.signal)
  end
  if (ok or err.kind ~= "closed") and live > 0 then return cli.OK end
  return cli.CONNECTION
end

return cmd
