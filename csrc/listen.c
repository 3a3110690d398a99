/*
** listen.c: listening unix sockets, for serving QMP clients (qmp.mux).
**
** core.listen_unix(path, mode) makes one.  Whatever is at path is looked at
** first: a socket someone accepts on is left alone ("in_use"), a stale one
** (connect refused: its owner is gone) is removed, anything else is never
** replaced ("exists").  The socket gets its mode before listen(): until
** then a connect is refused, so nobody connects while the mode is still
** the umask's.  l:accept() never waits; the conns it gives are ordinary
** qmp.Conn objects (transport.c).  l:close() removes path only if it is
** still the socket bind made (same device and inode): a path replaced
** meanwhile belongs to someone else.
**
** World events return fail + { kind, message }: "in_use", "exists",
** "denied", "io".  Misuse raises, as does using a closed listener.
*/
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "qmp.h"

#define QMP_LISTENER_MT "qmp.Listener"

#define BACKLOG 128  /* connects waiting for accept() */

typedef struct Listener {
  int fd;          /* -1 once closed */
  int bound;       /* dev and ino are the socket bind made at path */
  dev_t dev;
  ino_t ino;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
} Listener;

/* Remove path if it is still our socket, then close the fd.  Idempotent. */
static void listener_destroy(Listener *l) {
  struct stat st;
  if (l->bound && lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
    unlink(l->path);
  l->bound = 0;
  if (l->fd >= 0) {
    close(l->fd);
    l->fd = -1;
  }
}

static Listener *tolistener(lua_State *L) {
  return (Listener *)luaL_checkudata(L, 1, QMP_LISTENER_MT);
}

static Listener *checklistener(lua_State *L) {
  Listener *l = tolistener(L);
  if (l->fd < 0) luaL_error(L, "attempt to use a closed qmp listener");
  return l;
}

static const char *errno_kind(int err) {
  return (err == EACCES || err == EPERM || err == EROFS) ? "denied" : "io";
}

/* What to do about a failed socket() or accept() ("" for the others). */
static const char *fd_hint(int err) {
  if (err == EMFILE) return " (this process has no file descriptor left: see ulimit -n)";
  if (err == ENFILE) return " (the system has no file descriptor left)";
  return "";
}

/* Undo what was made, then fail with err (an errno, saved by the caller). */
static int listen_fail(lua_State *L, Listener *l, const char *what, int err) {
  listener_destroy(l);
  if (err == EADDRINUSE)
    return qmp_fail(L, "in_use", "%s is in use by a listening socket", l->path);
  return qmp_fail(L, errno_kind(err), "cannot listen on %s: %s: %s%s", l->path, what,
                  strerror(err), fd_hint(err));
}

/* Make room at path: 0 when nothing is there (any stale socket removed),
** else fail pushed (2). */
static int clear_path(lua_State *L, const char *path, const struct sockaddr_un *sa) {
  struct stat st;
  int s, err;
  if (lstat(path, &st) < 0) {
    if ((err = errno) == ENOENT) return 0;
    return qmp_fail(L, errno_kind(err), "cannot listen on %s: %s", path, strerror(err));
  }
  if (!S_ISSOCK(st.st_mode))
    return qmp_fail(L, "exists", "%s exists and is not a socket; refusing to replace it", path);
  /* Is anyone accepting on it?  A listener takes the connect (or its full
  ** backlog says EAGAIN); a socket nobody listens on refuses it. */
  if ((s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
    err = errno;
    return qmp_fail(L, "io", "cannot listen on %s: socket: %s%s", path, strerror(err),
                    fd_hint(err));
  }
  err = connect(s, (const struct sockaddr *)sa, sizeof *sa) < 0 ? errno : 0;
  close(s);
  if (err == ECONNREFUSED) {
    if (unlink(path) < 0 && (err = errno) != ENOENT)
      return qmp_fail(L, errno_kind(err), "cannot remove the stale socket %s: %s", path,
                      strerror(err));
    return 0;
  }
  if (err == 0 || err == EAGAIN || err == EINPROGRESS || err == EINTR)
    return qmp_fail(L, "in_use", "%s is in use by a listening socket", path);
  return qmp_fail(L, errno_kind(err), "cannot listen on %s: %s", path, strerror(err));
}

/*
** core.listen_unix(path, mode) -> listener | nil, err.  mode: the socket's
** permission bits (0 to 0777), set whatever the umask.  The listener is
** made closed first, so that a memory error leaves nothing to clean up,
** and owns the fd and the socket at path from then on.
*/
static int core_listen_unix(lua_State *L) {
  struct sockaddr_un sa;
  const char *path = qmp_check_unix_path(L, 1, &sa);
  lua_Integer mode = luaL_checkinteger(L, 2);
  struct stat st;
  Listener *l;
  int r;
  luaL_argcheck(L, mode >= 0 && mode <= 0777, 2, "mode must be permission bits, 0 to 0777");
  l = (Listener *)lua_newuserdatauv(L, sizeof(Listener), 0);
  l->fd = -1;
  l->bound = 0;
  memcpy(l->path, sa.sun_path, sizeof l->path);
  luaL_setmetatable(L, QMP_LISTENER_MT);
  if ((r = clear_path(L, path, &sa)) != 0) return r;
  if ((l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
    return listen_fail(L, l, "socket", errno);
  if (bind(l->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
    return listen_fail(L, l, "bind", errno);
  if (lstat(path, &st) < 0)
    return listen_fail(L, l, "stat", errno);
  l->dev = st.st_dev;
  l->ino = st.st_ino;
  l->bound = 1;
  if (chmod(path, (mode_t)mode) < 0)
    return listen_fail(L, l, "chmod", errno);
  if (listen(l->fd, BACKLOG) < 0)
    return listen_fail(L, l, "listen", errno);
  return 1;
}

/*
** l:accept([max_message]) -> conn | false | nil, err.  Never waits: false
** when no client is waiting (or the one that was gave up).  The conn is
** made before accept4(), so that a memory error cannot lose the fd.
*/
static int listener_accept(lua_State *L) {
  Listener *l = checklistener(L);
  qmp_conn *c = qmp_conn_new(L, 2);
  char label[sizeof l->path + 16];
  int fd, err;
  while ((fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) < 0 && errno == EINTR) {}
  if (fd < 0) {
    err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED) {
      lua_pushboolean(L, 0);
      return 1;
    }
    return qmp_fail(L, "io", "cannot accept on %s: %s%s", l->path, strerror(err), fd_hint(err));
  }
  snprintf(label, sizeof label, "client of %s", l->path);
  qmp_conn_adopt(c, fd, AF_UNIX, label);
  return 1;
}

/* l:fileno() -> the listening fd (readable when a client waits), -1 once closed */
static int listener_fileno(lua_State *L) {
  lua_pushinteger(L, tolistener(L)->fd);
  return 1;
}

/* l:path() -> the path it was made on, closed or not */
static int listener_path(lua_State *L) {
  lua_pushstring(L, tolistener(L)->path);
  return 1;
}

/* l:close(), __gc and __close: idempotent. */
static int listener_close(lua_State *L) {
  listener_destroy(tolistener(L));
  return 0;
}

static int listener_tostring(lua_State *L) {
  Listener *l = tolistener(L);
  if (l->fd < 0) lua_pushliteral(L, "qmp.Listener (closed)");
  else lua_pushfstring(L, "qmp.Listener (%s)", l->path);
  return 1;
}

void qmp_listen_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"accept", listener_accept},
    {"fileno", listener_fileno},
    {"path", listener_path},
    {"close", listener_close},
    {NULL, NULL}
  };
  if (luaL_newmetatable(L, QMP_LISTENER_MT)) {  /* module, mt */
    lua_pushcfunction(L, listener_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, listener_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, listener_tostring);
    lua_setfield(L, -2, "__tostring");
    /* accept makes conns, whose decoders need the module's decoder state as
    ** upvalues: qmp_decoder_setfuncs finds it in the table it fills, so the
    ** methods table borrows the module's "events" for the call. */
    lua_createtable(L, 0, 5);          /* module, mt, methods */
    lua_getfield(L, -3, "events");
    lua_setfield(L, -2, "events");
    qmp_decoder_setfuncs(L, methods);
    lua_pushnil(L);
    lua_setfield(L, -2, "events");
    lua_setfield(L, -2, "__index");    /* module, mt */
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, core_listen_unix);
  lua_setfield(L, -2, "listen_unix");
}
