/*
** error.c: the error objects every file of qmp.core returns.
** An error is a table { kind = "timeout", message = "..." } with the
** metatable qmp.Error, whose __tostring reads "kind: message".  qmp_fail
** pushes fail and one (a world event: the caller returns nil, err);
** qmp_pusherror only the object.  This file calls no other.
*/
#include <stdarg.h>

#include "qmp.h"

static void vpusherror(lua_State *L, const char *kind, const char *fmt, va_list ap) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, QMP_ERROR_MT);
}

void qmp_pusherror(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vpusherror(L, kind, fmt, ap);
  va_end(ap);
}

int qmp_fail(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  luaL_pushfail(L);
  va_start(ap, fmt);
  vpusherror(L, kind, fmt, ap);
  va_end(ap);
  return 2;
}

/* "kind: message", or for QMP errors "qmp: Class: desc" (the message holds that). */
static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "error"), luaL_optstring(L, -1, "?"));
  return 1;
}

void qmp_error_open(lua_State *L) {
  if (luaL_newmetatable(L, QMP_ERROR_MT)) {  /* idempotent: busted may reload us */
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setfield(L, -2, "Error");  /* module.Error: the metatable, for the Lua layer */
}
