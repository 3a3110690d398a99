-- The knobs of the long runs: environment variables that make a run shorter
-- (or longer) than its default, e.g. QMP_LONG_SECONDS=5 make test-long.
local function knob(name, default)
  return tonumber(os.getenv(name)) or default
end

return {
  CYCLES = knob("QMP_LONG_CYCLES", 10000),    -- churn: connect / abrupt-end cycles
  KILLS = knob("QMP_LONG_KILLS", 100),        -- churn: peers, and QEMUs, killed (flat from the 11th)
  RATE = knob("QMP_LONG_RATE", 50000),        -- flood: events per second
  SECONDS = knob("QMP_LONG_SECONDS", 60),     -- flood: how long
  RESTARTS = knob("QMP_LONG_RESTARTS", 100),  -- storm: QEMU a killed and restarted
}
