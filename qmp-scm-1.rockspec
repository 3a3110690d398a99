rockspec_format = "3.0"
package = "qmp"
version = "scm-1"

source = {
  url = "git+https://github.com/qmp-lua/qmp.git",
  branch = "main",
}

description = {
  summary = "Client for the QEMU Machine Protocol (QMP)",
  detailed = [[
A Lua 5.4 client for QEMU's QMP monitor: connects over unix or TCP
sockets, negotiates capabilities, runs commands and delivers events.
JSON is encoded and decoded in C with cJSON. It comes with the qmp-lua
command, whose shell also needs the qmp-readline rock (GNU readline).
]],
  license = "MIT",
  labels = { "qemu", "qmp", "json" },
}

dependencies = {
  "lua >= 5.4, < 5.5",
}

external_dependencies = {
  CJSON = {
    header = "cjson/cJSON.h",
    library = "cjson",
  },
}

build = {
  type = "builtin",
  modules = {
    ["qmp.core"] = {
      sources = {
        "csrc/qmp_core.c",
        "csrc/error.c",
        "csrc/scan.c",
        "csrc/walk.c",
        "csrc/decoder.c",
        "csrc/encode.c",
        "csrc/transport.c",
        "csrc/listen.c",
        "csrc/poll.c",
        "csrc/poller.c",
        "csrc/signal.c",
        "csrc/file.c",
        "csrc/spawn.c",
        "csrc/uint64.c",
      },
      libraries = { "cjson" },
      incdirs = { "$(CJSON_INCDIR)", "csrc" },
      libdirs = { "$(CJSON_LIBDIR)" },
      defines = { "_GNU_SOURCE" },
    },
    qmp = "lua/qmp/init.lua",
    ["qmp.client"] = "lua/qmp/client.lua",
    ["qmp.errors"] = "lua/qmp/errors.lua",
    ["qmp.events"] = "lua/qmp/events.lua",
    ["qmp.catalogue"] = "lua/qmp/catalogue.lua",
    ["qmp.event_methods"] = "lua/qmp/event_methods.lua",
    ["qmp.filter"] = "lua/qmp/filter.lua",
    ["qmp.address"] = "lua/qmp/address.lua",
    ["qmp.dispatch"] = "lua/qmp/dispatch.lua",
    ["qmp.session"] = "lua/qmp/session.lua",
    ["qmp.peer"] = "lua/qmp/peer.lua",
    ["qmp.waiters"] = "lua/qmp/waiters.lua",
    ["qmp.waiting"] = "lua/qmp/waiting.lua",
    ["qmp.jobs"] = "lua/qmp/jobs.lua",
    ["qmp.loop"] = "lua/qmp/loop.lua",
    ["qmp.heap"] = "lua/qmp/heap.lua",
    ["qmp.attached"] = "lua/qmp/attached.lua",
    ["qmp.mux"] = "lua/qmp/mux.lua",
    ["qmp.machine"] = "lua/qmp/machine.lua",
    ["qmp.policy"] = "lua/qmp/policy.lua",
    ["qmp.reconnect"] = "lua/qmp/reconnect.lua",
    ["qmp.schema"] = "lua/qmp/schema.lua",
    ["qmp.record"] = "lua/qmp/record.lua",
    ["qmp.replay"] = "lua/qmp/replay.lua",
    ["qmp.signals"] = "lua/qmp/signals.lua",
    ["qmp.text"] = "lua/qmp/text.lua",
    ["qmp.cli.main"] = "lua/qmp/cli/main.lua",
    ["qmp.cli.common"] = "lua/qmp/cli/common.lua",
    ["qmp.cli.shell"] = "lua/qmp/cli/shell.lua",
    ["qmp.cli.events"] = "lua/qmp/cli/events.lua",
    ["qmp.cli.exec"] = "lua/qmp/cli/exec.lua",
    ["qmp.cli.run"] = "lua/qmp/cli/run.lua",
    ["qmp.cli.job"] = "lua/qmp/cli/job.lua",
    ["qmp.cli.record"] = "lua/qmp/cli/record.lua",
    ["qmp.cli.mux"] = "lua/qmp/cli/mux.lua",
    ["qmp.cli.launch"] = "lua/qmp/cli/launch.lua",
    ["qmp.cli.progress"] = "lua/qmp/cli/progress.lua",
    ["qmp.cli.kv"] = "lua/qmp/cli/kv.lua",
    ["qmp.cli.pretty"] = "lua/qmp/cli/pretty.lua",
    ["qmp.cli.complete"] = "lua/qmp/cli/complete.lua",
    ["qmp.cli.help"] = "lua/qmp/cli/help.lua",
    ["qmp.cli.completion"] = "lua/qmp/cli/completion.lua",
  },
  install = {
    bin = { ["qmp-lua"] = "bin/qmp-lua" },
  },
  copy_directories = { "examples" },
}

test = {
  type = "busted",
}
