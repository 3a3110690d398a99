--- What the peer wrote, made safe to show on a terminal.  This is the one
-- place that knows which bytes a terminal would act on; everything else
-- that shows the peer's text (tostring(ev), error messages, reports,
-- qmp-lua's output) goes through it.
--
-- Escaped: the C0 controls (0x00-0x1F: ESC starts a terminal's escape
-- sequences, BEL ends some), DEL (0x7F), the C1 controls U+0080-U+009F
-- (U+009B is CSI, as ESC [ is; in UTF-8 they are C2 80-C2 9F), and every
-- byte that is not part of valid UTF-8 (a terminal reading such bytes as
-- Latin-1 or another 8-bit set sees C1 controls in them).  Shown as
--   \n \t \r \b \f        those five controls
--   \u001b \u007f \u009b  any other control, C0, DEL or C1 (JSON's escape)
--   \xff                  a byte that is not UTF-8 (JSON has none for it)
-- Printable UTF-8 (é, 中) stays as it is.
--
--   text.escape("bad \27[2J")          --> 'bad \u001b[2J'
--   text.escape(hmp_output, "\n\t")    --> lines kept, the rest escaped
--   text.quote('say "hi"\n')           --> '"say \"hi\"\n"'  (a JSON-style string)
local format, concat, utf8len = string.format, table.concat, utf8.len

local text = {}

local CONTROL = "[\0-\31\127]"   -- C0 and DEL
local C1 = "\194[\128-\159]"     -- U+0080..U+009F in UTF-8
local UNSAFE = "[\0-\31\127-\255]"   -- a byte that may need a look

local SHORT = { ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

-- How one control character (a byte, or C2 xx for a C1 control) is shown.
local function shown(c)
  if #c == 2 then return format("\\u%04x", c:byte(2)) end
  return SHORT[c] or format("\\u%04x", c:byte())
end

-- s with each control character replaced by control(c), and each byte
-- that is not UTF-8 by \xNN.  Linear: each stretch of valid UTF-8 is
-- found once by utf8.len, which stops at the first byte that is not.
local function escape_with(s, control)
  if not s:find(UNSAFE) then return s end   -- printable ASCII: the usual case
  local out, i, n = {}, 1, #s
  while i <= n do
    local valid, bad = utf8len(s, i)
    local run = s:sub(i, valid and n or bad - 1)
    out[#out + 1] = run:gsub(CONTROL, control):gsub(C1, control)
    if valid then break end
    out[#out + 1] = format("\\x%02x", s:byte(bad))
    i = bad + 1
  end
  return concat(out)
end

--- s with every byte a terminal would act on escaped (see the header).
-- keep (optional): C0 controls to leave as they are, e.g. "\n\t" for a
-- text of several lines; without it the result is one line.  A backslash
-- stays a backslash: this is for people to read, not to parse back.
function text.escape(s, keep)
  if keep == nil then return escape_with(s, shown) end
  return escape_with(s, function(c)
    if #c == 1 and keep:find(c, 1, true) then return c end
    return shown(c)
  end)
end

--- s as a JSON-style string for people to read: in double quotes, `"` and
-- `\` escaped, then escaped as text.escape does.  Reads back with a JSON
-- parser when s is UTF-8 (\xNN is not JSON: there is no JSON for such bytes).
function text.quote(s)
  return '"' .. escape_with((s:gsub('["\\]', "\\%0")), shown) .. '"'
end

--- A JSON text as qmp.encode writes it, safe for a terminal and still the
-- same JSON: the encoder escapes C0 controls in strings but writes DEL and
-- C1 controls as they are, which this writes as \u007f and \u0080-\u009f.
-- Its line ends (pretty = true) stay.
function text.json(json)
  return text.escape(json, "\n")
end

--- true when s holds nothing text.escape would change.
function text.is_safe(s)
  return escape_with(s, shown) == s
end

--- The longest start of escaped (text.escape's or text.quote's result)
-- that is at most max bytes and ends neither inside a UTF-8 character nor
-- inside an escape.
function text.cut(escaped, max)
  if #escaped <= max then return escaped end
  local p = max
  while p > 0 and escaped:byte(p + 1) >= 0x80 and escaped:byte(p + 1) < 0xC0 do p = p - 1 end
  -- A backslash in the last 5 bytes may start an escape that goes past p.
  local from = math.max(1, p - 4)
  local at = escaped:sub(from, p):match(".*()\\")
  if at then
    at = from + at - 1
    local long = escaped:match("^\\u%x%x%x%x", at) or escaped:match("^\\x%x%x", at) or escaped:sub(at, at + 1)
    if at + #long - 1 > p then p = at - 1 end
  end
  return escaped:sub(1, p)
end

return text
