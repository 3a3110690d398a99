-- busted output handler: the standard utfTerminal report, followed by one
-- last line "N passed, M failed[, K skipped]" that scripts can rely on.
-- Failed counts failures and errors; skipped is the pending count.
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.utfTerminal")(options)

  local function summary()
    local line = string.format("%d passed, %d failed", handler.successesCount,
      handler.failuresCount + handler.errorsCount)
    if handler.pendingsCount > 0 then
      line = line .. string.format(", %d skipped", handler.pendingsCount)
    end
    io.write(line, "\n")
    io.flush()
    return nil, true
  end

  -- Subscribed after utfTerminal did, so this runs after its report.
  busted.subscribe({ "suite", "end" }, summary)

  return handler
end
