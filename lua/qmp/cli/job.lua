--- qmp-lua job: list a VM's jobs, or follow one to its end with progress.
local cli = require "qmp.cli.common"
local progress = require "qmp.cli.progress"
local jobs = require "qmp.jobs"

local cmd = {
  name = "job",
  args = "ADDRESS [ID]",
  min = 1,
  max = 2,
  connects = true,
  summary = "list the jobs of a VM, or follow one to its end with a progress bar",
  details = [[
Without ID: one line per job (id, type, status, progress). With ID: that
job's state; with --wait, follow it until it ends: a progress bar on a
terminal (bytes, percent, rate, ETA), else one plain line per second. The
status is 0 when the job concluded without error, 1 when it failed, was
cancelled or does not exist (the reason on stderr), 2 on connection trouble.
A mirror waits in "ready" until told: --complete tells it.]],
  options = {
    { "--wait", nil, "follow the job until it ends" },
    { "--complete", nil, "with --wait: complete the job when it is ready (mirror, commit)" },
    { "--dismiss", nil, "with --wait: dismiss the job once concluded (jobs made with auto-dismiss=false)" },
    { "--timeout", "S", "with --wait: give up after S seconds (status 1)" },
  },
}

local function list(vm)
  local all, err = jobs.list(vm)
  if not all then return nil, err end
  if #all == 0 then io.stdout:write("no jobs\n") end
  for _, job in ipairs(all) do io.stdout:write(progress.line(job), "\n") end
  return true
end

local function show(vm, id)
  local job, err = jobs.find(vm, id)
  if job == nil then return nil, err end
  if not job then
    cli.complain("no job %s", id)
    return false
  end
  io.stdout:write(progress.line(job), "\n")
  return true
end

local function follow(vm, id, opts)
  local meter = progress.new(io.stdout, cli.is_tty(1))
  local job, err = vm:job_wait(id, { progress = function(j) meter:update(j) end,
                                     timeout = cli.number(cmd, opts, "timeout"),
                                     complete = opts.complete, dismiss = opts.dismiss })
  meter:finish(job)
  if job then return true end
  if err.kind == "interrupted" then
    cli.complain("job: stopped watching %s by %s; the job goes on in QEMU", id, err.signal)
    return false
  end
  if err.kind == "job" or err.kind == "timeout" then
    cli.complain("%s", err.message)
    return false
  end
  return nil, err
end

function cmd.run(opts, args)
  local address, id = args[1], args[2]
  if (opts.complete or opts.dismiss or opts.timeout) and not opts.wait then
    cli.usage_error("job: --complete, --dismiss and --timeout go with --wait")
  end
  if opts.wait and not id then cli.usage_error("job: --wait needs a job ID") end
  local vm = cli.open(cmd, opts, address)
  if not vm then return cli.CONNECTION end
  local ok, err
  if not id then ok, err = list(vm)
  elseif opts.wait then ok, err = follow(vm, id, opts)
  else ok, err = show(vm, id) end
  vm:close()
  if ok == nil then
    cli.fail(err, address)
    return err.kind == "qmp" and cli.FAILED or cli.CONNECTION
  end
  return ok and cli.OK or cli.FAILED
end

return cmd
