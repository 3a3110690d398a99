/*
** file.c: files that may hold monitor traffic or typed commands (recordings,
** the shell's history; passwords pass through both), readable by their
** owner only.
**
** core.private_file(path [, mode]) opens path for writing ("w", the default,
** truncates; "a" appends) as a Lua file like io.open's, created with mode
** 0600 whatever the umask; an existing file loses any group and other bits
** and keeps its owner's (so it is never made looser than it was).
** Returns file | nil, message, errno (io.open's failure).
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qmp.h"

static int close_file(lua_State *L) {
  luaL_Stream *p = (luaL_Stream *)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  return luaL_fileresult(L, fclose(p->f) == 0, NULL);
}

static int core_private_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *mode = luaL_optstring(L, 2, "w");
  int append = strcmp(mode, "a") == 0, fd;
  struct stat st;
  luaL_Stream *p;
  luaL_argcheck(L, append || strcmp(mode, "w") == 0, 2, "mode must be \"w\" or \"a\"");
  /* Harmless first: a closed file (closef NULL) until the open succeeds. */
  p = (luaL_Stream *)lua_newuserdatauv(L, sizeof *p, 0);
  p->f = NULL;
  p->closef = NULL;
  luaL_setmetatable(L, LUA_FILEHANDLE);
  fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | (append ? O_APPEND : O_TRUNC), 0600);
  if (fd < 0) return luaL_fileresult(L, 0, path);
  if (fstat(fd, &st) < 0 || ((st.st_mode & 077) != 0 && fchmod(fd, st.st_mode & 07700) < 0)
      || (p->f = fdopen(fd, append ? "a" : "w")) == NULL) {
    int err = errno;
    close(fd);
    errno = err;
    return luaL_fileresult(L, 0, path);
  }
  p->closef = close_file;
  return 1;
}

void qmp_file_open(lua_State *L) {
  lua_pushcfunction(L, core_private_file);
  lua_setfield(L, -2, "private_file");
}
