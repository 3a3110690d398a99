--- qmp: the Lua 5.4 library for QEMU's machine protocol.
--   local qmp = require "qmp"
--   local vm <close> = assert(qmp.connect("/run/vm1/qmp.sock"))
--   print(assert(vm:execute("query-status")).status)
local core = require "qmp.core"
local events = require "qmp.events"
local errors = require "qmp.errors"
local filter = require "qmp.filter"
local Client = require "qmp.client"
local loop = require "qmp.loop"
local policy = require "qmp.policy"
local waiters = require "qmp.waiters"

local qmp = {
  _VERSION = "qmp " .. core._VERSION,
  connect = Client.connect,  -- (address, opts): connected and negotiated, or nil, err
  client = Client.new,       -- (address, opts): connects in the background (see README)
  waiters = waiters,         -- opts.waiter: qmp.waiters.cqueues, qmp.waiters.luv
  Client = Client,
  loop = loop,               -- qmp.loop{ vm1, vm2 }: one poll loop for many VMs
  mux = require "qmp.mux",   -- qmp.mux(vm, { listen = path }): vm's monitor shared on a unix socket
  machine = require "qmp.machine",  -- qmp.machine{ args = {...} }: launch a QEMU and own it
  policy = policy,           -- qmp.policy.resume_on_io_error(vm, opts): see README
  record = require "qmp.record",  -- qmp.record.open(path).trace for qmp.connect; qmp.record.run(address, path)
  replay = require "qmp.replay",  -- qmp.replay(path, opts): a client playing a recording
  signals = require "qmp.signals",  -- qmp.signals.catch("INT", "TERM"): blocking calls return kind "interrupted"
  events = events.types,     -- qmp.events.STOP is the type of STOP events
  Event = events.Event,      -- methods every event has
  errors = errors,
  match = filter.match,
  null = core.null,
  array = core.array,        -- qmp.array{} encodes as [] (a plain {} is an object)
  uint64 = core.uint64,      -- integers above 2^63-1, as decoded
  decode = core.decode,      -- (text) -> value | nil, err
  encode = core.encode,      -- (value [, { pretty =, sort = }]) -> text; raises on unencodable values
  decoder = core.decoder,    -- ({ max_message = n }) -> d; d:feed(bytes); d:next()
  monotime = core.monotime,
}

return qmp
