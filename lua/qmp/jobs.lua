--- Following a background job (block-stream, mirror, backup, ...) to its end:
-- vm:job_wait(id, opts).  QEMU reports a job's life as JOB_STATUS_CHANGE
-- events (created, running, ready, waiting, pending, concluded, null, ...)
-- and its progress and error only through query-jobs, so this watches the
-- events and asks query-jobs at each change and every `interval` seconds.
-- A job started with auto-dismiss (the legacy block-job commands' default)
-- vanishes at "concluded"; its outcome then comes from BLOCK_JOB_COMPLETED
-- or BLOCK_JOB_CANCELLED.
local errors = require "qmp.errors"

local min, huge = math.min, math.huge

local jobs = {}

local OPTIONS = { progress = true, timeout = true, interval = true, dismiss = true, complete = true }

--- query-jobs: the list of jobs (tables, each with a string id) | nil, err.
-- The reply is the peer's: what is not a list is a protocol error, an entry
-- that is not a table with a string id is left out.
function jobs.list(vm)
  local list, err = vm:execute("query-jobs")
  if not list then return nil, err end
  if type(list) ~= "table" then
    return nil, errors.new("protocol", ("query-jobs returned a %s, not a list"):format(type(list)))
  end
  local all = {}
  for _, job in ipairs(list) do
    if type(job) == "table" and type(job.id) == "string" then all[#all + 1] = job end
  end
  return all
end

--- The job's entry in query-jobs: job | false (QEMU has no such job, or no
-- more) | nil, err.
function jobs.find(vm, id)
  local list, err = jobs.list(vm)
  if not list then return nil, err end
  for _, job in ipairs(list) do
    if job.id == id then return job end
  end
  return false
end

local function failed(id, why, job)
  why = type(why) == "string" and errors.quote(why, 200) or "(an error that is not a text)"   -- the peer's
  return nil, errors.new("job", ("job %s failed: %s"):format(id, why), { job = job })
end

-- The outcome of a job that vanished: from its BLOCK_JOB_* end event.
local function vanished(id, ends, last)
  local ev = ends:next()
  if ev and ev.event == "BLOCK_JOB_CANCELLED" then return failed(id, "cancelled", last) end
  if ev and ev.error then return failed(id, ev.error, last) end
  if ev or (last and last.status == "concluded") then
    local job = last or { id = id }
    job.status = "concluded"
    if ev then job["current-progress"], job["total-progress"] = ev.offset, ev.len end
    return job
  end
  return nil, errors.new("job", ("no job %s (it may have ended before the wait began)"):format(id))
end

--- Wait for job `id` to end: its last query-jobs entry (status "concluded")
-- | nil, err.  err.kind "job" when it failed, was cancelled or does not
-- exist (err.job: the last entry seen); "timeout"; or the client's error.
-- opts: progress(job) called at each change and every interval; interval
-- (seconds, default 1); timeout (seconds, default none); complete (send
-- job-complete when the job is "ready", as a mirror waits to be told);
-- dismiss (job-dismiss a job that waits in "concluded").
function jobs.wait(vm, id, opts)
  if type(id) ~= "string" or id == "" then errors.raise("qmp: job_wait: job id must be a non-empty string") end
  opts = errors.check_options("qmp: job_wait", opts, OPTIONS)
  local progress = opts.progress
  if progress ~= nil and type(progress) ~= "function" then
    errors.raise("qmp: job_wait: progress must be a function")
  end
  local interval = errors.check_duration("qmp: job_wait", "interval", opts.interval or 1, { positive = true })
  local timeout = errors.check_duration("qmp: job_wait", "timeout", opts.timeout, { optional = true, infinite = true })
  local deadline = timeout and vm:now() + timeout or huge
  local changes <close> = vm:listen("JOB_STATUS_CHANGE", { id = id })
  local ends <close> = vm:listen({ "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED" }, { device = id })
  local last, completing
  while true do
    local job, err = jobs.find(vm, id)
    if job == nil then return nil, err end
    if not job then return vanished(id, ends, last) end
    last = job
    if progress then progress(job) end
    if job.status == "concluded" then
      if opts.dismiss then   -- failed or not: the caller is done with it
        local ok, derr = vm:execute("job-dismiss", { id = id })
        if not ok then return nil, derr end
      end
      if job.error then return failed(id, job.error, job) end
      return job
    end
    if job.status == "ready" and opts.complete and not completing then
      local ok, cerr = vm:execute("job-complete", { id = id })
      if not ok then return nil, cerr end
      completing = true
    end
    local left = deadline - vm:now()
    if left <= 0 then
      return nil, errors.new("timeout", ("job %s still %s after %g s"):format(id, job.status, opts.timeout),
                             { job = job })
    end
    local _, werr = changes:wait(min(interval, left))
    if werr and werr.kind ~= "timeout" then return nil, werr end
    while changes:next() do end  -- query-jobs tells the latest state
  end
end

return jobs
