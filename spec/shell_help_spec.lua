-- qmp.cli.help: `:help NAME` from the live schema of a real QEMU 7.2 and the catalogue.
local help = require "qmp.cli.help"

local schema_72 = require("support.fixtures").schema_72

local function has(text, piece)
  assert.truthy(text:find(piece, 1, true), ("%q not in:\n%s"):format(piece, text))
end

local function lacks(text, piece)
  assert.falsy(text:find(piece, 1, true), ("%q in:\n%s"):format(piece, text))
end

describe("help.command", function()
  local s = schema_72()

  it("lists the arguments with their types, optional ones marked, and the return type", function()
    assert.equal(table.concat({
      "block-job-cancel",
      "  arguments:",
      "    device: str",
      "    force: bool, optional",
      "  returns: nothing ({})" }, "\n"), assert(help.command(s, "block-job-cancel")))
  end)

  it("resolves masked types to their shape: enum values, object members, arrays, alternates", function()
    local text = assert(help.command(s, "query-status"))
    has(text, "  arguments: none")
    has(text, "  returns: object")
    has(text, "    status: enum")
    has(text, "one of: debug, inmigrate, internal-error, io-error, paused,")

    text = assert(help.command(s, "query-block"))
    has(text, "  returns: array of object\n    device: str\n    qdev: str, optional\n")
    has(text, "    inserted: object, optional\n      file: str\n")
    has(text, "        snapshots: array of object, optional\n          id: str\n")
    has(text, "(the members of inserted.image, again)")  -- ImageInfo holds its backing image: shown once

    text = assert(help.command(s, "blockdev-add driver=qcow2"))
    has(text, "    file: object or str\n")
    has(text, "    overlap-check: object or enum, optional\n      as object:\n        template: enum, optional\n")
    has(text, "      as enum:\n        one of: none, constant, cached, all")
    for line in text:gmatch("[^\n]+") do
      assert.is_true(#line <= 78 or line:find("^%s*%(.* selects more members") ~= nil, line)
    end
  end)

  it("shows a union's members for the branch the words after the name select", function()
    local base = assert(help.command(s, "blockdev-add"))
    has(base, "    driver: enum\n      one of: blkdebug, blklogwrites,")
    has(base, "qcow2")
    has(base, "(driver selects more members: see :help blockdev-add driver=VALUE)")
    lacks(base, "lazy-refcounts")

    local qcow2 = assert(help.command(s, "blockdev-add driver=qcow2"))
    has(qcow2, "    lazy-refcounts: bool, optional\n")
    has(qcow2, "(file.driver selects more members: see :help blockdev-add driver=qcow2 file.driver=VALUE)")

    local file = assert(help.command(s, "blockdev-add driver=qcow2 file.driver=file"))
    has(file, "      filename: str\n")
    has(file, "      aio: enum, optional\n        one of: threads, native, io_uring\n")
    has(file, "      x-check-cache-dropped: bool, optional [unstable]\n")

    has(assert(help.command(s, "blockdev-add driver=nosuch")), "driver=nosuch is none of the cases:")

    -- the elements of an array: transaction's actions
    has(assert(help.command(s, "transaction")),
        "(actions.type selects more members: see :help transaction actions.type=VALUE)")
    local backup = assert(help.command(s, "transaction actions.type=drive-backup"))
    has(backup, "    actions: array of object\n      type: enum\n")
    has(backup, "      data: object\n        job-id: str, optional\n        device: str\n")
  end)

  it("details each type once per page, saying where when it is met again", function()
    local stats = assert(help.command(s, "query-blockstats"))
    has(stats, "      rd_latency_histogram: object, optional\n        boundaries: array of int\n")
    has(stats, "      wr_latency_histogram: object, optional\n        (see stats.rd_latency_histogram above)\n")
    -- a result that holds itself says so, as the result
    has(stats, "    parent: object, optional\n      (the members of the result, again)\n")
    local migrate = assert(help.command(s, "query-migrate"))
    has(migrate, "    disk: object, optional\n      (see ram above)\n")
    -- a long enum once; one that fits on a line each time (a "see" would take a line too)
    has(assert(help.command(s, "query-vnc-servers")), "    vencrypt: enum, optional\n      (see server.vencrypt above)\n")
    has(assert(help.command(s, "drive-mirror")), "    on-source-error: enum, optional\n"
        .. "      one of: report, ignore, enospc, stop, auto\n    on-target-error: enum, optional\n"
        .. "      one of: report, ignore, enospc, stop, auto\n")
    -- what a union's discriminator adds names the key it is at, met again or not
    local create = assert(help.command(s, "blockdev-create options.driver=qcow2"))
    has(create, "      data-file: object or str, optional\n        (see options.file above)\n"
        .. "        (options.data-file.driver selects more members: see :help blockdev-create")
  end)

  it("shows a command's features", function()
    has(assert(help.command(s, "device_add")), "device_add [json-cli, json-cli-hotplug]")
  end)

  it("answers an unknown name with a did-you-mean", function()
    local text, err = help.command(s, "query-bloc")
    assert.is_nil(text)
    assert.equal("usage", err.kind)
    assert.equal("no command query-bloc — did you mean query-block?", err.message)
    assert.equal("query-block", err.suggestion)
  end)
end)

describe("help.event", function()
  local s = schema_72()

  it("shows the catalogue's doc, history and fields, enum values from the live schema", function()
    local text = assert(help.event(s, "BLOCK_IO_ERROR"))
    has(text, "BLOCK_IO_ERROR (event, since 0.13)\n")
    has(text, "  A disk read or write failed; action says whether the VM stopped.\n")
    has(text, "rate-limited (since 9.2): at most one a second per qom-path, not when action=stop")
    has(text, "    device: string — drive name")
    has(text, "    node-name: string, optional, since 2.8 — block node that failed")
    has(text, "    operation: IoOperationType — read or write\n      one of: read, write\n")
    has(text, "    action: BlockErrorAction — ignore, report (to the guest) or stop (the VM is paused)\n"
              .. "      one of: ignore, report, stop\n")
    has(text, "    nospace: bool, optional, since 2.2")
    has(text, "    reason: string, since 2.2")
    -- a member of later QEMUs is marked: this one does not send it
    has(text, "    qom-path: string, since 9.2 (not sent by this QEMU)")
    -- the catalogue's "first" members lead
    assert.is_true(text:find("qom-path:", 1, true) < text:find("device:", 1, true))
  end)

  it("works from the catalogue alone, without a schema", function()
    local text = assert(help.event(nil, "BLOCK_IO_ERROR"))
    has(text, "    action: BlockErrorAction — ignore, report")
    lacks(text, "one of:")
    lacks(text, "not sent by this QEMU")
    has(assert(help.event(nil, "STOP")), "  fields: none")
  end)

  it("says when this QEMU does not have an event", function()
    has(assert(help.event(s, "CPU_POLARIZATION_CHANGE")), "(this QEMU does not have this event)")
  end)

  it("answers an unknown name with a did-you-mean", function()
    local text, err = help.event(s, "BLOCK_IO_EROR")
    assert.is_nil(text)
    assert.equal("usage", err.kind)
    assert.equal("no event BLOCK_IO_EROR — did you mean BLOCK_IO_ERROR?", err.message)
  end)
end)

describe("help.topic", function()
  local s = schema_72()

  it("finds a command or an event, in any case", function()
    has(assert(help.topic(s, "block-job-cancel")), "force: bool, optional")
    has(assert(help.topic(s, "BLOCK_IO_ERROR")), "BLOCK_IO_ERROR (event")
    has(assert(help.topic(s, "block_io_error")), "BLOCK_IO_ERROR (event")
    has(assert(help.topic(s, "blockdev-add driver=raw")), "offset: int, optional")
    local text, err = help.topic(s, "stpo")
    assert.is_nil(text)
    assert.equal("no command or event stpo — did you mean stop?", err.message)
    assert.is_nil((help.topic(s, "  ")))
  end)
end)

-- The schema is the peer's: :help and completion take any, never raising
-- into the shell (completion runs inside readline).  schema.parse leaves out
-- what is malformed, and the walks stop at a type met again inside itself.
describe("help and completion over a malformed schema", function()
  local qmp = require "qmp"
  local complete = require "qmp.cli.complete"
  local BAD = require("qmp.schema").parse(assert(qmp.decode([==[[
    5, {"name": 5}, {"name": "c1", "meta-type": "command", "arg-type": "O", "ret-type": "A", "features": 5},
    {"name": "c2", "meta-type": "command", "arg-type": "P", "ret-type": "L"},
    {"name": "c3", "meta-type": "command", "arg-type": "U", "ret-type": "E"},
    {"name": "STOP", "meta-type": "event", "arg-type": "A"},
    {"name": "A", "meta-type": "alternate", "members": [7, {"type": "A"}, {"type": "L"}]},
    {"name": "L", "meta-type": "array", "element-type": "L"},
    {"name": "O", "meta-type": "object", "members": [5, {"name": 1}, {"name": "m", "type": "E"}],
     "tag": "m", "variants": [3, {"case": "a", "type": "O"}]},
    {"name": "U", "meta-type": "object", "members": [{"name": "u", "type": "U", "features": [{}]}],
     "tag": 5, "variants": 5},
    {"name": "E", "meta-type": "enum", "values": [9, {}]},
    {"name": "P", "meta-type": "object", "members": 5}
  ]]==])))

  it("answers every name and line from what is well formed, and completes it", function()
    for _, name in ipairs({ "c1", "c2", "c3", "STOP" }) do
      for _, line in ipairs({ name, name .. " m=a", name .. " u.u=x", name .. " m=" }) do
        local text = help.topic(BAD, line)
        assert.is_string(text, line)
        for _, typed in ipairs({ line, line .. " ", line .. ".", line:sub(1, 1) }) do
          local list, append = complete.for_readline(BAD, typed, 1, #typed)
          assert.is_table(list, typed)
          assert.is_string(append, typed)
        end
      end
    end
    -- c1: O's one good member, whose enum has no good value; O's variant is O
    -- again; A and L hold themselves.
    assert.equal("c1\n  arguments:\n    m: enum\n    (m selects more members: see :help c1 m=VALUE)\n"
                 .. "  returns: alternate or array of array", help.topic(BAD, "c1"))
    assert.equal("c2\n  arguments: none\n  returns: array of array", help.topic(BAD, "c2"))
    assert.matches("u: object\n      (the members of the arguments, again)", help.topic(BAD, "c3"), 1, true)
    assert.same({ "m=" }, complete.candidates(BAD, "c1 "))
    assert.same({}, complete.candidates(BAD, "c1 m="))
    assert.same({ "u.u." }, complete.candidates(BAD, "c3 u."))
  end)
end)
