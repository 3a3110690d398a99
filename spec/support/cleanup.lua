-- Per-test cleanups, run newest first after each test. busted keeps only one
-- finally() per test, so specs that create several resources register here.
--   local cleanup = require("support.cleanup")(after_each)  -- busted's hook, from the spec file
--   cleanup(function() srv:stop() end)
return function(after_each)
  local list = {}
  after_each(function()
    local pending = list
    list = {}
    for i = #pending, 1, -1 do pending[i]() end
  end)
  return function(fn) list[#list + 1] = fn end
end
