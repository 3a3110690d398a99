-- Loaded by busted before the specs (see .busted).
local busted = require "busted"

-- Make "support.*" and the library loadable even when busted is started
-- without the lpath/cpath from .busted.
package.path = "./spec/?.lua;./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

-- Upper bound, in seconds, for anything a spec waits on.
TEST_TIMEOUT = 10

-- Safety net: no fake server or QEMU outlives its spec file, even when a
-- spec's own cleanup did not run (busted keeps only the last `finally`
-- registered in a test).
busted.subscribe({ "file", "end" }, function()
  for _, name in ipairs({ "support.fake_qmp", "support.qemu" }) do
    local mod = package.loaded[name]
    if mod then mod.stop_all() end
  end
  return nil, true
end)
