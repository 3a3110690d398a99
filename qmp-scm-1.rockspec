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
JSON is encoded and decoded in C with cJSON.
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
        "csrc/decode.c",
        "csrc/encode.c",
        "csrc/transport.c",
        "csrc/poll.c",
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
    ["qmp.waiters"] = "lua/qmp/waiters.lua",
    ["qmp.jobs"] = "lua/qmp/jobs.lua",
    ["qmp.loop"] = "lua/qmp/loop.lua",
    ["qmp.policy"] = "lua/qmp/policy.lua",
    ["qmp.reconnect"] = "lua/qmp/reconnect.lua",
    ["qmp.schema"] = "lua/qmp/schema.lua",
  },
  copy_directories = { "examples" },
}

test = {
  type = "busted",
}
