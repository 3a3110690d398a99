-- qmp.cli.complete: tab completion from the live schema of a real QEMU 7.2.
local complete = require "qmp.cli.complete"

local schema_72 = require("support.fixtures").schema_72

local function set(list)
  local s = {}
  for _, w in ipairs(list) do s[w] = true end
  return s
end

describe("complete.candidates", function()
  local s = schema_72()

  local function candidates(line)
    local list, start = complete.candidates(s, line)
    -- every candidate replaces the word that ends the line, and extends it
    for _, w in ipairs(list) do
      assert.equal(line:sub(start), w:sub(1, #line - start + 1), w)
    end
    return list, start
  end

  it("completes command names", function()
    assert.same({ "query-block", "query-block-exports", "query-block-jobs", "query-blockstats" },
                (candidates("query-bl")))
    assert.same({ "query-status" }, (candidates("  query-statu")))
    assert.same({ "block-job-cancel" }, (candidates("block-job-canc")))
    assert.same({}, (candidates("no-such-comm")))
    assert.equal(216, #candidates(""))
  end)

  it("completes argument names, skipping those already given", function()
    local list, start = candidates("block-job-cancel ")
    assert.same({ "device=", "force=" }, list)
    assert.equal(18, start)
    assert.same({ "force=" }, (candidates("block-job-cancel device=job0 ")))
    assert.same({ "force=" }, (candidates("block-job-cancel device=job0 f")))
    assert.same({}, (candidates("block-job-cancel device=job0 force=true ")))
    assert.same({ "capabilities=" }, (candidates("migrate-set-capabilities ")))
    assert.same({}, (candidates("query-block ")))
  end)

  it("offers name. for members that hold objects, and both forms for a node name or an object", function()
    local all = set(candidates("blockdev-add "))
    assert.is_true(all["cache."])
    assert.is_nil(all["cache="])
    assert.is_true(all["driver="])
    assert.is_true(all["node-name="])
    -- the qcow2 branch adds file (BlockdevRef: a node name or an object)
    local qcow2 = set(candidates("blockdev-add driver=qcow2 "))
    assert.is_true(qcow2["file="])
    assert.is_true(qcow2["file."])
    assert.is_true(qcow2["lazy-refcounts="])
    assert.is_nil(qcow2["filename="])
    assert.is_nil(qcow2["driver="])
  end)

  it("completes nested members, with the union branch the line selects", function()
    local file = set(candidates("blockdev-add driver=qcow2 file."))
    assert.is_true(file["file.driver="])
    assert.is_true(file["file.node-name="])
    assert.is_nil(file["file.filename="])   -- no driver given for file yet
    assert.same({ "file.filename=" }, (candidates("blockdev-add driver=qcow2 file.driver=file file.fi")))
    local posix = set(candidates("blockdev-add driver=qcow2 file.driver=file file."))
    assert.is_true(posix["file.aio="])
    assert.is_true(posix["file.locking="])
    assert.is_nil(posix["file.driver="])    -- given already
    assert.same({ "cache.direct=", "cache.no-flush=" }, (candidates("blockdev-add driver=raw cache.")))
    -- once file has members on the line, file= (a node name) is no longer offered
    assert.same({ "file." }, (candidates("blockdev-add driver=qcow2 file.driver=file fil")))
  end)

  it("completes enum values and booleans after key=", function()
    local drivers = candidates("blockdev-add driver=")
    local all = set(drivers)
    assert.is_true(all["driver=qcow2"])
    assert.is_true(all["driver=raw"])
    assert.is_true(all["driver=file"])
    assert.equal(42, #drivers)
    assert.same({ "driver=qcow", "driver=qcow2" }, (candidates("blockdev-add driver=qc")))
    assert.same({ "file.aio=io_uring", "file.aio=native", "file.aio=threads" },
                (candidates("blockdev-add driver=qcow2 file.driver=file file.aio=")))
    assert.same({ "force=false", "force=true" }, (candidates("block-job-cancel device=j force=")))
    assert.same({ "backing=null" }, (candidates("blockdev-add driver=qcow2 backing=")))
    assert.same({ "qom-type=iothread" }, (candidates("object-add qom-type=iot")))
    assert.same({}, (candidates("block-job-cancel device=")))   -- a free string
  end)

  it("completes the shell's commands and their first argument", function()
    assert.same({ ":events", ":help", ":hmp", ":quit" }, (candidates(":")))
    assert.same({ ":help", ":hmp" }, (candidates(":h")))
    assert.same({ "BLOCK_IO_ERROR" }, (candidates(":help BLOCK_IO")))
    assert.same({ "query-block", "query-block-exports", "query-block-jobs", "query-blockstats" },
                (candidates(":help query-bl")))
    local ev = set(candidates(":events "))
    assert.is_true(ev.on)
    assert.is_true(ev.off)
    assert.is_true(ev.STOP)
    assert.is_nil(ev.CPU_POLARIZATION_CHANGE)  -- QEMU 8.2: not a filter this VM can use
    assert.same({ ":x", ":y" }, (complete.candidates(s, ":", { shell_commands = { ":y", ":x" } })))
  end)

  it("offers nothing for Lua, JSON arguments or unknown commands", function()
    assert.same({}, (candidates('vm:exe')))
    assert.same({}, (candidates('transaction {"act')))
    assert.same({}, (candidates('no-such-command a')))
    assert.same({}, (candidates('blockdev-add nosuch.')))
    assert.same({}, (candidates('blockdev-add nosuch.deeper.')))
    assert.same({}, (candidates('blockdev-add node-name.')))   -- a string has no members
    assert.same({}, (candidates('blockdev-add nosuch=')))
  end)

  it("works without a schema: shell commands and the catalogue's events", function()
    assert.same({ ":help" }, (complete.candidates(nil, ":he")))
    assert.same({ "BLOCK_IO_ERROR" }, (complete.candidates(nil, ":help BLOCK_IO")))
    assert.same({}, (complete.candidates(nil, "query-bl")))
  end)
end)

describe("complete.for_readline", function()
  local s = schema_72()
  -- GNU readline's default word breaks: the word it replaces starts after the last of them.
  local function readline(text, to)
    to = to or #text
    local from = 1
    for i = 1, to do
      if (" \t\n\"\\'`@$><=;|&{("):find(text:sub(i, i), 1, true) then from = i + 1 end
    end
    local list, append = complete.for_readline(s, text, from, to)
    return list, append, text:sub(from, to)
  end

  it("gives the candidates for readline's own word, and no space after key= or key.", function()
    local list, append, word = readline("blockdev-add driver=qc")
    assert.equal("qc", word)
    assert.same({ "qcow", "qcow2" }, list)
    assert.equal(" ", append)
    list, append = readline("block-job-cancel device=j0 f")
    assert.same({ "force=" }, list)
    assert.equal("", append)
    list, append = readline("blockdev-add driver=qcow2 file.driver=file file.filen")
    assert.same({ "file.filename=" }, list)
    assert.equal("", append)
    list, append = readline("query-status")
    assert.same({ "query-status" }, list)
    assert.equal(" ", append)
    -- the cursor in the middle of the line: only the text before it counts
    list = readline("query-bl device=x", 8)
    assert.same({ "query-block", "query-block-exports", "query-block-jobs", "query-blockstats" }, list)
  end)
end)

describe("complete.clip", function()
  it("cuts candidates to the word readline replaces", function()
    local s = schema_72()
    local line = "blockdev-add driver=qc"
    local list, start = complete.candidates(s, line)
    local from = line:find("=", 1, true) + 1   -- readline breaks words at =
    assert.same({ "qcow", "qcow2" }, complete.clip(list, start, from))
    assert.same(list, complete.clip(list, start, start))
  end)
end)
