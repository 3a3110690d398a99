-- Timeout messages that say what the monitor's process is doing (qmp.peer):
-- a stopped or hung QEMU is named by its pid, a running one is not blamed.
local qmp = require "qmp"
local peer = require "qmp.peer"
local fake = require "support.fake_qmp"
local proc = require "support.proc"

local cleanup = require("support.cleanup")(after_each)

-- A fake QMP peer; stopped with SIGSTOP before any client connects when
-- stop is true (the kernel still takes connections into its backlog).
local function peer_process(steps, stop)
  local srv = fake.serve(steps, cleanup)
  if stop then
    proc.kill(srv.pid, "STOP")
    cleanup(function() proc.kill(srv.pid, "CONT") end)   -- runs before the stop above
    assert(proc.wait_until(function() return peer.state(srv.pid) == "T" end, TEST_TIMEOUT))
  end
  return srv
end

describe("qmp.peer", function()
  it("reads the state after the last parenthesis, whatever the command name holds", function()
    assert.equal("S", peer.parse_state("4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560"))
    assert.equal("T", peer.parse_state("4242 (a) R (b) T 1 4242 4242 0 -1 4194560"))
    assert.equal("D", peer.parse_state("7 (two words) D 1 7 7 0 -1"))
    assert.is_nil(peer.parse_state("garbage"))
  end)

  it("says why a stopped, traced or hung process is silent, and nothing for one that runs or sleeps", function()
    assert.equal("QEMU (pid 42) is stopped (SIGSTOP?): send it SIGCONT", peer.silence(42, "T"))
    assert.equal("QEMU (pid 42) is stopped by a debugger (traced)", peer.silence(42, "t"))
    assert.equal("QEMU (pid 42) is in uninterruptible sleep (hung on I/O?)", peer.silence(42, "D"))
    assert.is_nil(peer.silence(42, "R"))
    assert.is_nil(peer.silence(42, "S"))
  end)

  it("names no pid that is unknown, from another namespace, or this process's own", function()
    assert.is_nil(peer.pid(nil))
    assert.is_nil(peer.pid({ uid = 0, gid = 0, pid = 0 }))
    local f = assert(io.open("/proc/self/stat"))
    local own = tonumber(f:read("a"):match("^%d+"))
    f:close()
    assert.is_nil(peer.pid({ pid = own }))
    assert.equal(1, peer.pid({ pid = 1 }))
  end)
end)

describe("a greeting timeout", function()
  it("names a stopped peer by its pid and says to send SIGCONT", function()
    local srv = peer_process(fake.opening({ { wait_close = true } }), true)
    local vm, err = qmp.connect(srv.path, { timeout = 0.3 })
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.equal(("timeout: no QMP greeting from %s within 0.3 s: QEMU (pid %d) is stopped (SIGSTOP?): " ..
                  "send it SIGCONT"):format(srv.path, srv.pid), tostring(err))
  end)

  it("still says the monitor may be held by another client when the peer runs, naming its pid", function()
    local srv = peer_process({ { hold = 10 } }, false)
    local vm, err = qmp.connect(srv.path, { timeout = 0.3 })
    assert.is_nil(vm)
    assert.equal("timeout", err.kind)
    assert.equal(("no QMP greeting from %s within 0.3 s: the monitor (pid %d) may be held by another client " ..
                  "(QEMU serves one client per monitor), or it is not a QMP monitor"):format(srv.path, srv.pid),
                 err.message)
  end)
end)
