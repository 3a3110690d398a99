/*
** fuzz_protocol.c: libFuzzer harness.
** (e) The client's protocol handling over a socketpair: the input is a
** script (see protocol.lua) of what a peer writes on one end (greetings,
** replies echoing or mangling the client's ids, events, garbage, partial
** messages, EOF) and what the client does on the other (commands with
** short timeouts, waits, handlers, listeners, steps, close), on a virtual
** clock so nothing waits.  Replies must reach the command they name, and
** only it; errors are documented error objects; the stats add up; no fd
** is left open.
**
** The Lua client (lua/qmp/) is loaded from ./lua, as run.sh runs from the
** top of the tree.  This file adds the module qmp.fuzz: socketpair(),
** sndbuf(fd, bytes), fds() (the number of open file descriptors) and
** budget(n).
**
** The client is Lua, which libFuzzer cannot see: a line hook on the state
** (coroutines inherit it) counts each pair of consecutive lines run in
** lua/, hashed, in libFuzzer's extra counters, so the client's branches
** guide the fuzzer as the C core's do.  The same hook counts instructions:
** past the budget set by budget(n) (thousands), every hook call raises, so
** a loop that never ends is a finding instead of a timeout.
*/
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <lua.h>
#include <lauxlib.h>

#include "protocol_lua.h"  /* static const char protocol_lua[] */

#define QMP_FUZZ_CHECK "protocol"
#define QMP_FUZZ_LUA protocol_lua
#define QMP_FUZZ_LUA_NAME "protocol.lua"
#define QMP_FUZZ_OPEN protocol_open

static void protocol_open(lua_State *L);

#include "harness.h"

#define LINE_COUNTERS (1 << 15)
__attribute__((used, section("__libfuzzer_extra_counters")))
static uint8_t line_counters[LINE_COUNTERS];
static uintptr_t last_line;          /* hash of the line run before */
static long budget_left;             /* count hooks (1000 instructions) to go */

/* Whether source (a chunk's name, as the hook sees it) is the client's.  A
** chunk keeps its name string as long as it is loaded, and consecutive lines
** are mostly of one chunk: the latest answer is kept by the string's address
** (strncmp here is slow too, as libFuzzer intercepts it). */
static int is_client_source(const char *source) {
  static const char *last;
  static int last_is_client;
  if (source != last) {
    last = source;
    last_is_client = strncmp(source, "@./lua/", 7) == 0;
  }
  return last_is_client;
}

static void fuzz_hook(lua_State *L, lua_Debug *ar) {
  if (ar->event == LUA_HOOKCOUNT) {
    if (--budget_left < 0) luaL_error(L, "the input ran over its instruction budget");
    return;
  }
  if (!lua_getinfo(L, "S", ar) || !is_client_source(ar->source)) return;
  {
    uintptr_t here = ((uintptr_t)ar->source >> 4) * 2654435761u + (uintptr_t)ar->currentline;
    uint8_t *c = &line_counters[(here ^ (last_line >> 1)) % LINE_COUNTERS];
    if (*c < 255) (*c)++;
    last_line = here;
  }
}

/* qmp.fuzz.budget(n): n thousand instructions from now on, then errors;
** returns how many were left of the last budget (negative: it ran over). */
static int fuzz_budget(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_pushinteger(L, budget_left);
  budget_left = (long)n;
  last_line = 0;
  return 1;
}

/* Every input makes connections, each with a read buffer of 64 KiB or more:
** under ASan's default quarantine (256 MiB of freed memory held back) the
** process grew past run.sh's 1 GiB limit within minutes.  ASAN_OPTIONS
** still overrides this. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
  return "quarantine_size_mb=32";
}

/* qmp.fuzz.socketpair() -> fd, fd (unix stream sockets, close-on-exec) */
static int fuzz_socketpair(lua_State *L) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    return luaL_error(L, "socketpair: %s", strerror(errno));
  lua_pushinteger(L, sv[0]);
  lua_pushinteger(L, sv[1]);
  return 2;
}

/* qmp.fuzz.sndbuf(fd, bytes): set SO_SNDBUF (the kernel keeps its minimum) */
static int fuzz_sndbuf(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1), n = (int)luaL_checkinteger(L, 2);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n) < 0)
    return luaL_error(L, "SO_SNDBUF: %s", strerror(errno));
  return 0;
}

/* qmp.fuzz.fds() -> the number of open file descriptors (/proc/self/fd) */
static int fuzz_fds(lua_State *L) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  lua_Integer n = 0;
  if (d == NULL) return luaL_error(L, "/proc/self/fd: %s", strerror(errno));
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  lua_pushinteger(L, n - 1);  /* less the directory's own */
  return 1;
}

static int luaopen_qmp_fuzz(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"socketpair", fuzz_socketpair},
    {"fds", fuzz_fds},
    {"sndbuf", fuzz_sndbuf},
    {"budget", fuzz_budget},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}

/* The client's modules from ./lua only; qmp.core is linked in. */
static void protocol_open(lua_State *L) {
  lua_getglobal(L, "package");
  lua_pushliteral(L, "./lua/?.lua;./lua/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  luaL_requiref(L, "qmp.fuzz", luaopen_qmp_fuzz, 0);
  lua_pop(L, 1);
  budget_left = LONG_MAX;
  lua_sethook(L, fuzz_hook, LUA_MASKLINE | LUA_MASKCOUNT, 1000);
}
