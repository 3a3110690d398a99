/*
** harness.h: the body shared by the libFuzzer harnesses.  A harness defines
** QMP_FUZZ_CHECK, the name of a function of checks.lua, and includes this.
**
** One lua_State per process, made on the first input: standard libraries,
** qmp.core linked in (the C sources are compiled into the harness) and the
** checks (checks.lua, embedded at build time as checks_lua.h).  Each input
** runs the check under lua_pcall: a check that returns a reason aborts, so
** libFuzzer keeps the input, and so does a Lua error the check did not
** catch itself (what the library may raise by design, a check wraps in
** pcall); only Lua running out of memory is no finding.  Crashes and
** sanitizer reports are findings of their own.
**
** A harness may bring its own chunk instead of checks.lua: it defines
** QMP_FUZZ_LUA (the array embed.lua made) and QMP_FUZZ_LUA_NAME, and
** includes its header first.  QMP_FUZZ_OPEN(L), when defined, runs after
** qmp.core is loaded and before the chunk (more modules, package.path).
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#ifndef QMP_FUZZ_LUA
#include "checks_lua.h"  /* static const char checks_lua[] (NUL-terminated) */
#define QMP_FUZZ_LUA checks_lua
#define QMP_FUZZ_LUA_NAME "checks.lua"
#endif

int luaopen_qmp_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *fuzz_state(void) {
  static lua_State *L;
  if (L != NULL) return L;
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "qmp.core", luaopen_qmp_core, 0);
#ifdef QMP_FUZZ_OPEN
  QMP_FUZZ_OPEN(L);
#endif
  if (luaL_loadbuffer(L, QMP_FUZZ_LUA, sizeof QMP_FUZZ_LUA - 1, "=" QMP_FUZZ_LUA_NAME) != LUA_OK
      || (lua_insert(L, -2), lua_pcall(L, 1, 1, 0)) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", QMP_FUZZ_LUA_NAME, lua_tostring(L, -1));
    abort();
  }
  if (lua_getfield(L, -1, QMP_FUZZ_CHECK) != LUA_TFUNCTION) {
    fprintf(stderr, "%s has no check '%s'\n", QMP_FUZZ_LUA_NAME, QMP_FUZZ_CHECK);
    abort();
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "qmp.fuzz.check");
  lua_settop(L, 0);
  return L;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = fuzz_state();
  int status;
  lua_getfield(L, LUA_REGISTRYINDEX, "qmp.fuzz.check");
  lua_pushlstring(L, (const char *)data, size);
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK && lua_isstring(L, -1)) {
    fprintf(stderr, "qmp fuzz check '%s' failed: %s\n", QMP_FUZZ_CHECK, lua_tostring(L, -1));
    abort();
  }
  if (status != LUA_OK && status != LUA_ERRMEM) {
    fprintf(stderr, "qmp fuzz check '%s' raised: %s\n", QMP_FUZZ_CHECK,
            lua_isstring(L, -1) ? lua_tostring(L, -1) : luaL_typename(L, -1));
    abort();
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);  /* every value of this input is gone before the next */
  return 0;
}
