--- Job progress for people: one-line summaries and a live meter (a bar
-- redrawn in place on a terminal, plain lines at most once a second
-- elsewhere, so logs stay readable).  A job is a query-jobs entry:
-- { id, type, status, ["current-progress"], ["total-progress"], error }.
local monotime = require("qmp.core").monotime
local quote = require("qmp.errors").quote

local progress = {}

local WINDOW = 5    -- seconds of samples the rate is measured over
local BAR = 24      -- bar width in characters

--- "1.5 GiB", "512 B".
function progress.bytes(n)
  local units, i = { "B", "KiB", "MiB", "GiB", "TiB" }, 1
  while n >= 1024 and i < #units do n, i = n / 1024, i + 1 end
  return i == 1 and ("%d B"):format(n) or ("%.1f %s"):format(n, units[i])
end

--- "1:05:09", "4:07" (h:mm:ss or m:ss).
function progress.duration(s)
  s = math.floor(s + 0.5)
  local h, m = s // 3600, s % 3600 // 60
  if h > 0 then return ("%d:%02d:%02d"):format(h, m, s % 60) end
  return ("%d:%02d"):format(m, s % 60)
end

-- A job's members are the peer's: a count that is not a non-negative
-- number counts as 0; a text, number or boolean is quoted to one plain
-- line, anything else shows as "?".
local function count(v)
  return type(v) == "number" and v >= 0 and v < math.huge and v or 0
end

local SHOWN = { string = true, number = true, boolean = true }
local function text(v, max)
  return SHOWN[type(v)] and quote(v, max or 64) or "?"
end

local function amounts(job)
  local cur, total = count(job["current-progress"]), count(job["total-progress"])
  return cur, total, total > 0 and math.min(100, cur * 100 / total) or nil
end

--- One line about a job: "job0  stream  running  45.0%  450.0 MiB of 1.0 GiB".
function progress.line(job)
  local cur, total, pct = amounts(job)
  local line = ("%s  %s  %s"):format(text(job.id), text(job.type), text(job.status))
  if pct then line = line .. ("  %.1f%%  %s of %s"):format(pct, progress.bytes(cur), progress.bytes(total)) end
  if job.error ~= nil then line = line .. "  error: " .. text(job.error, 200) end
  return line
end

local Meter = {}
Meter.__index = Meter

--- A meter writing to out; tty: redraw one line in place.
function progress.new(out, tty)
  return setmetatable({ out = out, tty = tty, samples = {}, printed = -math.huge, status = nil }, Meter)
end

-- Bytes per second over the last WINDOW seconds, or nil.
function Meter:rate(now, cur)
  local samples = self.samples
  samples[#samples + 1] = { now, cur }
  while #samples > 2 and now - samples[1][1] > WINDOW do table.remove(samples, 1) end
  local t0, c0 = samples[1][1], samples[1][2]
  if now - t0 < 0.2 then return nil end
  return (cur - c0) / (now - t0)
end

--- Show the job's state now.
function Meter:update(job)
  local now = monotime()
  local cur, total, pct = amounts(job)
  local rate = self:rate(now, cur)
  local parts = { text(job.id) }
  if pct then
    if self.tty then
      local fill = math.floor(pct / 100 * BAR + 0.5)
      parts[#parts + 1] = "[" .. ("#"):rep(fill) .. ("."):rep(BAR - fill) .. "]"
    end
    parts[#parts + 1] = ("%5.1f%%"):format(pct)
    parts[#parts + 1] = progress.bytes(cur) .. " / " .. progress.bytes(total)
  end
  if rate and rate > 0 then
    parts[#parts + 1] = progress.bytes(rate) .. "/s"
    if pct and total > cur then parts[#parts + 1] = "ETA " .. progress.duration((total - cur) / rate) end
  end
  parts[#parts + 1] = text(job.status)
  local line = table.concat(parts, "  ")
  if self.tty then
    self.out:write("\r", line, "\27[K")
    self.out:flush()
  elseif job.status ~= self.status or now - self.printed >= 1 then
    self.out:write(line, "\n")
    self.out:flush()   -- a pipe (tee, a log) sees each line as it happens
    self.printed = now
  end
  self.status = job.status
end

--- The end: a last line with the outcome (job: its final state, or nil).
function Meter:finish(job)
  if self.tty and self.status then self.out:write("\n") end
  if job then self.out:write(progress.line(job), "\n") end
  self.out:flush()
end

return progress
