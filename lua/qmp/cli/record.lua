--- qmp-lua record: record a monitor's stream (both ways, with times) to a file.
local record = require "qmp.record"
local cli = require "qmp.cli.common"
local pretty = require "qmp.cli.pretty"

local cmd = {
  name = "record",
  args = "ADDRESS FILE",
  min = 2,
  max = 2,
  connects = true,
  summary = "record a VM's monitor stream to FILE, for qmp.replay and for reading",
  details = [[
Connects, negotiates and records every message both ways, one JSON line each
with the time it was seen (see qmp.record), until the connection closes,
--count events arrived, --timeout seconds passed, or SIGINT/SIGTERM (the end
line's reason is then "interrupted"). Each event is
also shown on stderr as it arrives (--quiet: not). Replay it with
qmp.replay(FILE), e.g. to test a policy against a real incident.]],
  options = {
    { "--count", "N", "stop after N events" },
    { "--timeout", "S", "stop after S seconds (status 0)" },
    { "--quiet", nil, "do not show the events on stderr" },
  },
}

function cmd.run(opts, args)
  local address, path = args[1], args[2]
  local count = cli.number(cmd, opts, "count", true)
  if count == 0 then cli.usage_error("record: --count must be at least 1") end
  local on_event
  if not opts.quiet then
    on_event = function(ev) io.stderr:write(pretty.event_line(ev), "\n") end
  end
  local summary, err = record.run(address, path, { count = count, timeout = cli.number(cmd, opts, "timeout"),
                                                   on_event = on_event,
                                                   connect = cli.client_options(cmd, opts, address) })
  if not summary then
    cli.fail(err, address)
    return err.kind == "io" and cli.FAILED or cli.CONNECTION
  end
  io.stderr:write(("recorded %d messages (%d events) in %.1f s to %s: %s\n")
                  :format(summary.messages, summary.events, summary.seconds, path, summary.reason))
  return cli.OK
end

return cmd
