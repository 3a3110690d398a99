--- Reconnecting a Client whose connection was lost (opts.reconnect).
-- On EOF or a broken stream the client queues a synthetic "qmp.disconnected"
-- event, then retries from its loop (run, step, wait, qmp.loop) with capped
-- exponential back-off and jitter.  Once connected and negotiated again it
-- asks query-status, since events sent while the link was down are lost for
-- good, and queues "qmp.reconnected".  Synthetic names are lower case and
-- dotted, so they can never collide with QEMU's.
local core = require "qmp.core"
local errors = require "qmp.errors"
local address = require "qmp.address"

local monotime, min, random, floor = core.monotime, math.min, math.random, math.floor

return function(Client)
  --- Validate opts.reconnect: nil, or { min = seconds, max = seconds }.
  function Client._check_reconnect(r)
    if r == nil or r == false then return nil end
    if r == true then r = {} end
    if type(r) ~= "table" then error("qmp.connect: reconnect must be a table { min =, max = }", 5) end
    local lo, hi = r.min or 0.1, r.max or 30
    if type(lo) ~= "number" or type(hi) ~= "number" or lo <= 0 or hi < lo then
      error("qmp.connect: reconnect needs 0 < min <= max (seconds)", 5)
    end
    return { min = lo, max = hi }
  end

  -- Queue an event made by the client itself.
  function Client:_synthetic(name, data)
    local t = monotime()
    local now = os.time()
    local ev = { event = name, data = data,
                 timestamp = { seconds = now, microseconds = floor((t % 1) * 1e6) } }
    self:_enqueue(setmetatable(ev, core.events[name]), true)
  end

  function Client:_schedule_reconnect()
    local r = self._reconnect
    local delay = min(r.max, r.min * 2 ^ self._attempts)
    delay = delay * (0.5 + random() * 0.5)  -- jitter: a fleet must not retry in lockstep
    self._reconnect_timer = self:after(delay, function() self:_try_reconnect() end)
  end

  -- Called by _lost when reconnect is on.
  function Client:_start_reconnect(err)
    self.conn:close()
    self._attempts = 0
    self:_synthetic("qmp.disconnected", { generation = self.generation, kind = err.kind,
                                          reason = err.message })
    self:_schedule_reconnect()
  end

  function Client:_try_reconnect()
    self._reconnect_timer = nil
    self._attempts = self._attempts + 1
    local conn, err = address.open(self._address, self.default_timeout, self._opts)
    if conn then
      self.conn, self._closed, self.greeting = conn, nil, nil
      self._reconnecting = true  -- a failure now must not start a second cycle
      local ok
      if self._opts.expect_uid ~= nil then ok, err = self:_check_peer(self._opts.expect_uid) else ok = true end
      if ok then ok, err = self:_handshake(monotime() + self.default_timeout, self._opts.negotiate ~= false) end
      self._schema = nil  -- the new QEMU may be another version
      if ok and self._validating then ok, err = self:schema() end
      local st
      if ok then  -- what changed while the link was down
        st, err = self:execute("query-status")
        if not st and self._closed then ok = false end
      end
      self._reconnecting = false
      if ok then
        self.generation = self.generation + 1
        self:_synthetic("qmp.reconnected", {
          generation = self.generation, attempts = self._attempts,
          status = st and st.status, running = st and st.running,
        })
        return
      end
      conn:close()
      self._closed = errors.new("closed", "reconnect failed: " .. tostring(err), { cause = err })
    end
    self:_schedule_reconnect()
  end

  --- true while the client waits to reconnect.
  function Client:reconnecting()
    return self._reconnect_timer ~= nil
  end
end
