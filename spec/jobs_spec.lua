-- vm:job_wait(): following real block jobs on qcow2 images to their end.
local qmp = require "qmp"
local qemu = require "support.qemu"
local tmp = require "support.tmp"
local disks = require "support.disks"

local cleanup = require("support.cleanup")(after_each)

local MiB = 1 << 20

-- A VM with node "top": a qcow2 overlay over a base holding `data` MiB of data.
local function vm_with_chain(data)
  local dir = tmp.dir("jobs")
  cleanup(function() tmp.remove(dir) end)
  disks.qcow2_chain(dir, data)
  local machine = qemu.start({})
  cleanup(function() machine:stop() end)
  local vm = assert(qmp.connect(machine.sock, { timeout = 10 }))
  cleanup(function() vm:close() end)
  local function add(name, file)
    assert(vm:execute("blockdev-add", { driver = "qcow2", ["node-name"] = name,
                                        file = { driver = "file", filename = dir .. "/" .. file } }))
  end
  add("top", "top.qcow2")
  add("copy", "copy.qcow2")
  return vm, dir
end

describe("vm:job_wait() #qemu", function()
  it("follows a stream job to its end, reporting progress, after the job vanished (auto-dismiss)", function()
    local vm = vm_with_chain(16)
    assert(vm:execute("block-stream", { ["job-id"] = "s0", device = "top", speed = 16 * MiB }))
    local seen = {}
    local job = assert(vm:job_wait("s0", { interval = 0.2, timeout = 20,
                                           progress = function(j) seen[#seen + 1] = j end }))
    assert.equal("concluded", job.status)
    assert.is_true(#seen >= 2, "progress was reported along the way")
    assert.equal("running", seen[1].status)
    assert.equal(64 * MiB, seen[1]["total-progress"])
    local last = 0
    for _, j in ipairs(seen) do   -- progress never goes back
      assert.is_true(j["current-progress"] >= last)
      last = j["current-progress"]
    end
  end)

  it("completes a mirror when it is ready and dismisses it, when asked", function()
    local vm = vm_with_chain(4)
    assert(vm:execute("blockdev-mirror", { ["job-id"] = "m0", device = "top", target = "copy",
                                           sync = "full", ["auto-dismiss"] = false }))
    local statuses = {}
    local job = assert(vm:job_wait("m0", { complete = true, dismiss = true, interval = 0.2, timeout = 20,
                                           progress = function(j) statuses[j.status] = true end }))
    assert.equal("concluded", job.status)
    assert.is_true(statuses.ready, "it went through ready")
    assert.same({}, assert(vm:execute("query-jobs")))   -- dismissed
  end)

  it("returns the job's error when it fails, kind job", function()
    local vm = vm_with_chain(4)
    local l <close> = vm:listen("JOB_STATUS_CHANGE", { id = "s1", status = "running" })
    assert(vm:execute("block-stream", { ["job-id"] = "s1", device = "top", speed = 1 }))  -- crawls
    assert(l:wait(10))
    assert(vm:execute("block-job-cancel", { device = "s1", force = true }))
    local job, err = vm:job_wait("s1", { timeout = 10 })
    assert.is_nil(job)
    assert.equal("job", err.kind)
    assert.matches("job s1 failed: cancelled", err.message)
  end)

  it("says so for a job that does not exist, and times out on one that never ends", function()
    local vm = vm_with_chain(4)
    local _, err = vm:job_wait("nope", { timeout = 1 })
    assert.equal("job", err.kind)
    assert.matches("no job nope", err.message)
    assert(vm:execute("block-stream", { ["job-id"] = "s2", device = "top", speed = 1 }))
    local t0 = qmp.monotime()
    local job
    job, err = vm:job_wait("s2", { timeout = 0.5, interval = 0.1 })
    assert.is_nil(job)
    assert.equal("timeout", err.kind)
    assert.equal("running", err.job.status)
    assert.is_true(qmp.monotime() - t0 < 2)
    assert.has_error(function() vm:job_wait("s2", { timout = 1 }) end)
    assert.has_error(function() vm:job_wait(nil) end)
  end)
end)

-- query-jobs is the peer's: no reply shape makes job_wait or the job lines raise.
describe("jobs and a malformed query-jobs reply", function()
  local fake = require "support.fake_qmp"
  local progress = require "qmp.cli.progress"

  local function vm_replying(...)
    local steps = {}
    for i, reply in ipairs({ ... }) do steps[i] = { expect = "query-jobs", reply = fake.reply(reply) } end
    steps[#steps + 1] = { hold = 5 }
    return fake.client(steps, cleanup)
  end

  it("is a protocol error when it is not a list", function()
    local job, err = vm_replying("5"):job_wait("j")
    assert.is_nil(job)
    assert.equal("protocol", err.kind)
    assert.equal("query-jobs returned a number, not a list", err.message)
  end)

  it("leaves out entries that are not jobs, and reads any member shape", function()
    local seen = {}
    local job, err = vm_replying('[5, {"id": 7}, {"id": "j", "status": "running", "current-progress": "x",'
                                 .. ' "total-progress": {}}]',
                                 '[{"id": "j", "status": "concluded", "error": "disk\\ngone\\u001b[2J"}]')
      :job_wait("j", { progress = function(j) seen[#seen + 1] = progress.line(j) end, interval = 0.01 })
    assert.is_nil(job)
    assert.equal("job", err.kind)
    assert.equal("job j failed: disk\\ngone\\u001b[2J", err.message)
    assert.same({ "j  ?  running", "j  ?  concluded  error: disk\\ngone\\u001b[2J" }, seen)
  end)

  it("gives job lines and the meter something to show whatever the members hold", function()
    local out = {}
    local sink = { write = function(_, ...) for _, s in ipairs({ ... }) do out[#out + 1] = s end end,
                   flush = function() end }
    local hostile = { id = "j", type = {}, status = 5, ["current-progress"] = -1, ["total-progress"] = 0 / 0,
                      error = true }
    assert.equal("j  ?  5  error: true", progress.line(hostile))
    local meter = progress.new(sink, true)
    meter:update(hostile)
    meter:finish(hostile)
    assert.matches("j  5", table.concat(out))
  end)
end)
