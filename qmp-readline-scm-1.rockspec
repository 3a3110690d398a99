-- The readline part of `qmp-lua shell`, apart from the library rock so that
-- the library builds and runs on a host without GNU readline.
rockspec_format = "3.0"
package = "qmp-readline"
version = "scm-1"

source = {
  url = "git+https://github.com/qmp-lua/qmp.git",
  branch = "main",
}

description = {
  summary = "Line editing for the qmp-lua shell (GNU readline)",
  detailed = [[
The C module qmp.cli.rl that `qmp-lua shell` (from the qmp rock) needs:
it prints events that arrive while the operator types above the line
being edited. It links GNU readline; the shell also needs lua-readline
(Debian's lua-readline, or the readline rock) at run time.
]],
  license = "MIT",
  labels = { "qemu", "qmp", "readline" },
}

dependencies = {
  "lua >= 5.4, < 5.5",
  "qmp",
}

external_dependencies = {
  READLINE = {
    header = "readline/readline.h",
    library = "readline",
  },
}

build = {
  type = "builtin",
  modules = {
    ["qmp.cli.rl"] = {
      sources = { "csrc/cli/rl.c" },
      libraries = { "readline" },
      incdirs = { "$(READLINE_INCDIR)" },
      libdirs = { "$(READLINE_LIBDIR)" },
    },
  },
}
