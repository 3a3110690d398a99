/*
** transport.c: monitor connections over unix sockets, TCP or an inherited fd.
**
** Every fd is non-blocking and close-on-exec; every wait is a poll() against
** a CLOCK_MONOTONIC deadline, retried on EINTR; sends use MSG_NOSIGNAL so a
** dead peer gives an error, never SIGPIPE.  A connection owns a streaming
** decoder (decode.c): conn:recv() returns whole decoded messages.
**
** World events return fail + { kind, message }: "refused", "denied",
** "timeout", "closed", "unsupported", "io".  Misuse raises.
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "qmp.h"

#define MAX_FDS 16   /* fds passed with one command (SCM_RIGHTS) */

typedef struct Conn {
  int fd;             /* -1 once closed */
  int family;         /* AF_UNIX, AF_INET or AF_INET6 */
  int eof;            /* the peer closed its end */
  qmp_decoder *dec;   /* user value 1 keeps it alive */
} Conn;

double qmp_monotime(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int qmp_poll_ms(double deadline) {
  double left;
  if (deadline == HUGE_VAL) return -1;
  left = deadline - qmp_monotime();
  if (!(left > 0)) return 0;  /* passed, or NaN */
  return left * 1000 > INT_MAX ? INT_MAX : (int)ceil(left * 1000);
}

/* Deadline from a timeout in seconds; a negative or nil timeout waits forever. */
static double deadline_of(lua_State *L, int idx) {
  double t = luaL_optnumber(L, idx, -1);
  luaL_argcheck(L, !isnan(t), idx, "timeout must be a number");
  return t < 0 ? HUGE_VAL : qmp_monotime() + t;
}

/* Wait until fd is ready for events or the deadline passes: 0 or ETIMEDOUT. */
static int waitfd(int fd, short events, double deadline) {
  struct pollfd p;
  int r, ms;
  p.fd = fd;
  p.events = events;
  for (;;) {
    if ((ms = qmp_poll_ms(deadline)) == 0) return ETIMEDOUT;
    r = poll(&p, 1, ms);
    if (r > 0) return 0;       /* readable, writable, or HUP/ERR: the I/O call tells */
    if (r < 0 && errno != EINTR) return errno;
  }  /* a timeout or EINTR: the next turn recomputes what is left */
}

static int setup_fd(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  fl = fcntl(fd, F_GETFD);
  if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) return -1;
  return 0;
}

static void conn_destroy(Conn *c) {
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
}

static Conn *toconn(lua_State *L) {
  return (Conn *)luaL_checkudata(L, 1, QMP_CONN_MT);
}

/* Push a new, closed connection (liolib's newprefile: harmless state first). */
static Conn *conn_new(lua_State *L, size_t max_message) {
  Conn *c = (Conn *)lua_newuserdatauv(L, sizeof(Conn), 1);
  c->fd = -1;
  c->family = AF_UNSPEC;
  c->eof = 0;
  c->dec = NULL;
  luaL_setmetatable(L, QMP_CONN_MT);
  c->dec = qmp_decoder_new(L, max_message);
  lua_setiuservalue(L, -2, 1);
  return c;
}

static size_t check_max_message(lua_State *L, int idx) {
  lua_Integer m = luaL_optinteger(L, idx, QMP_MAX_MESSAGE);
  luaL_argcheck(L, m > 0, idx, "max_message must be positive");
  return (size_t)m;
}

static const char *connect_kind(int err) {
  if (err == ETIMEDOUT) return "timeout";
  if (err == EACCES || err == EPERM) return "denied";
  return "refused";
}

/* Connect the conn's fd to sa, waiting no later than deadline: 0 or an errno. */
static int connect_fd(Conn *c, const struct sockaddr *sa, socklen_t salen, double deadline) {
  int err = 0;
  socklen_t errlen = sizeof err;
  c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) return errno;
  c->family = sa->sa_family;
  for (;;) {
    if (connect(c->fd, sa, salen) == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN && sa->sa_family == AF_UNIX) {  /* listen backlog full: retry */
      double now = qmp_monotime();
      if (now >= deadline) { err = ETIMEDOUT; break; }
      poll(NULL, 0, 10);
      continue;
    }
    if (errno != EINPROGRESS) { err = errno; break; }
    if ((err = waitfd(c->fd, POLLOUT, deadline)) != 0) break;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0) err = errno;
    break;
  }
  if (err != 0) conn_destroy(c);
  return err;
}

/* core.connect_unix(path, timeout, max_message) -> conn | nil, err */
static int core_connect_unix(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  double deadline = deadline_of(L, 2);
  struct sockaddr_un sa;
  Conn *c;
  int err;
  if (len == 0 || len >= sizeof sa.sun_path)
    return luaL_error(L, "unix socket path %s (%d bytes): the limit is %d bytes",
                      len ? "too long" : "empty", (int)len, (int)sizeof sa.sun_path - 1);
  luaL_argcheck(L, strlen(path) == len, 1, "socket path contains a NUL byte");
  c = conn_new(L, check_max_message(L, 3));
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, len);
  err = connect_fd(c, (struct sockaddr *)&sa, sizeof sa, deadline);
  if (err != 0)
    return qmp_fail(L, connect_kind(err), "cannot connect to %s: %s", path, strerror(err));
  return 1;
}

static int is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
    return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
  }
  return 0;
}

/* core.connect_tcp(host, port, timeout, max_message, allow_remote) -> conn | nil, err */
static int core_connect_tcp(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  double deadline = deadline_of(L, 3);
  size_t max_message = check_max_message(L, 4);
  int allow_remote = lua_toboolean(L, 5);
  struct addrinfo hints, *res = NULL, *ai;
  char service[16], addr[INET6_ADDRSTRLEN] = "";
  int gai, err = 0, denied = 0;
  Conn *c;
  luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
  snprintf(service, sizeof service, "%d", (int)port);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  c = conn_new(L, max_message);
  gai = getaddrinfo(host, service, &hints, &res);
  if (gai != 0)
    return qmp_fail(L, "refused", "cannot resolve %s: %s", host, gai_strerror(gai));
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    if (!allow_remote && !is_loopback(ai->ai_addr)) {
      denied = 1;
      continue;
    }
    err = connect_fd(c, ai->ai_addr, ai->ai_addrlen, deadline);
    if (err == 0 || err == ETIMEDOUT) break;
  }
  if (ai == NULL && denied && err == 0) {
    void *a = res->ai_family == AF_INET
      ? (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr
      : (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr;
    inet_ntop(res->ai_family, a, addr, sizeof addr);
    freeaddrinfo(res);
    return qmp_fail(L, "denied", "refusing TCP to non-loopback address %s "
                    "(the monitor is root-equivalent; pass allow_remote = true)", addr);
  }
  freeaddrinfo(res);
  if (c->fd < 0)
    return qmp_fail(L, connect_kind(err ? err : ECONNREFUSED), "cannot connect to %s:%d: %s",
                    host, (int)port, strerror(err ? err : ECONNREFUSED));
  {
    int one = 1;  /* commands are small and latency matters */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return 1;
}

/* core.fdopen(fd, max_message) -> conn; the connection owns fd from now on. */
static int core_fdopen(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  size_t max_message = check_max_message(L, 2);
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  struct stat st;
  Conn *c;
  luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, 1, "not a file descriptor");
  if (fstat((int)fd, &st) < 0)
    return luaL_error(L, "fd %d: %s", (int)fd, strerror(errno));
  c = conn_new(L, max_message);
  if (setup_fd((int)fd) < 0)
    return luaL_error(L, "fd %d: %s", (int)fd, strerror(errno));
  c->fd = (int)fd;
  c->family = AF_UNSPEC;
  if (S_ISSOCK(st.st_mode) && getsockname(c->fd, (struct sockaddr *)&ss, &sslen) == 0)
    c->family = ss.ss_family;
  return 1;
}

/* conn:recv([timeout]) -> message | nil, err.  timeout 0 only takes what is there. */
static int conn_recv(lua_State *L) {
  Conn *c = toconn(L);
  double deadline = deadline_of(L, 2);
  int r;
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);  /* the decoder, at 2 */
  for (;;) {
    ssize_t n;
    char *p;
    if ((r = qmp_decoder_next(L, 2)) != 0) return r;
    if (c->fd < 0) return qmp_fail(L, "closed", "the connection is closed");
    if (c->eof) {
      size_t partial = qmp_decoder_pending(c->dec);
      if (partial > 0)
        return qmp_fail(L, "closed", "connection closed by the peer inside a message "
                        "(%d bytes discarded)", (int)partial);
      return qmp_fail(L, "closed", "connection closed by the peer");
    }
    p = qmp_decoder_reserve(L, c->dec, 65536);
    n = recv(c->fd, p, 65536, 0);
    if (n > 0) { qmp_decoder_commit(c->dec, (size_t)n); continue; }
    if (n == 0) { c->eof = 1; continue; }
    if (errno == EINTR) continue;
    if (errno == ECONNRESET) { c->eof = 1; continue; }
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return qmp_fail(L, "io", "read: %s", strerror(errno));
    if (waitfd(c->fd, POLLIN, deadline) != 0)
      return qmp_fail(L, "timeout", "no message within the timeout");
  }
}

/* core.sleep(seconds): wait without busy-looping, EINTR-safe. */
static int core_sleep(lua_State *L) {
  double deadline = qmp_monotime() + luaL_checknumber(L, 1);
  int ms;
  while ((ms = qmp_poll_ms(deadline)) > 0) poll(NULL, 0, ms);
  return 0;
}

/* Collect up to MAX_FDS integers from the list at idx. */
static int check_fds(lua_State *L, int idx, int *fds) {
  int n = 0;
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  n = (int)luaL_len(L, idx);
  luaL_argcheck(L, n <= MAX_FDS, idx, "too many fds for one message");
  for (int i = 0; i < n; i++) {
    lua_Integer fd;
    lua_rawgeti(L, idx, i + 1);
    fd = luaL_checkinteger(L, -1);
    luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, idx, "fds must be file descriptors");
    fds[i] = (int)fd;
    lua_pop(L, 1);
  }
  return n;
}

/* Send p[0..n) with fds attached to its first byte. */
static ssize_t send_some(int fd, const char *p, size_t n, const int *fds, int nfds) {
  struct msghdr msg;
  struct iovec iov;
  union { char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)]; struct cmsghdr align; } ctl;
  if (nfds == 0) return send(fd, p, n, MSG_NOSIGNAL);
  memset(&msg, 0, sizeof msg);
  memset(&ctl, 0, sizeof ctl);
  iov.iov_base = (void *)p;
  iov.iov_len = n;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
  {
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
  }
  return sendmsg(fd, &msg, MSG_NOSIGNAL);
}

/*
** conn:send(text [, timeout [, fds]]) -> true | nil, err.  A send that stops
** half-way leaves the stream unusable, so it closes the connection.
*/
static int conn_send(lua_State *L) {
  Conn *c = toconn(L);
  size_t len, done = 0;
  const char *text = luaL_checklstring(L, 2, &len);
  double deadline = deadline_of(L, 3);
  int fds[MAX_FDS];
  int nfds = check_fds(L, 4, fds);
  if (c->fd < 0) return qmp_fail(L, "closed", "the connection is closed");
  if (nfds > 0 && c->family != AF_UNIX)
    return qmp_fail(L, "unsupported", "passing fds needs a unix socket connection");
  while (done < len) {
    ssize_t n = send_some(c->fd, text + done, len - done, fds, nfds);
    if (n >= 0) { done += (size_t)n; nfds = 0; continue; }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (waitfd(c->fd, POLLOUT, deadline) == 0) continue;
      if (done > 0) conn_destroy(c);
      return qmp_fail(L, "timeout", "send timed out after %d of %d bytes%s",
                      (int)done, (int)len, done > 0 ? "; connection closed" : "");
    }
    if (errno == EPIPE || errno == ECONNRESET) {
      c->eof = 1;
      return qmp_fail(L, "closed", "connection closed by the peer (%s)", strerror(errno));
    }
    return qmp_fail(L, "io", "send: %s", strerror(errno));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:peercred() -> { uid =, gid =, pid = } | nil, err (unix sockets only) */
static int conn_peercred(lua_State *L) {
  Conn *c = toconn(L);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (c->fd < 0) return qmp_fail(L, "closed", "the connection is closed");
  if (c->family != AF_UNIX)
    return qmp_fail(L, "unsupported", "peer credentials need a unix socket connection");
  if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    return qmp_fail(L, "io", "SO_PEERCRED: %s", strerror(errno));
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, cred.uid);
  lua_setfield(L, -2, "uid");
  lua_pushinteger(L, cred.gid);
  lua_setfield(L, -2, "gid");
  lua_pushinteger(L, cred.pid);
  lua_setfield(L, -2, "pid");
  return 1;
}

static int conn_fileno(lua_State *L) {
  lua_pushinteger(L, toconn(L)->fd);
  return 1;
}

/* conn:family() -> "unix" | "tcp" | "other" */
static int conn_family(lua_State *L) {
  int f = toconn(L)->family;
  lua_pushstring(L, f == AF_UNIX ? "unix" : (f == AF_INET || f == AF_INET6) ? "tcp" : "other");
  return 1;
}

/* conn:isclosed() -> true when closed locally or by the peer */
static int conn_isclosed(lua_State *L) {
  Conn *c = toconn(L);
  lua_pushboolean(L, c->fd < 0 || c->eof);
  return 1;
}

/* conn:pending() -> bytes of a partial message held */
static int conn_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)qmp_decoder_pending(toconn(L)->dec));
  return 1;
}

/* conn:close(), __gc and __close: idempotent. */
static int conn_close(lua_State *L) {
  conn_destroy(toconn(L));
  return 0;
}

static int conn_tostring(lua_State *L) {
  Conn *c = toconn(L);
  if (c->fd < 0) lua_pushliteral(L, "qmp.Conn (closed)");
  else lua_pushfstring(L, "qmp.Conn (fd=%d)", c->fd);
  return 1;
}

void qmp_transport_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"recv", conn_recv},
    {"send", conn_send},
    {"peercred", conn_peercred},
    {"fileno", conn_fileno},
    {"family", conn_family},
    {"isclosed", conn_isclosed},
    {"pending", conn_pending},
    {"close", conn_close},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"connect_unix", core_connect_unix},
    {"connect_tcp", core_connect_tcp},
    {"fdopen", core_fdopen},
    {"sleep", core_sleep},
    {NULL, NULL}
  };
  if (luaL_newmetatable(L, QMP_CONN_MT)) {
    lua_pushcfunction(L, conn_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, conn_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, conn_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
