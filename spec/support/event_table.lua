-- The table of event types in docs/events.md, generated from the catalogue
-- (lua/qmp/catalogue.lua), so the two cannot disagree: spec/catalogue_spec.lua
-- checks that docs/events.md holds exactly this text between its markers.
--
--   lua5.4 spec/support/event_table.lua                          print the table
--   lua5.4 spec/support/event_table.lua --update docs/events.md  rewrite the block
--
-- As a module (require "support.event_table"): render() and the markers.
package.path = "./lua/?.lua;" .. package.path

local M = {
  BEGIN = "<!-- events:begin -->",
  END = "<!-- events:end -->",
}

local function throttle_note(e)
  if not e.throttled then return "" end
  local t, notes = e.throttle or {}, {}
  if t.since then notes[#notes + 1] = "since " .. t.since end
  if t.key then notes[#notes + 1] = "per " .. t.key end
  for k, v in pairs(t.unless or {}) do notes[#notes + 1] = "not when " .. k .. "=" .. tostring(v) end
  return #notes > 0 and ("yes (" .. table.concat(notes, ", ") .. ")") or "yes"
end

--- The table as Markdown, one row per catalogue entry, sorted by name.
function M.render()
  local list = {}
  for _, e in ipairs(require "qmp.catalogue") do list[#list + 1] = e end
  table.sort(list, function(a, b) return a.name < b.name end)
  local out = {
    "| Event | Since | Rate-limited | Meaning |",
    "|---|---|---|---|",
  }
  for _, e in ipairs(list) do
    local since = e.since .. (e.removed and (", removed in " .. e.removed) or "")
    out[#out + 1] = ("| `%s` | %s | %s | %s |"):format(e.name, since, throttle_note(e), e.doc:gsub("|", "\\|"))
  end
  return table.concat(out, "\n") .. "\n"
end

--- text with the block between the markers replaced by render().
function M.splice(text)
  local b = text:find(M.BEGIN, 1, true)
  local e = text:find(M.END, 1, true)
  if not b or not e or e < b then return nil, "markers not found" end
  local head = text:sub(1, b + #M.BEGIN - 1)
  return head .. "\n" .. M.render() .. text:sub(e)
end

--- The block currently between the markers of text (nil without markers).
function M.block(text)
  local b = text:find(M.BEGIN, 1, true)
  local e = text:find(M.END, 1, true)
  if not b or not e or e < b then return nil end
  return text:sub(b + #M.BEGIN + 1, e - 1)
end

if ... ~= "support.event_table" then
  local args = { ... }
  if args[1] == "--update" then
    local path = assert(args[2], "usage: event_table.lua --update docs/events.md")
    local f = assert(io.open(path, "rb"))
    local text = f:read("a")
    f:close()
    local new = assert(M.splice(text))
    if new ~= text then
      f = assert(io.open(path, "wb"))
      f:write(new)
      f:close()
    end
  else
    io.write(M.render())
  end
end

return M
