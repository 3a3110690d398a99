/*
** qmp_core.c: entry point of the qmp.core module.
** The module table is built by one *_open function per concern (errors,
** uint64, encode, decode, transport, ...), each adding its functions to the
** table on top; here are only the few functions that belong to no concern.
*/
#include <time.h>

#include "qmp.h"

#define QMP_CORE_VERSION "0.1.0"

static int core_monotime(lua_State *L) {
  lua_pushnumber(L, qmp_monotime());
  return 1;
}

/* core.walltime() -> seconds, microseconds: CLOCK_REALTIME, as QMP event timestamps. */
static int core_walltime(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushinteger(L, (lua_Integer)ts.tv_sec);
  lua_pushinteger(L, (lua_Integer)(ts.tv_nsec / 1000));
  return 2;
}

/* Mark a table so that qmp.encode writes it as a JSON array, even when empty. */
static int core_array(lua_State *L) {
  if (lua_isnoneornil(L, 1))
    lua_newtable(L);
  else
    luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_setmetatable(L, QMP_ARRAY_MT);
  return 1;
}

__attribute__((visibility("default"))) int luaopen_qmp_core(lua_State *L);

int luaopen_qmp_core(lua_State *L) {
  luaL_checkversion(L);
  lua_newtable(L);
  qmp_error_open(L);
  luaL_newmetatable(L, QMP_ARRAY_MT);
  lua_setfield(L, -2, "array_mt");
  lua_pushcfunction(L, core_array);
  lua_setfield(L, -2, "array");
  lua_pushcfunction(L, core_monotime);
  lua_setfield(L, -2, "monotime");
  lua_pushcfunction(L, core_walltime);
  lua_setfield(L, -2, "walltime");
  qmp_pushnull(L);
  lua_setfield(L, -2, "null");
  qmp_uint64_open(L);
  qmp_encode_open(L);
  qmp_decode_open(L);
  qmp_transport_open(L);
  qmp_listen_open(L);
  qmp_poll_open(L);
  qmp_poller_open(L);
  qmp_signal_open(L);
  qmp_file_open(L);
  qmp_spawn_open(L);
  lua_pushliteral(L, QMP_CORE_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
