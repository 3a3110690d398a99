-- Run a spec under a locale whose decimal point is a comma (make test builds
-- de_DE.UTF-8 for this).  Returns false when none exists; the caller then
-- marks the test pending.  The previous numeric locale comes back in finally.
return function(finally)
  local saved = os.setlocale(nil, "numeric")
  local locale = os.setlocale("de_DE.UTF-8", "numeric") or os.setlocale("fr_FR.UTF-8", "numeric")
    or os.setlocale("de_DE.utf8", "numeric") or os.setlocale("fr_FR.utf8", "numeric")
  finally(function() os.setlocale(saved, "numeric") end)
  return locale ~= nil
end
