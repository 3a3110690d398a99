-- Terminal safety: what the peer wrote reaches no terminal raw.  A fake
-- peer sends a screen clear (ESC [2J), a title change (ESC ]0;x BEL), the
-- C1 control CSI (U+009B), DEL and bytes that are not UTF-8 in every place
-- a person reads: an error reply's class and text, an event's name and
-- data, a schema's names and enum values, HMP's output.  Each path is
-- checked for those bytes, and for their escaped form (qmp.text).
local qmp = require "qmp"
local text = require "qmp.text"
local schema = require "qmp.schema"
local help = require "qmp.cli.help"
local complete = require "qmp.cli.complete"
local Shell = require("qmp.cli.shell").Shell
local fake = require "support.fake_qmp"

local cleanup = require("support.cleanup")(after_each)
local runner = require("support.qmp_lua").new("terminal", cleanup)
local qmp_lua = runner.run

teardown(runner.remove)

-- {==================== the peer's text

-- What the peer's string holds once decoded: every kind of dangerous byte,
-- and printable UTF-8 that must stay as it is.
local HOSTILE = "bad \27[2J\27]0;x\7 csi\u{9b}31m del\127 raw\xff\xfe é 中"

-- The same as a JSON string on the wire: controls as QEMU escapes them,
-- the bytes that are not UTF-8 raw (the decoder passes them through).
local HOSTILE_JSON = '"bad \\u001b[2J\\u001b]0;x\\u0007 csi\\u009b31m del\\u007f raw\xff\xfe é 中"'

-- The same without the bytes that are not UTF-8 (qmp.encode refuses them).
local HOSTILE_UTF8 = "bad \27[2J\27]0;x\7 csi\u{9b}31m del\127 é 中"
local HOSTILE_UTF8_JSON = '"bad \\u001b[2J\\u001b]0;x\\u0007 csi\\u009b31m del\\u007f é 中"'

-- How each dangerous piece shows once escaped (the same in plain text and
-- in a JSON-style string: HOSTILE holds no quote and no backslash).
local ESCAPED = { "bad \\u001b[2J\\u001b]0;x\\u0007", "csi\\u009b31m", "del\\u007f", "é 中" }
local ESCAPED_RAW = "raw\\xff\\xfe"

-- out holds none of the bytes a terminal acts on: ESC, BEL, DEL, a C1
-- control, a byte that is not UTF-8.
local function assert_safe(out, what)
  local shown = ("%q"):format(out)
  assert.falsy(out:find("\27", 1, true), what .. ": ESC reached the output: " .. shown)
  assert.falsy(out:find("\7", 1, true), what .. ": BEL reached the output: " .. shown)
  assert.falsy(out:find("\127", 1, true), what .. ": DEL reached the output: " .. shown)
  assert.falsy(out:find("\194[\128-\159]"), what .. ": a C1 control reached the output: " .. shown)
  assert.truthy(utf8.len(out), what .. ": bytes that are not UTF-8 reached the output: " .. shown)
end

-- out is safe and shows the peer's text escaped (raw: the invalid bytes too).
local function assert_escaped(out, what, raw)
  assert_safe(out, what)
  for _, piece in ipairs(ESCAPED) do
    assert.truthy(out:find(piece, 1, true), ("%s: %q not in %q"):format(what, piece, out))
  end
  if raw ~= false then
    assert.truthy(out:find(ESCAPED_RAW, 1, true), ("%s: %q not in %q"):format(what, ESCAPED_RAW, out))
  end
end

local function error_reply(class_json, desc_json)
  return '{"error": {"class": ' .. class_json .. ', "desc": ' .. desc_json .. '}, "id": %ID}'
end

-- A client on a fake peer that plays steps after the opening.
local function client(steps)
  local srv = fake.serve(fake.opening(steps), cleanup)
  local vm = assert(qmp.connect(srv.path, { timeout = 5 }))
  cleanup(function() vm:close() end)
  return vm, srv
end

-- An event from the peer, decoded as a client decodes it.
local function hostile_event()
  return assert(qmp.decode('{"event": ' .. HOSTILE_JSON .. ', "data": {"device": ' .. HOSTILE_JSON
    .. ', ' .. HOSTILE_JSON .. ': 1, "nested": {"k": ' .. HOSTILE_UTF8_JSON .. '}},'
    .. ' "timestamp": {"seconds": 1700000000, "microseconds": 1234}}'))
end

-- A schema whose names and values are the peer's: a command named with an
-- ESC, and set-mode whose member names and enum values hold the rest.
local EVIL_COMMAND = "ev\27l"
local function hostile_schema()
  return schema.parse({
    { name = "stop", ["meta-type"] = "command", ["arg-type"] = "0", ["ret-type"] = "0" },
    { name = "set-mode", ["meta-type"] = "command", ["arg-type"] = "1", ["ret-type"] = "0" },
    { name = EVIL_COMMAND, ["meta-type"] = "command", ["arg-type"] = "0", ["ret-type"] = "0" },
    { name = "0", ["meta-type"] = "object", members = {} },
    { name = "1", ["meta-type"] = "object", members = {
        { name = "level", type = "2" }, { name = "le\127vel", type = "str" } } },
    { name = "2", ["meta-type"] = "enum", values = { "low", HOSTILE, "lo\u{9b}w", "lo\xffw", "lo\27]0;x\7" } },
    { name = "str", ["meta-type"] = "builtin", ["json-type"] = "string" },
  })
end

-- A shell on vm whose output the spec reads.
local function shell_on(vm, s)
  local out = {}
  local sh = Shell.new(vm, s, function(piece) out[#out + 1] = piece end)
  return sh, function() return table.concat(out) end
end

-- }====================

describe("qmp.text, the one escaping function", function()
  it("escapes C0 controls, DEL, C1 controls and bytes that are not UTF-8, and keeps printable UTF-8", function()
    assert.equal("bad \\u001b[2J\\u001b]0;x\\u0007 csi\\u009b31m del\\u007f raw\\xff\\xfe é 中", text.escape(HOSTILE))
    assert.equal("a\\nb\\tc\\r\\u0000", text.escape("a\nb\tc\r\0"))
    assert.equal("\\u0080\\u009f\u{a0}", text.escape("\u{80}\u{9f}\u{a0}"))
    assert.equal("\\xc0\\x80 \\xed\\xa0\\x80 \\xc2", text.escape("\xc0\x80 \xed\xa0\x80 \xc2"))   -- overlong, surrogate, cut
    assert.equal("back\\slash", text.escape("back\\slash"))
  end)

  it("keeps the controls it is told to (the lines of HMP's text)", function()
    assert.equal("a\nb\tc\\u001b", text.escape("a\nb\tc\27", "\n\t"))
  end)

  it("quotes as a JSON-style string, and JSON from qmp.encode stays the same JSON", function()
    assert.equal('"say \\"hi\\" \\\\ \\u001b\\u009b\\xff"', text.quote('say "hi" \\ \27\u{9b}\xff'))
    local json = qmp.encode({ s = HOSTILE_UTF8 })
    local safe = text.json(json)
    assert_safe(safe, "text.json")
    assert.same({ s = HOSTILE_UTF8 }, qmp.decode(safe))
  end)

  it("tells a safe word from one it would change", function()
    assert.is_true(text.is_safe("query-status é 中"))
    for _, bad in ipairs({ "a\27", "a\7", "a\127", "a\u{9b}", "a\xff", "a\n" }) do
      assert.is_false(text.is_safe(bad), bad)
    end
  end)

  it("is what qmp.errors.quote cuts: never inside a character or an escape", function()
    local quoted = qmp.errors.quote(HOSTILE, 200)
    assert.equal(text.escape(HOSTILE), quoted)
    for max = 3, #quoted + 3 do
      local cut = qmp.errors.quote("ab\27cé\xffd" .. HOSTILE, max)
      assert.is_true(#cut <= max, cut)
      assert_safe(cut, "quote " .. max)
      local body = cut:gsub("%.%.%.$", "")
      assert.truthy(text.escape("ab\27cé\xffd" .. HOSTILE):sub(1, #body) == body, cut)
      assert.falsy(body:find("\\u%x?%x?%x?$") or body:find("\\x%x?$") or body:find("\\$"), cut)
    end
  end)
end)

describe("the library", function()
  it("tostring(err) of an error reply shows the peer's class and text escaped; err.class and err.desc stay", function()
    local vm = client({ { expect = "stop", reply = error_reply(HOSTILE_JSON, HOSTILE_JSON) }, { hold = 5 } })
    local ret, err = vm:execute("stop")
    assert.is_nil(ret)
    assert.equal("qmp", err.kind)
    assert.equal(HOSTILE, err.class)
    assert.equal(HOSTILE, err.desc)
    local line = tostring(err)
    assert.equal("qmp: stop: " .. text.escape(HOSTILE) .. ": " .. text.escape(HOSTILE), line)
    assert_escaped(line, "tostring(err)")
    assert_escaped(err.message, "err.message")
  end)

  it("tostring(ev) shows the event's name, member names and values escaped, nested ones too", function()
    local ev = hostile_event()
    assert.equal(HOSTILE, ev.event)
    local line = tostring(ev)
    assert_escaped(line, "tostring(ev)")
    assert.truthy(line:find('"nested"=', 1, true) or line:find("nested=", 1, true), line)
    assert.falsy(line:find("\n", 1, true), line)
  end)
end)

describe("a did-you-mean", function()
  it("naming an event of the peer's schema shows it escaped", function()
    local live = schema.parse({ { name = "EV\27X", ["meta-type"] = "event" } })
    local why = require("qmp.events").unknown_name("EVX", live)
    assert.truthy(why:find("did you mean EV\\u001bX?", 1, true), why)
    assert_safe(why, "unknown_name")
  end)
end)

describe("the shell", function()
  it("shows an error reply's class and text escaped, on one line", function()
    local vm = client({ { expect = "stop", reply = error_reply(HOSTILE_JSON, HOSTILE_JSON) }, { hold = 5 } })
    local sh, output = shell_on(vm, hostile_schema())
    sh:line("stop")
    local out = output()
    assert.equal("error: " .. text.escape(HOSTILE) .. ": " .. text.escape(HOSTILE) .. "\n", out)
    assert_escaped(out, "shell error")
  end)

  it("shows HMP's output with its lines kept and the rest escaped", function()
    local reply = fake.reply('"line 1\\r\\n' .. HOSTILE_JSON:sub(2, -2) .. '\\r\\n"')
    local vm = client({ { expect = "human-monitor-command", reply = reply }, { hold = 5 } })
    local sh, output = shell_on(vm, hostile_schema())
    sh:line(":hmp info version")
    local out = output()
    assert.equal("line 1\n" .. text.escape(HOSTILE) .. "\n", out)
    assert_escaped(out, ":hmp")
  end)

  it("shows an HMP error reply's text escaped", function()
    local vm = client({ { expect = "human-monitor-command", reply = error_reply('"GenericError"', HOSTILE_JSON) },
                        { hold = 5 } })
    local sh, output = shell_on(vm, hostile_schema())
    sh:line(":hmp info version")
    assert_escaped(output(), ":hmp error")
  end)

  it("shows events, values and Lua errors holding the peer's text escaped", function()
    local vm = client({ { hold = 5 } })
    local sh, output = shell_on(vm, hostile_schema())
    sh:event(hostile_event())
    assert_escaped(output(), "an event line")
    sh.env.x = { [HOSTILE] = HOSTILE }
    sh:line("x")
    assert_escaped(output(), "a value")
    sh:line("error(x[next(x)])")
    assert_escaped(output(), "a Lua error")
  end)

  it(":help shows the schema's names and enum values escaped, and a did-you-mean too", function()
    local vm = client({ { hold = 5 } })
    local s = hostile_schema()
    local sh, output = shell_on(vm, s)
    sh:line(":help set-mode")
    local out = output()
    assert_escaped(out, ":help set-mode")
    for _, piece in ipairs({ "le\\u007fvel: str", "lo\\u009bw", "lo\\xffw", "lo\\u001b]0;x\\u0007" }) do
      assert.truthy(out:find(piece, 1, true), piece .. " not in " .. out)
    end
    assert_escaped(assert(help.topic(s, "set-mode")), "help.topic")
    local _, err = help.topic(s, "evl")
    assert.equal("no command or event evl — did you mean ev\\u001bl?", err.message)
    sh:line(":help evl")
    assert_safe(output(), ":help evl")
  end)
end)

describe("completion", function()
  it("leaves out candidates holding a byte a terminal acts on, and offers the others", function()
    local s = hostile_schema()
    local function candidates(line) return (complete.candidates(s, line)) end
    assert.same({ "set-mode", "stop" }, candidates(""))
    assert.same({ "level=" }, candidates("set-mode le"))
    assert.same({ "level=low" }, candidates("set-mode level="))
    assert.same({}, candidates("ev"))
    assert.same({}, candidates(":help ev"))
  end)
end)

describe("qmp-lua exec and job", function()
  it("exec says an error reply's class and text escaped, on one line, status 1", function()
    local srv = fake.serve(fake.opening({ { expect = "stop", reply = error_reply(HOSTILE_JSON, HOSTILE_JSON) },
                                          { wait_close = true } }), cleanup)
    local out, err, status = qmp_lua("exec", srv.path, "stop")
    assert.equal(1, status, err)
    assert.equal("", out)
    assert.equal("qmp-lua: stop: " .. text.escape(HOSTILE) .. ": " .. text.escape(HOSTILE) .. "\n", err)
    assert_escaped(err, "exec stderr")
  end)

  it("exec prints a result holding the peer's text as the same JSON, escaped", function()
    for _, layout in ipairs({ "--timeout=5", "--pretty" }) do
      local srv = fake.serve(fake.opening({ { expect = "query-x", reply = fake.reply('{"s": ' .. HOSTILE_UTF8_JSON .. '}') },
                                            { wait_close = true } }), cleanup)
      local out, err, status = qmp_lua("exec", layout, srv.path, "query-x")
      assert.equal(0, status, err)
      assert_escaped(out, "exec " .. layout, false)
      assert.same({ s = HOSTILE_UTF8 }, qmp.decode(out))
    end
  end)

  it("job says an error reply's class and text escaped, status 1", function()
    local srv = fake.serve(fake.opening({ { expect = "query-jobs", reply = error_reply(HOSTILE_JSON, HOSTILE_JSON) },
                                          { wait_close = true } }), cleanup)
    local out, err, status = qmp_lua("job", srv.path)
    assert.equal(1, status, err)
    assert.equal("", out)
    assert.equal(1, #runner.lines(err), err)
    assert_escaped(err, "job stderr")
  end)

  it("job lists jobs and says why one failed with the peer's text escaped", function()
    local jobs_json = '[{"id": ' .. HOSTILE_JSON .. ', "type": "stream", "status": "concluded", "error": '
                      .. HOSTILE_JSON .. '}]'
    local srv = fake.serve(fake.opening({ { expect = "query-jobs", reply = fake.reply(jobs_json) },
                                          { wait_close = true } }), cleanup)
    local out, err, status = qmp_lua("job", srv.path)
    assert.equal(0, status, err)
    assert_escaped(out, "job list")

    srv = fake.serve(fake.opening({
      { expect = "query-jobs", reply = fake.reply('[{"id": "j", "type": "stream", "status": "concluded", "error": '
                                                  .. HOSTILE_JSON .. '}]') },
      { hold = 10 } }), cleanup)
    out, err, status = qmp_lua("job", srv.path, "j", "--wait", "--timeout", "5")
    assert.equal(1, status, err)
    assert.equal(1, #runner.lines(err), err)
    assert.matches("^qmp%-lua: job j failed: ", err)
    assert_escaped(err, "job --wait stderr")
    assert_safe(out, "job --wait stdout")
  end)
end)

describe("qmp-lua events", function()
  local function watch(...)
    local event = fake.event(HOSTILE_JSON:sub(2, -2), '{"device": ' .. HOSTILE_JSON .. ', ' .. HOSTILE_JSON
                             .. ': 1, "nested": {"k": ' .. HOSTILE_UTF8_JSON .. '}}')
    local srv = fake.serve(fake.opening({ { send = event }, { hold = 10 } }), cleanup)
    local out, err, status = qmp_lua("events", "--count", "1", "--timeout", "5", srv.path, ...)
    assert.equal(0, status, err)
    return out, err
  end

  it("writes an event's line with its name and data escaped", function()
    local out, err = watch()
    assert.equal(1, #runner.lines(out), out)
    assert_escaped(out, "events line")
    assert_safe(err, "events stderr")
  end)

  it("--pretty writes the name and the data's keys and values escaped", function()
    local out, err = watch("--pretty")
    assert_escaped(out, "events --pretty")
    assert.truthy(out:find('"' .. text.escape(HOSTILE) .. '": 1', 1, true), out)
    assert_safe(err, "events --pretty stderr")
  end)

  it("--json writes the same JSON with DEL and C1 controls escaped too", function()
    local event = fake.event(HOSTILE_UTF8_JSON:sub(2, -2), '{"device": ' .. HOSTILE_UTF8_JSON .. '}')
    local srv = fake.serve(fake.opening({ { send = event }, { hold = 10 } }), cleanup)
    local out, err, status = qmp_lua("events", "--count", "1", "--timeout", "5", "--json", srv.path)
    assert.equal(0, status, err)
    assert_escaped(out, "events --json", false)
    local ev = assert(qmp.decode(out))
    assert.equal(HOSTILE_UTF8, ev.event)
    assert.equal(HOSTILE_UTF8, ev.data.device)
  end)
end)
