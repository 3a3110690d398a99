-- Scripted fake QMP server, run as its own process by support/fake_qmp.lua.
--   lua5.4 fake_qmp_server.lua <socket> <steps file> <received file> <status file> [watchdog]
-- Accepts one connection, plays the steps (see fake_qmp.lua), then exits.
-- Progress goes to stdout (the spawner's log file). Exit status: 0 when the
-- steps completed, 1 on unexpected input, 2 when the watchdog fired.
local socket = require "socket"
local unix = require "socket.unix"

-- Share the protocol texts with the spawner module.
local spec_dir = arg[0]:match("^(.*)/support/[^/]*$") or "spec"
package.path = spec_dir .. "/?.lua;" .. package.path
local fake = require "support.fake_qmp"

local path, steps_file, received_file, status_file = arg[1], arg[2], arg[3], arg[4]
local steps = dofile(steps_file)

-- Nothing may hang forever: every blocking call is bounded by this.
local WATCHDOG = tonumber(arg[5]) or 60
local started = socket.gettime()
local deadline = started + WATCHDOG

local master, conn

local function log(fmt, ...)
  io.stdout:write(string.format("[fake_qmp +%.3fs] " .. fmt .. "\n", socket.gettime() - started, ...))
  io.stdout:flush()
end

local function finish(status)
  if conn then conn:close() end
  if master then master:close() end
  os.remove(path)
  local f = io.open(status_file, "w")
  if f then f:write(status, "\n") f:close() end
  log("exit %d", status)
  os.exit(status)
end

local function fail(status, fmt, ...)
  log(fmt, ...)
  finish(status)
end

local function remaining()
  local left = deadline - socket.gettime()
  if left <= 0 then fail(2, "watchdog: gave up after %g s", WATCHDOG) end
  return left
end

-- Raw text of the JSON value starting at s[i], and the index after it.
-- Only as much JSON as needed to find a command's top-level members.
local function scan_value(s, i)
  local c = s:sub(i, i)
  if c == '"' then
    local j = i + 1
    while true do
      local k = s:find('["\\]', j)
      if not k then return nil end
      if s:sub(k, k) == "\\" then j = k + 2 else return s:sub(i, k), k + 1 end
    end
  elseif c == "{" or c == "[" then
    local depth, j = 0, i
    while j <= #s do
      local ch = s:sub(j, j)
      if ch == '"' then
        local _, after = scan_value(s, j)
        if not after then return nil end
        j = after
      else
        if ch == "{" or ch == "[" then
          depth = depth + 1
        elseif ch == "}" or ch == "]" then
          depth = depth - 1
          if depth == 0 then return s:sub(i, j), j + 1 end
        end
        j = j + 1
      end
    end
    return nil
  end
  local literal = s:match("^[%w%.%+%-]+", i)
  if literal then return literal, i + #literal end
end

-- Top-level members of a JSON object: name -> raw value text. Top-level
-- only, so an "id" inside "arguments" is not mistaken for the command id.
local function members(line)
  local out = {}
  local i = line:match("^%s*{()")
  while i do
    i = line:match("^%s*()", i)
    local key, after = scan_value(line, i)
    if not key or key:sub(1, 1) ~= '"' then break end
    i = line:match("^%s*:%s*()", after)
    if not i then break end
    local value
    value, after = scan_value(line, i)
    if not value then break end
    out[key:sub(2, -2)] = value
    i = line:match("^%s*,()", after)
  end
  return out
end

-- Substitute %ID with the id of the last command. A command without an id
-- gets a reply without one, as QEMU does. %ID:name is the id an expect step
-- with save = "name" read, for replies out of order.
local last_id
local saved = {}
local function with_id(text)
  text = text:gsub("%%ID:([%w_]+)", function(name)
    if saved[name] == nil then fail(1, "no command id saved as %q", name) end
    return saved[name]
  end)
  if not last_id then
    text = text:gsub(',%s*"id"%s*:%s*%%ID', "")
  end
  return (text:gsub("%%ID", function() return last_id or "null" end))
end

local function need_conn(what)
  if not conn then fail(1, "%s: no client connection", what) end
end

local function send(data, chunk)
  need_conn("send")
  chunk = chunk or #data
  for i = 1, #data, chunk do
    conn:settimeout(remaining())
    local ok, err = conn:send(data:sub(i, i + chunk - 1))
    -- A client that went away is a legitimate test scenario: note it, go on.
    if not ok then log("send failed: %s", err) return end
    if chunk < #data then socket.sleep(0.001) end
  end
  log("sent %d bytes%s", #data, chunk < #data and (" in chunks of " .. chunk) or "")
end

local function accept()
  if conn then conn:close() end
  master:settimeout(remaining())
  local c, err = master:accept()
  if not c then fail(2, "accept failed: %s", err) end
  conn = c
  log("client connected")
end

-- Read and discard until EOF or `seconds` pass; true on EOF.
local function drain(seconds)
  local stop = socket.gettime() + seconds
  while true do
    local left = math.min(stop - socket.gettime(), remaining())
    if left <= 0 then return false end
    conn:settimeout(math.min(left, 0.1))
    local data, err, partial = conn:receive(4096)
    local got = data or partial or ""
    if #got > 0 then log("discarded %d bytes", #got) end
    if err == "closed" then return true end
  end
end

local function expect(step)
  need_conn("expect")
  conn:settimeout(remaining())
  local line, err = conn:receive("*l")
  if not line then
    if err == "timeout" then fail(2, "watchdog: no command within %g s", WATCHDOG) end
    fail(1, "expected %s, but reading failed: %s", step.expect, err)
  end
  log("received %s", line)
  local f = assert(io.open(received_file, "a"))
  f:write(line, "\n")
  f:close()

  local m = members(line)
  local name = (m.execute or m["exec-oob"] or ""):match('^"(.*)"$')
  if step.expect ~= "*" and name ~= step.expect then
    fail(1, "expected command %s, got %s", step.expect, tostring(name))
  end
  if step.expect_args and not line:match(step.expect_args) then
    fail(1, "command %s does not match %s", line, step.expect_args)
  end
  last_id = m.id
  if step.save then saved[step.save] = m.id or "null" end
  if step.reply then send(with_id(step.reply) .. "\r\n") end
end

-- One event line stamped with the wall clock (seconds, microseconds).
local function stamped_event(name, data_json, now)
  local sec = math.floor(now)
  return string.format('{"event": "%s"%s, "timestamp": {"seconds": %d, "microseconds": %d}}\r\n',
    name, data_json and (', "data": ' .. data_json) or "", sec, math.floor((now - sec) * 1e6))
end

-- { flood = { count = n, seconds = s, name = "EV%d", data = "json" } }:
-- events as fast as the client takes them, until count are sent or s
-- seconds pass (at least one bound).  A %d in name is the event's number
-- (1, 2, ...): distinct names; data (raw JSON text, optional) is each
-- event's "data", a %d in it the event's number too.  Sent in batches, so
-- 200,000 events take well under a second.
local function flood(step)
  need_conn("flood")
  local f = step.flood
  local count, stop = f.count or math.huge, f.seconds and socket.gettime() + f.seconds or math.huge
  local name = f.name or "RTC_CHANGE"
  local data = f.data and (', "data": ' .. f.data) or ""
  local text = '{"event": "' .. name .. '"' .. data ..
               ', "timestamp": {"seconds": 1700000000, "microseconds": 1234}}\r\n'
  local pieces = {}   -- the text cut at each %d: event k is table.concat(pieces, k)
  for piece in (text .. "%d"):gmatch("(.-)%%d") do pieces[#pieces + 1] = piece end
  local numbered = #pieces > 1
  local function line(k) return table.concat(pieces, tostring(k)) end
  local fixed
  if not numbered then fixed = line(0):rep(1000) end
  local sent, bytes = 0, 0
  while sent < count do
    local left = math.min(stop - socket.gettime(), remaining())
    if left <= 0 then break end
    local n = math.min(1000, count - sent)
    local chunk
    if numbered then
      local parts = {}
      for i = 1, n do parts[i] = line(sent + i) end
      chunk = table.concat(parts)
    elseif n == 1000 then
      chunk = fixed
    else
      chunk = fixed:sub(1, #fixed // 1000 * n)
    end
    conn:settimeout(left)
    local ok, err = conn:send(chunk)
    if not ok then log("flood: send stopped: %s", err) break end
    sent, bytes = sent + n, bytes + #chunk
  end
  log("flood: sent %d events (%d bytes)", sent, bytes)
end

-- { ticks = { count = n, every = s, name = "RTC_CHANGE" } }: n events, one
-- every s seconds, each stamped with the wall clock when it was sent and
-- carrying data {"offset": i}: the client can measure its delivery delay.
local function ticks(step)
  need_conn("ticks")
  local t = step.ticks
  for i = 1, t.count do
    socket.sleep(t.every or 0.02)
    conn:settimeout(remaining())
    local ok, err = conn:send(stamped_event(t.name or "RTC_CHANGE", '{"offset": ' .. i .. '}', socket.gettime()))
    if not ok then log("ticks: send failed after %d: %s", i - 1, err) return end
  end
  log("ticks: sent %d events", t.count)
end

-- { stream = { head = "text", unit = "text", count = n, tail = "text" } }:
-- head, then unit count times, then tail, as fast as the client takes them
-- (head and tail as for send: %ID).  A %d in unit is the copy's number (1,
-- 2, ...); without one, a fixed buffer of copies is sent again and again, so
-- a gigabyte costs no more memory than 1 MiB.  Stops early, logging it, when
-- the client goes away.
local function stream(step)
  need_conn("stream")
  local s = step.stream
  local unit, count = s.unit or " ", s.count or 0
  local numbered = unit:find("%d", 1, true) ~= nil
  local per = math.max(1, (1 << 20) // #unit)   -- copies per send: about 1 MiB
  local fixed = not numbered and unit:rep(math.min(per, count)) or nil
  local sent, bytes = 0, 0
  local function put(data)
    conn:settimeout(remaining())
    local ok, err = conn:send(data)
    if not ok then log("stream: send stopped after %d bytes: %s", bytes, err) return false end
    bytes = bytes + #data
    return true
  end
  if s.head and not put(with_id(s.head)) then return end
  while sent < count do
    local n = math.min(per, count - sent)
    local data
    if numbered then
      local parts = {}
      for i = 1, n do parts[i] = unit:format(sent + i) end
      data = table.concat(parts)
    elseif n == per then
      data = fixed
    else
      data = unit:rep(n)
    end
    if not put(data) then return end
    sent = sent + n
  end
  if s.tail and not put(with_id(s.tail)) then return end
  log("stream: sent %d bytes", bytes)
end

local actions = {
  flood = flood,
  stream = stream,
  ticks = ticks,
  greet = function(step)
    local caps = type(step.greet) == "table" and step.greet.capabilities or nil
    send(fake.greeting_with(caps))
  end,
  send = function(step) send(with_id(step.send), step.chunk) end,
  expect = expect,
  sleep = function(step) socket.sleep(step.sleep) end,
  wait_for = function(step)
    -- Polled: the spec's word is a file beside the steps file (Server:tell).
    local told, limit = steps_file:match("^(.*)/") .. "/told-" .. step.wait_for, socket.gettime() + 30
    while not os.rename(told, told) do
      if socket.gettime() > limit then fail(1, "wait_for: not told %q within 30 s", step.wait_for) end
      remaining()
      socket.sleep(0.005)
    end
    log("told %s", step.wait_for)
  end,
  close = function()
    need_conn("close")
    conn:close()
    conn = nil
    log("closed connection")
  end,
  wait_close = function()
    need_conn("wait_close")
    if not drain(30) then fail(1, "wait_close: client did not close within 30 s") end
    log("client closed")
  end,
  hold = function(step)
    need_conn("hold")
    log("hold: %s", drain(step.hold) and "client closed" or "time is up")
  end,
  accept = accept,
  shutdown_write = function()
    need_conn("shutdown_write")
    conn:shutdown("send")
    log("shut down the sending side")
  end,
}
local order = { "greet", "send", "expect", "sleep", "wait_for", "close", "wait_close", "hold", "accept",
  "shutdown_write", "flood", "ticks", "stream" }

master = assert(unix.stream())
assert(master:bind(path))
assert(master:listen(4))
log("listening on %s", path)
accept()

for n, step in ipairs(steps) do
  local done = false
  for _, kind in ipairs(order) do
    if step[kind] ~= nil then
      actions[kind](step)
      done = true
      break
    end
  end
  if not done then fail(1, "step %d: unknown step", n) end
end
log("all %d steps done", #steps)
finish(0)
