-- bin/qmp-lua run from the checkout as a child process, for the specs of
-- the command: to its end (stdout, stderr, exit status) or in the
-- background (read its output while it runs, signal it, wait for it).
--   local runner = require("support.qmp_lua").new("cli", cleanup)
--   local out, err, status = runner.run("exec", sock, "query-status")
--   local bg = runner.background("events", sock)   -- stopped after the test
--   teardown(runner.remove)
-- Every child runs under `timeout` (runner.LIMIT seconds), so a command
-- that hangs fails its test instead of the whole run.
local proc = require "support.proc"
local tmp = require "support.tmp"

local M = {}

--- Seconds any qmp-lua child may take before `timeout` ends it.
M.LIMIT = 20

--- The lines of text, without their ends (empty ones skipped).
function M.lines(text)
  local list = {}
  for line in (text or ""):gmatch("[^\n]+") do list[#list + 1] = line end
  return list
end

-- A command in the background: bg:out(), bg:err(), bg:status() (nil while
-- it runs), bg:wait(seconds) -> status, bg:signal("INT"), bg:kill().
local Bg = {}
Bg.__index = Bg

function Bg:out() return tmp.read(self.files.out) or "" end
function Bg:err() return tmp.read(self.files.err) or "" end
function Bg:status() return tonumber(tmp.read(self.files.rc) or "") end

function Bg:wait(seconds)
  proc.wait_until(function() return self:status() ~= nil end, seconds or 10)
  return self:status()
end

-- The signal goes to `timeout`, which passes INT, TERM and HUP on to qmp-lua
-- and then exits with qmp-lua's status.
function Bg:signal(name)
  proc.kill(self.pid, name)
end

function Bg:kill()
  if self:status() == nil then proc.terminate(self.pid, 2) end
  self:wait(5)
end

--- A runner whose files go to a fresh scratch directory named after
-- prefix; cleanup (support.cleanup) stops its background commands after
-- each test.
function M.new(prefix, cleanup)
  local runner = { LIMIT = M.LIMIT, lines = M.lines }
  local work = tmp.dir(prefix or "qmp-lua")
  local made = 0

  --- A fresh path in the scratch directory.
  function runner.scratch(name)
    made = made + 1
    return ("%s/%d-%s"):format(work, made, name or "f")
  end

  --- The shell command line that runs `qmp-lua WORDS...` under timeout.
  function runner.command_line(words)
    local quoted = {}
    for i, w in ipairs(words) do quoted[i] = tmp.quote(w) end
    return ("timeout -k 2 %d bin/qmp-lua %s"):format(M.LIMIT, table.concat(quoted, " "))
  end

  --- Run `qmp-lua WORDS...` to its end: stdout, stderr, exit status.
  function runner.run(...)
    local out, err = runner.scratch("out"), runner.scratch("err")
    local _, _, status = os.execute(("%s </dev/null >%s 2>%s"):format(runner.command_line({ ... }), out, err))
    return tmp.read(out), tmp.read(err), status
  end

  --- `qmp-lua WORDS...` in the background.
  function runner.background(...)
    local files = { out = runner.scratch("out"), err = runner.scratch("err"), rc = runner.scratch("rc"),
                    pid = runner.scratch("pid") }
    -- The subshell records the pid of `timeout` (a signal to it reaches qmp-lua) and then the exit status.
    assert(os.execute(("(%s </dev/null >%s 2>%s & echo $! >%s; wait $!; echo $? >%s) >/dev/null 2>&1 &")
                      :format(runner.command_line({ ... }), files.out, files.err, files.pid, files.rc)))
    local pid
    assert(proc.wait_until(function()
      pid = tonumber(tmp.read(files.pid) or "")
      return pid ~= nil
    end, 5), "the background qmp-lua did not start")
    local bg = setmetatable({ pid = pid, files = files }, Bg)
    cleanup(function() bg:kill() end)
    return bg
  end

  --- Remove the scratch directory (for teardown).
  function runner.remove() tmp.remove(work) end

  return runner
end

return M
