--- qmp-lua mux: share one QMP monitor with any number of clients.
local qmp = require "qmp"
local cli = require "qmp.cli.common"

local cmd = {
  name = "mux",
  args = "ADDRESS",
  min = 1, max = 1,
  connects = true,
  summary = "share one VM's monitor with any number of QMP clients on a unix socket",
  details = [[
Holds the monitor at ADDRESS and serves QMP on the unix socket --listen
PATH: every client there (qmp-lua shell, events, exec, record, qmp-shell,
your scripts) sees a QEMU monitor of its own: QEMU's greeting, its own
negotiation, its commands' replies with its own ids, and every event from
the moment it negotiated. Commands from all clients run on the one
connection; fds passed with getfd or add-fd go with them.
PATH is created with --mode (default 0600: only this user; 0660 adds the
socket's group) and removed at the end; its directory decides who may
reach it too. An existing socket nobody listens on is replaced; anything
else at PATH is refused.
A client that stops reading is cut once 8 MiB wait for it. Each client's
coming and going is logged on stderr.
If the monitor connection is lost, every client is disconnected; with
--reconnect the mux keeps PATH and serves again once QEMU is back,
without it the mux exits with status 2. A quit sent by a client ends the
mux with status 0. SIGINT/SIGTERM end it cleanly (status 130/143).]],
  options = {
    { "--listen", "PATH", "the unix socket to serve (required)" },
    { "--mode", "MODE", "the socket's permissions: 0600 (default) or 0660" },
    { "--reconnect", nil, "wait for QEMU at the start, and serve again when QEMU comes back" },
  },
}

local function stamp()
  return os.date("%H:%M:%S")
end

function cmd.run(opts, args)
  local address = args[1]
  if not opts.listen then cli.usage_error("mux: --listen PATH is required") end
  local mode = opts.mode or "0600"
  if mode ~= "0600" and mode ~= "0660" and mode ~= "600" and mode ~= "660" then
    cli.usage_error(("mux: --mode must be 0600 or 0660, not %q"):format(mode))
  end
  local vm = cli.open(cmd, opts, address, opts.reconnect)
  if not vm then return cli.CONNECTION end
  local function log(line)
    io.stderr:write(("qmp-lua: mux: %s %s\n"):format(stamp(), line))
  end
  vm.on_error = function(e, v) cli.complain("%s", cli.describe(e, v.name)) end
  local m, err = qmp.mux(vm, { listen = opts.listen, mode = mode, log = log })
  if not m then
    cli.complain("mux: cannot serve %s: %s", opts.listen, cli.describe(err))
    vm:close()
    return err.kind == "unsupported" and cli.FAILED or cli.CONNECTION
  end
  log(("serving %s on %s (mode %s)"):format(address, opts.listen, mode))
  local lost = false
  vm:on("qmp.disconnected", function(ev)
    log(("%s lost (%s); waiting for it to come back"):format(address, ev.data.reason))
  end)
  vm:on("qmp.reconnected", function() log(address .. " is back; serving again") end)
  local ok, why = vm:run({ done = function() lost = vm:closed() return lost end })
  local quit = vm:commands_sent("quit") > 0
  m:close()
  vm:close()
  if ok and lost then
    if quit then
      log("QEMU quit (a client sent quit); done")
      return cli.OK
    end
    cli.complain("mux: %s", cli.describe(vm:last_error(), address))
    return cli.CONNECTION
  end
  if why.kind == "interrupted" then log(("stopped by %s; %s removed"):format(why.signal, opts.listen)) end
  if why.kind ~= "interrupted" then cli.fail(why, address) end
  return why.kind == "closed" and cli.CONNECTION or cli.FAILED
end

return cmd
