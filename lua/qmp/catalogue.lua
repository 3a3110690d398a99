--- The event catalogue: what this library knows about each QEMU event.
-- Data only; qmp.events turns each entry into an event type at load time.
-- One entry per event name:
--   name       the event name
--   doc        one line: what the event means
--   since      the QEMU version that introduced it
--   removed    the first QEMU version without it (absent: still current)
--   throttled  true when QEMU rate-limits it (one event per second and key;
--              the last one of a burst arrives late, the others are dropped)
--   throttle   { key = member the rate limit is kept per (absent: the name),
--                since = first version that limits it (absent: the event's),
--                unless = { member = value } }
--   first      members tostring(ev) shows first, in this order
--   fields     [member] = { type, optional, doc, since }: type is a JSON
--              kind (string, int, number, bool, object, array) or the name of
--              a QAPI type (an enum or a structure); since only when the
--              member is younger than the event.
-- Members of every version are listed, so old and new QEMUs read the same.
--
-- The since, removed and throttle.since facts were checked against QEMU's git
-- history, release by release from 0.12 to 9.2: the events in qapi/*.json
-- (before 2.1, in the C code that sends them) and the rate limits in the
-- monitor; the 10.0 events against their merged patches. Where QEMU's own doc
-- notes disagree with that history (RESUME says 0.12), the history wins.

-- Shapes shared by several events.
local function job_fields(extra)
  local f = {
    type = { type = "JobType", doc = "kind of job: stream, commit, mirror, backup, ..." },
    device = { type = "string", doc = "job id (the drive name for jobs started before ids existed)" },
    len = { type = "int", doc = "amount of work in total, in the job's unit (bytes for most jobs)" },
    offset = { type = "int", doc = "amount of work done so far; equals len when the job ran to the end" },
    speed = { type = "int", doc = "speed limit in bytes per second, 0 for none" },
  }
  for k, v in pairs(extra or {}) do f[k] = v end
  return f
end

local function vnc_fields(client_type)
  return {
    server = { type = "VncServerInfo", doc = "listening side: host, service (port), family, websocket, auth" },
    client = { type = client_type,
               doc = "peer: host, service (port), family, websocket"
                     .. (client_type == "VncClientInfo" and ", x509_dname, sasl_username" or "") },
  }
end

local function spice_fields(server_type, client_type)
  return {
    server = { type = server_type, doc = "listening side: host, port, family"
                                         .. (server_type == "SpiceServerInfo" and ", auth" or "") },
    client = { type = client_type,
               doc = "peer: host, port, family"
                     .. (client_type == "SpiceChannel" and ", connection-id, channel-type, channel-id, tls" or "") },
  }
end

local shutdown_fields = {
  guest = { type = "bool", since = "2.10", doc = "true when the guest asked for it, false when the host did" },
  reason = { type = "ShutdownCause", since = "4.0",
             doc = "what caused it, e.g. host-qmp-quit, guest-shutdown, guest-reset" },
}

local function panic_fields(info_since)
  return {
    action = { type = "GuestPanicAction", doc = "what QEMU did about it: pause, poweroff or run" },
    info = { type = "GuestPanicInformation", optional = true, since = info_since,
             doc = "details the guest passed on: type hyper-v (arg1..arg5) or s390 (core, psw, reason)" },
  }
end

local E = {}
local function event(e) E[#E + 1] = e end

-- Run state -------------------------------------------------------------

event{ name = "SHUTDOWN", since = "0.12",
  doc = "The machine was told to power off or quit; it stops (or exits) next.",
  first = { "reason", "guest" }, fields = shutdown_fields }

event{ name = "POWERDOWN", since = "0.12",
  doc = "An ACPI power-button press was sent to the guest, which may ignore it.",
  first = {}, fields = {} }

event{ name = "RESET", since = "0.12",
  doc = "The machine was reset.",
  first = { "reason", "guest" }, fields = shutdown_fields }

event{ name = "STOP", since = "0.12",
  doc = "The virtual CPUs stopped running (a stop command, an I/O error, migration, ...).",
  first = {}, fields = {} }

event{ name = "RESUME", since = "0.13",
  doc = "The virtual CPUs run again.",
  first = {}, fields = {} }

event{ name = "SUSPEND", since = "1.1",
  doc = "The guest suspended itself to RAM (ACPI S3).",
  first = {}, fields = {} }

event{ name = "SUSPEND_DISK", since = "1.2",
  doc = "The guest asked to suspend to disk (ACPI S4); QEMU powers off.",
  first = {}, fields = {} }

event{ name = "WAKEUP", since = "1.1",
  doc = "The guest woke up from a suspend to RAM and runs again.",
  first = {}, fields = {} }

event{ name = "WATCHDOG", since = "0.13", throttled = true, throttle = { since = "1.2" },
  doc = "A guest watchdog timer expired and QEMU took the configured action.",
  first = { "action" },
  fields = {
    action = { type = "WatchdogAction",
               doc = "what QEMU did: reset, shutdown, poweroff, pause, debug, none, inject-nmi" },
  } }

event{ name = "GUEST_PANICKED", since = "1.5",
  doc = "The guest reported a kernel panic through a panic device.",
  first = { "action" }, fields = panic_fields("2.9") }

event{ name = "GUEST_CRASHLOADED", since = "5.0",
  doc = "The guest panicked and is loading a crash kernel to take a dump.",
  first = { "action" }, fields = panic_fields() }

event{ name = "GUEST_PVSHUTDOWN", since = "9.1",
  doc = "The guest asked for a shutdown through the pvpanic device.",
  first = {}, fields = {} }

event{ name = "MEMORY_FAILURE", since = "5.2",
  doc = "The host found a hardware memory error in guest RAM.",
  first = { "recipient", "action" },
  fields = {
    recipient = { type = "MemoryFailureRecipient", doc = "who gets the error: hypervisor or guest" },
    action = { type = "MemoryFailureAction", doc = "what was done: ignore, inject, fatal or reset" },
    flags = { type = "MemoryFailureFlags", doc = "action-required and recursive, both booleans" },
  } }

-- Block devices and jobs ------------------------------------------------

event{ name = "BLOCK_IO_ERROR", since = "0.13", throttled = true,
  throttle = { key = "qom-path", since = "9.2", unless = { action = "stop" } },
  doc = "A disk read or write failed; action says whether the VM stopped.",
  first = { "qom-path", "device", "node-name", "operation", "action", "reason", "nospace" },
  fields = {
    ["qom-path"] = { type = "string", since = "9.2", doc = "QOM path of the guest device that saw the error" },
    device = { type = "string", doc = "drive name; empty when the drive was made with -blockdev" },
    ["node-name"] = { type = "string", optional = true, since = "2.8", doc = "block node that failed" },
    operation = { type = "IoOperationType", doc = "read or write" },
    action = { type = "BlockErrorAction", doc = "ignore, report (to the guest) or stop (the VM is paused)" },
    nospace = { type = "bool", optional = true, since = "2.2", doc = "true when the host ran out of space (ENOSPC)" },
    reason = { type = "string", since = "2.2", doc = "the host error, for people: do not parse it" },
  } }

event{ name = "BLOCK_IMAGE_CORRUPTED", since = "1.7",
  doc = "An image was found corrupt and marked so; it may now be read-only.",
  first = { "device", "node-name", "fatal", "msg" },
  fields = {
    device = { type = "string", doc = "drive name, or a node name when there is no drive" },
    ["node-name"] = { type = "string", optional = true, since = "2.4", doc = "node of the corrupt image" },
    msg = { type = "string", doc = "what is wrong, for people" },
    offset = { type = "int", optional = true, doc = "image offset of the access that found it" },
    size = { type = "int", optional = true, doc = "size of the access that found it" },
    fatal = { type = "bool", since = "2.2", doc = "true when the image can no longer be used" },
  } }

event{ name = "BLOCK_JOB_COMPLETED", since = "1.1",
  doc = "A block job ended, successfully or not (error says which).",
  first = { "device", "type", "error", "offset", "len" },
  fields = job_fields{
    error = { type = "string", optional = true, doc = "present when the job failed: a message for people" },
  } }

event{ name = "BLOCK_JOB_CANCELLED", since = "1.1",
  doc = "A block job was cancelled before it finished.",
  first = { "device", "type", "offset", "len" }, fields = job_fields() }

event{ name = "BLOCK_JOB_ERROR", since = "1.3",
  doc = "A block job hit an I/O error; action says what the job does about it.",
  first = { "device", "operation", "action" },
  fields = {
    device = { type = "string", doc = "job id" },
    operation = { type = "IoOperationType", doc = "read or write" },
    action = { type = "BlockErrorAction", doc = "ignore, report (the job fails) or stop (the job pauses)" },
  } }

event{ name = "BLOCK_JOB_READY", since = "1.3",
  doc = "A mirror-like job caught up and can be completed now.",
  first = { "device", "type", "offset", "len" }, fields = job_fields() }

event{ name = "BLOCK_JOB_PENDING", since = "2.12",
  doc = "A job finished its work and waits to be finalized.",
  first = { "id", "type" },
  fields = {
    type = { type = "JobType", doc = "kind of job" },
    id = { type = "string", doc = "job id" },
  } }

event{ name = "JOB_STATUS_CHANGE", since = "3.0",
  doc = "A job moved to another state of its life cycle.",
  first = { "id", "status" },
  fields = {
    id = { type = "string", doc = "job id" },
    status = { type = "JobStatus", doc = "new state: created, running, paused, ready, pending, concluded, null, ..." },
  } }

event{ name = "BLOCK_WRITE_THRESHOLD", since = "2.3",
  doc = "A write went past the threshold set on a node; the threshold is now cleared.",
  first = { "node-name", "amount-exceeded", "write-threshold" },
  fields = {
    ["node-name"] = { type = "string", doc = "node the threshold was set on" },
    ["amount-exceeded"] = { type = "int", doc = "bytes written beyond the threshold" },
    ["write-threshold"] = { type = "int", doc = "the threshold, in bytes" },
  } }

event{ name = "QUORUM_FAILURE", since = "2.0", throttled = true, throttle = {},
  doc = "A quorum node could not reach a quorum for a request.",
  first = { "reference", "sector-num", "sectors-count" },
  fields = {
    reference = { type = "string", doc = "id or node name of the quorum node" },
    ["sector-num"] = { type = "int", doc = "first sector of the request" },
    ["sectors-count"] = { type = "int", doc = "number of sectors of the request" },
  } }

event{ name = "QUORUM_REPORT_BAD", since = "2.0", throttled = true, throttle = { key = "node-name" },
  doc = "One child of a quorum failed or disagreed with the others.",
  first = { "node-name", "type", "error", "sector-num", "sectors-count" },
  fields = {
    type = { type = "QuorumOpType", since = "2.6", doc = "read, write or flush" },
    error = { type = "string", optional = true, doc = "the error, when the child failed rather than disagreed" },
    ["node-name"] = { type = "string", doc = "the child node" },
    ["sector-num"] = { type = "int", doc = "first sector of the request" },
    ["sectors-count"] = { type = "int", doc = "number of sectors of the request" },
  } }

event{ name = "BLOCK_EXPORT_DELETED", since = "5.2",
  doc = "A block export (NBD, FUSE, vhost-user) is gone and its id can be reused.",
  first = { "id" },
  fields = { id = { type = "string", doc = "export id" } } }

event{ name = "DEVICE_TRAY_MOVED", since = "1.1",
  doc = "The tray of a removable drive opened or closed.",
  first = { "id", "device", "tray-open" },
  fields = {
    device = { type = "string", doc = "drive name; empty when the drive has none" },
    id = { type = "string", since = "2.8", doc = "QOM path or id of the guest device" },
    ["tray-open"] = { type = "bool", doc = "true: now open, false: now closed" },
  } }

event{ name = "PR_MANAGER_STATUS_CHANGED", since = "3.0",
  doc = "A persistent-reservation helper connected or went away.",
  first = { "id", "connected" },
  fields = {
    id = { type = "string", doc = "id of the pr-manager object" },
    connected = { type = "bool", doc = "true when the helper is reachable now" },
  } }

-- Devices ---------------------------------------------------------------

event{ name = "VSERPORT_CHANGE", since = "2.1", throttled = true, throttle = { key = "id" },
  doc = "The guest opened or closed a virtio-serial port.",
  first = { "id", "open" },
  fields = {
    id = { type = "string", doc = "id of the port device" },
    open = { type = "bool", doc = "true when the guest side is open now" },
  } }

event{ name = "DEVICE_DELETED", since = "1.5",
  doc = "A device was removed; its id is free again.",
  first = { "device", "path" },
  fields = {
    device = { type = "string", optional = true, doc = "device id, when it had one" },
    path = { type = "string", doc = "QOM path the device had" },
  } }

event{ name = "DEVICE_UNPLUG_GUEST_ERROR", since = "6.2",
  doc = "The guest refused or failed to release a device being unplugged.",
  first = { "device", "path" },
  fields = {
    device = { type = "string", optional = true, doc = "device id, when it has one" },
    path = { type = "string", doc = "QOM path of the device" },
  } }

event{ name = "ACPI_DEVICE_OST", since = "2.1",
  doc = "The guest reported the outcome of an ACPI hotplug request (_OST).",
  first = { "info" },
  fields = { info = { type = "ACPIOSTInfo", doc = "device, slot, slot-type, source and status codes" } } }

event{ name = "VFIO_MIGRATION", since = "9.1",
  doc = "A VFIO device changed its migration state.",
  first = { "device-id", "device-state", "qom-path" },
  fields = {
    ["device-id"] = { type = "string", doc = "device id" },
    ["qom-path"] = { type = "string", doc = "QOM path of the device" },
    ["device-state"] = { type = "QapiVfioMigrationState", doc = "new state, e.g. stop, running, stop-copy" },
  } }

event{ name = "VFU_CLIENT_HANGUP", since = "7.1",
  doc = "The client of a vfio-user server went away.",
  first = { "vfu-id", "dev-id" },
  fields = {
    ["vfu-id"] = { type = "string", doc = "id of the vfio-user server object" },
    ["vfu-qom-path"] = { type = "string", doc = "QOM path of that object" },
    ["dev-id"] = { type = "string", doc = "id of the device it served" },
    ["dev-qom-path"] = { type = "string", doc = "QOM path of that device" },
  } }

event{ name = "RTC_CHANGE", since = "0.13", throttled = true, throttle = { since = "1.2" },
  doc = "The guest set its real-time clock.",
  first = { "offset", "qom-path" },
  fields = {
    offset = { type = "int", doc = "seconds between the new RTC time and the base set by -rtc" },
    ["qom-path"] = { type = "string", since = "7.0", doc = "QOM path of the clock device" },
  } }

event{ name = "DUMP_COMPLETED", since = "2.6",
  doc = "A detached dump-guest-memory finished.",
  first = { "result", "error" },
  fields = {
    result = { type = "DumpQueryResult", doc = "status, completed and total bytes" },
    error = { type = "string", optional = true, doc = "present when the dump failed" },
  } }

event{ name = "CPU_POLARIZATION_CHANGE", since = "8.2",
  doc = "The guest changed the CPU polarization (s390x with KVM only; unstable).",
  first = { "polarization" },
  fields = { polarization = { type = "S390CpuPolarization", doc = "horizontal or vertical" } } }

-- Memory ----------------------------------------------------------------

event{ name = "BALLOON_CHANGE", since = "1.2", throttled = true, throttle = {},
  doc = "The guest balloon driver changed the amount of memory it holds.",
  first = { "actual" },
  fields = { actual = { type = "int", doc = "guest memory after the change, in bytes" } } }

event{ name = "HV_BALLOON_STATUS_REPORT", since = "8.2", throttled = true, throttle = {},
  doc = "The guest's Hyper-V balloon driver sent a memory report.",
  first = { "committed", "available" },
  fields = {
    committed = { type = "int", doc = "memory the guest has committed, in bytes" },
    available = { type = "int", doc = "memory the guest still has available, in bytes" },
  } }

event{ name = "MEMORY_DEVICE_SIZE_CHANGE", since = "5.1", throttled = true, throttle = { key = "qom-path" },
  doc = "A memory device (virtio-mem) now gives the guest a different size.",
  first = { "id", "qom-path", "size" },
  fields = {
    id = { type = "string", optional = true, doc = "device id, when it has one" },
    size = { type = "int", doc = "new size in bytes" },
    ["qom-path"] = { type = "string", since = "6.2", doc = "QOM path of the device" },
  } }

event{ name = "MEM_UNPLUG_ERROR", since = "2.4", removed = "9.1",
  doc = "Unplugging a memory device failed (superseded by DEVICE_UNPLUG_GUEST_ERROR).",
  first = { "device", "msg" },
  fields = {
    device = { type = "string", doc = "device id" },
    msg = { type = "string", doc = "why it failed, for people" },
  } }

-- Migration -------------------------------------------------------------

event{ name = "MIGRATION", since = "2.4",
  doc = "The migration changed state (sent only with the events capability on).",
  first = { "status" },
  fields = { status = { type = "MigrationStatus", doc = "new state: setup, active, completed, failed, ..." } } }

event{ name = "MIGRATION_PASS", since = "2.6",
  doc = "A new pass over guest RAM began during migration.",
  first = { "pass" },
  fields = { pass = { type = "int", doc = "number of the pass, from 1" } } }

event{ name = "COLO_EXIT", since = "3.1",
  doc = "A VM left COLO fault-tolerance mode.",
  first = { "mode", "reason" },
  fields = {
    mode = { type = "COLOMode", doc = "role it had: primary or secondary" },
    reason = { type = "COLOExitReason", doc = "why: request, error or processing" },
  } }

event{ name = "UNPLUG_PRIMARY", since = "4.2",
  doc = "The primary device of a failover pair was unplugged for migration.",
  first = { "device-id" },
  fields = { ["device-id"] = { type = "string", doc = "id of the primary device" } } }

-- Network ---------------------------------------------------------------

event{ name = "NIC_RX_FILTER_CHANGED", since = "1.6",
  doc = "The guest changed a NIC's receive filter; sent again only after a query-rx-filter.",
  first = { "name", "path" },
  fields = {
    name = { type = "string", optional = true, doc = "NIC id, when it has one" },
    path = { type = "string", doc = "QOM path of the NIC" },
  } }

event{ name = "FAILOVER_NEGOTIATED", since = "4.2",
  doc = "The guest accepted virtio-net failover; the primary device can be plugged.",
  first = { "device-id" },
  fields = { ["device-id"] = { type = "string", doc = "id of the virtio-net standby device" } } }

event{ name = "NETDEV_STREAM_CONNECTED", since = "7.2",
  doc = "A stream netdev got its peer connected.",
  first = { "netdev-id", "addr" },
  fields = {
    ["netdev-id"] = { type = "string", doc = "netdev id" },
    addr = { type = "SocketAddress", doc = "peer address: type inet, unix, vsock or fd, with its members" },
  } }

event{ name = "NETDEV_STREAM_DISCONNECTED", since = "7.2",
  doc = "A stream netdev lost its peer.",
  first = { "netdev-id" },
  fields = { ["netdev-id"] = { type = "string", doc = "netdev id" } } }

event{ name = "NETDEV_VHOST_USER_CONNECTED", since = "10.0",
  doc = "A vhost-user netdev got its backend connected.",
  first = { "netdev-id", "chardev-id" },
  fields = {
    ["netdev-id"] = { type = "string", doc = "netdev id" },
    ["chardev-id"] = { type = "string", doc = "id of the character device it talks through" },
  } }

event{ name = "NETDEV_VHOST_USER_DISCONNECTED", since = "10.0",
  doc = "A vhost-user netdev lost its backend.",
  first = { "netdev-id" },
  fields = { ["netdev-id"] = { type = "string", doc = "netdev id" } } }

event{ name = "RDMA_GID_STATUS_CHANGED", since = "4.0", removed = "9.1",
  doc = "The guest added or removed a GID of a pvrdma device.",
  first = { "netdev", "gid-status" },
  fields = {
    netdev = { type = "string", doc = "host network device" },
    ["gid-status"] = { type = "bool", doc = "true: added, false: removed" },
    ["subnet-prefix"] = { type = "int", doc = "subnet prefix of the GID" },
    ["interface-id"] = { type = "int", doc = "interface id of the GID" },
  } }

-- Remote displays -------------------------------------------------------

event{ name = "VNC_CONNECTED", since = "0.13",
  doc = "A VNC client connected; it has not authenticated yet.",
  first = { "client", "server" }, fields = vnc_fields("VncBasicInfo") }

event{ name = "VNC_INITIALIZED", since = "0.13",
  doc = "A VNC client authenticated and its session is active.",
  first = { "client", "server" }, fields = vnc_fields("VncClientInfo") }

event{ name = "VNC_DISCONNECTED", since = "0.13",
  doc = "A VNC client connection closed.",
  first = { "client", "server" }, fields = vnc_fields("VncClientInfo") }

event{ name = "SPICE_CONNECTED", since = "0.14",
  doc = "A SPICE client connected.",
  first = { "client", "server" }, fields = spice_fields("SpiceBasicInfo", "SpiceBasicInfo") }

event{ name = "SPICE_INITIALIZED", since = "0.14",
  doc = "A SPICE channel finished its handshake and authentication and is up.",
  first = { "client", "server" }, fields = spice_fields("SpiceServerInfo", "SpiceChannel") }

event{ name = "SPICE_DISCONNECTED", since = "0.14",
  doc = "A SPICE client disconnected.",
  first = { "client", "server" }, fields = spice_fields("SpiceBasicInfo", "SpiceBasicInfo") }

event{ name = "SPICE_MIGRATE_COMPLETED", since = "1.3",
  doc = "The SPICE client moved over to the migration target.",
  first = {}, fields = {} }

return E
