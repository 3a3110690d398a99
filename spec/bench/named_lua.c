/*
** named_lua SCRIPT [ARGS...]: a lua5.4 for the instruction counts.  The
** lua5.4 a distribution installs is stripped, so callgrind cannot name its
** functions and the garbage collector's cannot be told apart from the rest.
** This one links the distribution's own static library (liblua5.4.a, the
** same compiled code, with its function names) and starts a script as the
** stand-alone lua5.4 does: standard libraries, the `arg` table, the script's
** arguments as `...`, and the collector in generational mode, as lua.c sets
** it (the mode decides much of an event's cost).  No options, no LUA_INIT.
** Compiled by the instruction benchmark into its temporary directory.
*/
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

/* As lua.c: a traceback with the error. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg != NULL ? msg : "(error object is not a string)", 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: named_lua SCRIPT [ARGS...]\n");
    return 64;
  }
  L = luaL_newstate();
  if (L == NULL) return 1;
  lua_gc(L, LUA_GCSTOP);
  luaL_openlibs(L);
  /* arg[-1] = this program, arg[0] = the script, arg[1..] = its arguments */
  lua_createtable(L, argc - 2, 2);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);
  lua_pushcfunction(L, traceback);
  status = luaL_loadfile(L, argv[1]);
  if (status == LUA_OK) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 1);
  }
  if (status != LUA_OK) fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
