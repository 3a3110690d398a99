/*
** transport.c: monitor connections over unix sockets, TCP or an inherited fd.
**
** Nothing here waits but core.resolve (getaddrinfo) and core.sleep:
** open_unix/open_tcp only start a connect, and conn:finish_connect,
** conn:take, conn:write and conn:buffered do what can be done now; the
** caller polls the fd (core.poll) and calls again when it is ready.
** conn:drain takes many messages in one call, reading at most
** MAX_DRAIN_READS times, so that a flood cannot hold it.
** Every fd is non-blocking and close-on-exec; sends use MSG_NOSIGNAL so a
** dead peer gives an error, never SIGPIPE.  A connection owns a streaming
** decoder (decode.c): conn:take() returns whole decoded messages.
** Only conn:close() closes the fd: an event loop may still be polling it.
** A unix conn reads with recvmsg() and keeps the fds the peer passes
** (SCM_RIGHTS, close-on-exec from the start) in a stash of MAX_FDS that
** conn:take_fds() empties into qmp.Fd objects; fds beyond its room are
** closed at once and counted (conn:dropped_fds()).
** qmp.Fd objects also come from core.socketpair() and core.pipe() (the ends
** a child process gets, spawn.c), and read and write without waiting.
**
** World events return fail + { kind, message }: "refused", "denied",
** "timeout" (a TCP connect the kernel gave up on), "closed", "unsupported",
** "io".  Misuse raises.
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "qmp.h"

#define MAX_FDS 16       /* fds passed with one command (SCM_RIGHTS); core.MAX_FDS */
#define READ_SIZE 65536  /* bytes asked of one recv() */
#define MAX_DRAIN_READS 4  /* recv()s by one conn:drain */
#define MAX_ADDRS 32     /* addresses kept by core.resolve */
#define ADDR_LEN 64      /* a numeric address: INET6_ADDRSTRLEN + "%" + scope */

#define FD_READ_SIZE 65536          /* fd:read()'s default max */
#define FD_READ_MAX (1024 * 1024)   /* fd:read()'s largest max */

struct qmp_conn {
  int fd;             /* -1 once closed */
  int family;         /* AF_UNIX, AF_INET or AF_INET6 */
  int eof;            /* the peer closed its end */
  int connecting;     /* a non-blocking connect may still be under way */
  int connerr;        /* why that connect failed, once known (sticky) */
  qmp_decoder *dec;   /* user value 1 keeps it alive */
  int fds[MAX_FDS];   /* fds received (unix only), not yet taken */
  int nfds;           /* how many fds[] holds */
  lua_Integer dropped;  /* fds received but closed: no room in fds[] */
  char label[128];    /* path or host:port for messages (truncated) */
};
typedef struct qmp_conn Conn;

typedef struct Fd {
  int fd;             /* -1 once closed (or released) */
  int sock;           /* 1 a socket (send), 0 not (write), -1 not known yet */
} Fd;

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
  while (c->nfds > 0) close(c->fds[--c->nfds]);
}

static Conn *toconn(lua_State *L) {
  return (Conn *)luaL_checkudata(L, 1, QMP_CONN_MT);
}

/* Push a new, closed connection (liolib's newprefile: harmless state first). */
static Conn *conn_new(lua_State *L, size_t max_message) {
  Conn *c = (Conn *)lua_newuserdatauv(L, sizeof(Conn), 1);
  c->fd = -1;
  c->family = AF_UNSPEC;
  c->eof = c->connecting = c->connerr = 0;
  c->dec = NULL;
  c->nfds = 0;
  c->dropped = 0;
  c->label[0] = '\0';
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

/* For other files (listen.c): see qmp.h. */
qmp_conn *qmp_conn_new(lua_State *L, int max_message_arg) {
  return conn_new(L, check_max_message(L, max_message_arg));
}

void qmp_conn_adopt(qmp_conn *c, int fd, int family, const char *label) {
  c->fd = fd;
  c->family = family;
  snprintf(c->label, sizeof c->label, "%s", label);
}

/* The kind of a failed socket() or connect().  No fd or memory left is this
** process's trouble, not the peer refusing: "io", so that a loop of many
** clients tells it from a VM that is down. */
static const char *connect_kind(int err) {
  if (err == ETIMEDOUT) return "timeout";
  if (err == EACCES || err == EPERM) return "denied";
  if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) return "io";
  return "refused";
}

/* What to do about a failed socket(), for its message ("" for the others). */
static const char *connect_hint(int err) {
  if (err == EMFILE) return " (this process has no file descriptor left: see ulimit -n)";
  if (err == ENFILE) return " (the system has no file descriptor left)";
  return "";
}

/* Start connecting a new socket to sa without waiting: 0 when connected at
** once, EINPROGRESS (conn:finish_connect() tells), or an errno (no fd left). */
static int start_connect(Conn *c, const struct sockaddr *sa, socklen_t salen) {
  int err;
  c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) return errno;
  c->family = sa->sa_family;
  if (connect(c->fd, sa, salen) == 0) return 0;
  err = errno;
  if (err == EINTR) err = EINPROGRESS;  /* it goes on; a second connect() would say EALREADY */
  if (err == EINPROGRESS) {
    c->connecting = 1;
    return err;
  }
  conn_destroy(c);
  return err;
}

/* Where a non-blocking connect stands, without waiting: 1 connected, 0 still
** under way, -1 failed (c->connerr, kept: SO_ERROR reads only once). */
static int connect_state(Conn *c) {
  struct pollfd p;
  int r, err = 0;
  socklen_t errlen = sizeof err;
  if (c->connerr != 0) return -1;
  if (!c->connecting) return 1;
  p.fd = c->fd;
  p.events = POLLOUT;
  p.revents = 0;
  while ((r = poll(&p, 1, 0)) < 0 && errno == EINTR) {}
  if (r == 0) return 0;
  if (r < 0) err = errno;
  else if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0) err = errno;
  if (err != 0) {
    c->connerr = err;
    return -1;
  }
  c->connecting = 0;
  return 1;
}

static void push_connect_error(lua_State *L, Conn *c) {
  qmp_pusherror(L, connect_kind(c->connerr), "cannot connect to %s: %s", c->label,
                strerror(c->connerr));
}

static int connect_fail(lua_State *L, Conn *c) {
  luaL_pushfail(L);
  push_connect_error(L, c);
  return 2;
}

/* Check a unix socket path (raises on misuse) and fill sa with it. */
const char *qmp_check_unix_path(lua_State *L, int idx, struct sockaddr_un *sa) {
  size_t len;
  const char *path = luaL_checklstring(L, idx, &len);
  if (len == 0 || len >= sizeof sa->sun_path)
    luaL_error(L, "unix socket path %s (%d bytes): the limit is %d bytes",
               len ? "too long" : "empty", (int)len, (int)sizeof sa->sun_path - 1);
  luaL_argcheck(L, strlen(path) == len, idx, "socket path contains a NUL byte");
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, path, len);
  return path;
}

/* What path is when it is there but not a socket ("a directory"), else NULL. */
static const char *not_a_socket(const char *path) {
  struct stat st;
  if (stat(path, &st) < 0 || S_ISSOCK(st.st_mode)) return NULL;
  if (S_ISREG(st.st_mode)) return "a regular file";
  if (S_ISDIR(st.st_mode)) return "a directory";
  if (S_ISFIFO(st.st_mode)) return "a named pipe";
  if (S_ISCHR(st.st_mode)) return "a character device";
  if (S_ISBLK(st.st_mode)) return "a block device";
  return "not a socket either";
}

/* nil, err for a failed unix connect, saying what to check. */
static int unix_fail(lua_State *L, const char *path, int err) {
  const char *what;
  switch (err) {
    case ENOENT:
      return qmp_fail(L, "refused", "no socket at %s (is QEMU running with -qmp unix:%s,server=on?)",
                      path, path);
    case ECONNREFUSED:  /* also what connect() says of a file that is no socket */
      if ((what = not_a_socket(path)) != NULL)
        return qmp_fail(L, "refused", "%s is not a socket (it is %s)", path, what);
      return qmp_fail(L, "refused", "cannot connect to %s: %s (nobody is listening: "
                      "QEMU may have exited)", path, strerror(err));
    case EAGAIN:
      return qmp_fail(L, "refused", "cannot connect to %s: its listen backlog is full "
                      "(the server is not accepting connections)", path);
    default:
      return qmp_fail(L, connect_kind(err), "cannot connect to %s: %s%s", path, strerror(err),
                      connect_hint(err));
  }
}

/* core.open_unix(path [, max_message]) -> conn, connected | nil, err.
** Never waits: when connected is false, poll the fd for "w" and call
** conn:finish_connect(). */
static int core_open_unix(lua_State *L) {
  struct sockaddr_un sa;
  const char *path = qmp_check_unix_path(L, 1, &sa);
  Conn *c = conn_new(L, check_max_message(L, 2));
  int err;
  snprintf(c->label, sizeof c->label, "%s", path);
  err = start_connect(c, (struct sockaddr *)&sa, sizeof sa);
  if (err != 0 && err != EINPROGRESS) return unix_fail(L, path, err);
  lua_pushboolean(L, err == 0);
  return 2;
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

static int denied_fail(lua_State *L, const char *addr) {
  return qmp_fail(L, "denied", "refusing TCP to non-loopback address %s "
                  "(the monitor is root-equivalent; pass allow_remote = true)", addr);
}

static void set_nodelay(int fd) {
  int one = 1;  /* commands are small and latency matters */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/*
** core.resolve(host, port [, allow_remote]) -> { address, ... } | nil, err
** Numeric addresses for core.open_tcp, in getaddrinfo order, without
** duplicates; only loopback ones unless allow_remote.  Blocks in getaddrinfo.
** They are copied out before anything is pushed: a memory error while
** pushing must not leak the getaddrinfo list.
*/
static int core_resolve(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  int allow_remote = lua_toboolean(L, 3);
  struct addrinfo hints, *res = NULL, *ai;
  char service[16], addrs[MAX_ADDRS][ADDR_LEN], denied[ADDR_LEN] = "";
  int gai, n = 0, i;
  luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
  snprintf(service, sizeof service, "%d", (int)port);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  gai = getaddrinfo(host, service, &hints, &res);
  if (gai != 0)
    return qmp_fail(L, "refused", "cannot resolve %s: %s", host, gai_strerror(gai));
  for (ai = res; ai != NULL && n < MAX_ADDRS; ai = ai->ai_next) {
    char a[ADDR_LEN];
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
        || getnameinfo(ai->ai_addr, ai->ai_addrlen, a, sizeof a, NULL, 0, NI_NUMERICHOST) != 0)
      continue;
    if (!allow_remote && !is_loopback(ai->ai_addr)) {
      if (denied[0] == '\0') memcpy(denied, a, sizeof a);
      continue;
    }
    for (i = 0; i < n && strcmp(addrs[i], a) != 0; i++) {}
    if (i == n) memcpy(addrs[n++], a, sizeof a);
  }
  freeaddrinfo(res);
  if (n == 0 && denied[0] != '\0') return denied_fail(L, denied);
  if (n == 0) return qmp_fail(L, "refused", "cannot resolve %s: no IPv4 or IPv6 address", host);
  lua_createtable(L, n, 0);
  for (i = 0; i < n; i++) {
    lua_pushstring(L, addrs[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* core.open_tcp(numeric_host, port [, max_message]) -> conn, connected | nil, err.
** One numeric address (from core.resolve), so nothing here can block. */
static int core_open_tcp(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  size_t max_message = check_max_message(L, 3);
  struct addrinfo hints, *res = NULL;
  char service[16];
  int gai, err;
  Conn *c;
  luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
  snprintf(service, sizeof service, "%d", (int)port);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  c = conn_new(L, max_message);  /* first: a memory error must not leak res */
  if (strchr(host, ':') != NULL) snprintf(c->label, sizeof c->label, "[%s]:%d", host, (int)port);
  else snprintf(c->label, sizeof c->label, "%s:%d", host, (int)port);
  gai = getaddrinfo(host, service, &hints, &res);
  if (gai == EAI_NONAME)
    return luaL_argerror(L, 1, "not a numeric address (core.resolve gives those)");
  if (gai != 0)
    return qmp_fail(L, "io", "cannot use address %s: %s", host, gai_strerror(gai));
  err = start_connect(c, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (err != 0 && err != EINPROGRESS)
    return qmp_fail(L, connect_kind(err), "cannot connect to %s: %s%s", c->label, strerror(err),
                    connect_hint(err));
  set_nodelay(c->fd);
  lua_pushboolean(L, err == 0);
  return 2;
}

/* core.fdopen(fd, max_message) -> conn.  Once the Conn exists it owns fd,
** failures included: setup_fd failing closes it.  Before that (not an fd,
** no memory for the Conn) fd is still the caller's. */
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
  c->fd = (int)fd;
  snprintf(c->label, sizeof c->label, "fd %d", c->fd);
  if (setup_fd(c->fd) < 0) {
    int err = errno;
    conn_destroy(c);
    return luaL_error(L, "fd %d: %s", (int)fd, strerror(err));
  }
  c->family = AF_UNSPEC;
  if (S_ISSOCK(st.st_mode) && getsockname(c->fd, (struct sockaddr *)&ss, &sslen) == 0)
    c->family = ss.ss_family;
  return 1;
}

/* nil, err when the conn is closed; 0 while it is open. */
static int unusable(lua_State *L, Conn *c) {
  if (c->fd < 0) return qmp_fail(L, "closed", "the connection is closed");
  return 0;
}

/* The error once the peer's end is closed and no whole message is left. */
static void push_eof_error(lua_State *L, Conn *c) {
  size_t partial = qmp_decoder_pending(c->dec);
  if (partial > 0)
    qmp_pusherror(L, "closed", "connection closed by the peer inside a message "
                  "(%d bytes discarded)", (int)partial);
  else
    qmp_pusherror(L, "closed", "connection closed by the peer");
}

static int eof_fail(lua_State *L, Conn *c) {
  luaL_pushfail(L);
  push_eof_error(L, c);
  return 2;
}

/* Keep a received fd in the stash, or close it when the stash is full. */
static void stash_fd(Conn *c, int fd) {
  if (c->nfds < MAX_FDS) {
    c->fds[c->nfds++] = fd;
  } else {
    close(fd);
    c->dropped++;
  }
}

/* recv() that also takes the fds passed with the bytes (SCM_RIGHTS) into
** the stash.  Room for MAX_FDS in one message, as conn:write sends: the
** kernel closes those a bigger message carried beyond it (MSG_CTRUNC)
** without saying how many, so they count as one. */
static ssize_t recv_fds(Conn *c, char *p, size_t len) {
  union { char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)]; struct cmsghdr align; } ctl;
  struct msghdr msg;
  struct iovec iov;
  struct cmsghdr *cm;
  ssize_t n;
  memset(&msg, 0, sizeof msg);
  iov.iov_base = p;
  iov.iov_len = len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  if ((n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC)) < 0) return n;
  for (cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
    size_t k, count;
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (k = 0; k < count; k++) {
      int fd;
      memcpy(&fd, CMSG_DATA(cm) + k * sizeof(int), sizeof fd);
      stash_fd(c, fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) c->dropped++;
  return n;
}

/* One recv() into the decoder: 2 it filled all READ_SIZE bytes asked (more
** may wait), 1 fewer came (or the end: c->eof), 0 none yet (EAGAIN), -1
** failed (errno says why). */
static int read_some(lua_State *L, Conn *c) {
  char *p = qmp_decoder_reserve(L, c->dec, READ_SIZE);
  ssize_t n;
  for (;;) {
    n = c->family == AF_UNIX ? recv_fds(c, p, READ_SIZE) : recv(c->fd, p, READ_SIZE, 0);
    if (n >= 0 || errno != EINTR) break;
  }
  if (n > 0) qmp_decoder_commit(c->dec, (size_t)n);
  else if (n == 0 || errno == ECONNRESET) c->eof = 1;
  else if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
  else return -1;
  return n == READ_SIZE ? 2 : 1;
}

/*
** conn:take() -> message | false | nil, err.  Never waits: a whole message
** already held, else one recv() and another look; false when nothing whole
** is there yet.  Every whole message is given before an EOF is reported.
*/
static int conn_take(lua_State *L) {
  Conn *c = toconn(L);
  int r;
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);  /* the decoder, at 2 */
  if ((r = qmp_decoder_next(L, 2)) != 0) return r;
  if ((r = unusable(L, c)) != 0) return r;
  if (!c->eof) {
    if ((r = connect_state(c)) < 0) return connect_fail(L, c);
    if (r == 0 || (r = read_some(L, c)) == 0) {
      lua_pushboolean(L, 0);
      return 1;
    }
    if (r < 0) return qmp_fail(L, "io", "read: %s", strerror(errno));
    if ((r = qmp_decoder_next(L, 2)) != 0) return r;
  }
  if (c->eof) return eof_fail(L, c);
  lua_pushboolean(L, 0);
  return 1;
}

/*
** conn:drain(limit [, interest [, list]]) -> list, skipped, err|nil, events, wanted.
** take() for many messages in one call: up to limit of them, listed or
** skipped (d:drain in decode.c says which are), reading as take() does but
** at most MAX_DRAIN_READS times, and not again after a read that took
** less than it asked: the socket was empty then, and a recv() now would
** most likely say so (EAGAIN) at the price of a syscall; what comes later
** makes the fd readable for the next call.  Never waits; an empty list when nothing
** whole is there yet.  An error ends the list: the messages before it come
** with it, and it comes again from the next call as from take().
** list: a table to fill again instead of a new one (the caller's, reused
** from call to call: it ends at the messages, #list is their number).
** wanted: how many listed events had their name found in interest here;
** when it equals #list, the caller need not ask the set again.
*/
static int drain_results(lua_State *L, qmp_batch *b, int failed) {
  int n = qmp_batch_finish(L, b, failed);
  lua_pushinteger(L, b->wanted);
  return n + 1;
}

static int conn_drain(lua_State *L) {
  Conn *c = toconn(L);
  qmp_batch b;
  int reads = 0, r, emptied = 0;  /* emptied: the last read took less than it asked */
  qmp_batch_start(L, &b, 2, 1);
  lua_getiuservalue(L, 1, 1);  /* the decoder, above the list */
  for (;;) {
    if (qmp_decoder_drain(L, b.list + 1, &b)) break;  /* the error is on top */
    if (b.n + b.skipped >= b.limit) return drain_results(L, &b, 0);
    if (c->fd < 0) {
      qmp_pusherror(L, "closed", "the connection is closed");
      break;
    }
    if (c->eof) {
      push_eof_error(L, c);
      break;
    }
    if (emptied) return drain_results(L, &b, 0);
    if ((r = connect_state(c)) < 0) {
      push_connect_error(L, c);
      break;
    }
    if (r == 0 || reads++ == MAX_DRAIN_READS || (r = read_some(L, c)) == 0)
      return drain_results(L, &b, 0);
    if (r < 0) {
      qmp_pusherror(L, "io", "read: %s", strerror(errno));
      break;
    }
    emptied = r == 1;
  }
  return drain_results(L, &b, 1);
}

/* conn:buffered() -> true when take() would answer without reading the
** socket: a whole message (or a framing error) is held, or the stream has
** ended.  Then polling the fd first could wait for nothing. */
static int conn_buffered(lua_State *L) {
  Conn *c = toconn(L);
  lua_pushboolean(L, c->fd < 0 || c->eof || c->connerr != 0
                     || qmp_decoder_ready(L, c->dec));
  return 1;
}

/* conn:finish_connect() -> true | false (still under way) | nil, err */
static int conn_finish_connect(lua_State *L) {
  Conn *c = toconn(L);
  int r;
  if (c->fd < 0) return qmp_fail(L, "closed", "the connection is closed");
  if ((r = connect_state(c)) < 0) return connect_fail(L, c);
  lua_pushboolean(L, r);
  return 1;
}

/* Collect up to MAX_FDS integers from the list at idx. */
static int check_fds(lua_State *L, int idx, int *fds) {
  lua_Integer n;
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  n = luaL_len(L, idx);  /* a __len may say anything: check before it sizes a copy */
  luaL_argcheck(L, n >= 0, idx, "the fds list has a negative length");
  luaL_argcheck(L, n <= MAX_FDS, idx, "too many fds for one message");
  for (int i = 0; i < (int)n; i++) {
    lua_Integer fd;
    int isint;
    lua_rawgeti(L, idx, i + 1);
    fd = lua_tointegerx(L, -1, &isint);
    luaL_argcheck(L, isint && fd >= 0 && fd <= INT_MAX, idx, "fds must be file descriptors");
    fds[i] = (int)fd;
    lua_pop(L, 1);
  }
  return (int)n;
}

/* core.isfd(n) -> whether n is an open file descriptor of this process:
** the Lua layer checks a command's fds with it when the command is made,
** as a closed one would fail the send later, ending the session. */
static int core_isfd(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_pushboolean(L, fd >= 0 && fd <= INT_MAX && fcntl((int)fd, F_GETFD) != -1);
  return 1;
}

/* core.isatty(n) -> whether fd n is a terminal (colour, progress bars);
** no child process, so no signal is held off meanwhile. */
static int core_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_pushboolean(L, fd >= 0 && fd <= INT_MAX && isatty((int)fd));
  return 1;
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
** conn:write(text, offset [, fds]) -> new_offset | nil, err.  Never waits:
** sends what the socket takes now of text from the 0-based offset and
** returns where to go on from (#text when all is sent; offset unchanged
** when the socket is full).  fds ride on the first byte, so only with
** offset 0.  A short write is normal: the caller keeps the offset and
** calls again when poll says "w".
*/
static int conn_write(lua_State *L) {
  Conn *c = toconn(L);
  size_t len, off;
  const char *text = luaL_checklstring(L, 2, &len);
  lua_Integer o = luaL_checkinteger(L, 3);
  int fds[MAX_FDS];
  int nfds, r;
  luaL_argcheck(L, o >= 0 && (lua_Unsigned)o <= len, 3, "offset out of range");
  nfds = check_fds(L, 4, fds);
  luaL_argcheck(L, nfds == 0 || len > 0, 4, "fds need at least one byte of text");
  if ((r = unusable(L, c)) != 0) return r;
  if (nfds > 0 && c->family != AF_UNIX)
    return qmp_fail(L, "unsupported", "passing fds needs a unix socket connection");
  if ((r = connect_state(c)) < 0) return connect_fail(L, c);
  off = (size_t)o;
  if (off > 0) nfds = 0;  /* they went with byte 0 */
  while (r > 0 && off < len) {
    ssize_t n = send_some(c->fd, text + off, len - off, fds, nfds);
    if (n > 0) { off += (size_t)n; nfds = 0; continue; }
    if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK) break;
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET) {
      c->eof = 1;
      return qmp_fail(L, "closed", "connection closed by the peer (%s)", strerror(errno));
    }
    return qmp_fail(L, "io", "send: %s", strerror(errno));
  }
  lua_pushinteger(L, (lua_Integer)off);
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

/* conn:pending() -> bytes of a partial message held */
static int conn_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)qmp_decoder_pending(toconn(L)->dec));
  return 1;
}

/* conn:close(), __gc and __close: idempotent; the fds not taken go too. */
static int conn_close(lua_State *L) {
  conn_destroy(toconn(L));
  return 0;
}

/* {====================================================== */
/* qmp.Fd: received fds, socketpair and pipe ends */

static Fd *tofd(lua_State *L) {
  return (Fd *)luaL_checkudata(L, 1, QMP_FD_MT);
}

/* Push a new, closed qmp.Fd (harmless first: the fd goes in afterwards). */
static Fd *fd_new(lua_State *L, int sock) {
  Fd *f = (Fd *)lua_newuserdatauv(L, sizeof(Fd), 0);
  f->fd = -1;
  f->sock = sock;
  luaL_setmetatable(L, QMP_FD_MT);
  return f;
}

/* For spawn.c (qmp.h): the fd of the qmp.Fd at idx, -1 when closed, -2
** when idx holds no qmp.Fd. */
int qmp_fd_get(lua_State *L, int idx) {
  Fd *f = (Fd *)luaL_testudata(L, idx, QMP_FD_MT);
  return f == NULL ? -2 : f->fd;
}

/*
** conn:take_fds() -> { fd, ... }: the fds received so far as qmp.Fd
** objects, in the order they came (possibly none); the stash is then empty.
** Every object is made (fd -1) before any fd moves into one: a memory
** error leaves them all with the conn, which closes them in the end.
*/
static int conn_take_fds(lua_State *L) {
  Conn *c = toconn(L);
  Fd *boxes[MAX_FDS];
  int i, n = c->nfds;
  lua_createtable(L, n, 0);
  for (i = 0; i < n; i++) {
    boxes[i] = fd_new(L, -1);
    lua_rawseti(L, -2, i + 1);  /* the list keeps it alive */
  }
  for (i = 0; i < n; i++) boxes[i]->fd = c->fds[i];
  c->nfds = 0;
  return 1;
}

/* conn:dropped_fds() -> how many received fds were closed for lack of room */
static int conn_dropped_fds(lua_State *L) {
  lua_pushinteger(L, toconn(L)->dropped);
  return 1;
}

/* core.socketpair() -> a, b | nil, err: the two ends of a unix stream
** socketpair as qmp.Fd objects, non-blocking and close-on-exec. */
static int core_socketpair(lua_State *L) {
  Fd *a = fd_new(L, 1), *b = fd_new(L, 1);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    return qmp_fail(L, "io", "socketpair: %s", strerror(errno));
  a->fd = sv[0];
  b->fd = sv[1];
  return 2;
}

/* What a pipe is asked to hold: a child writing stderr (QEMU's -trace)
** while nobody reads waits once it is full; 1 MiB is the kernel's default
** limit for an unprivileged process (/proc/sys/fs/pipe-max-size). */
#define PIPE_ROOM (1 << 20)

/* core.pipe() -> r, w | nil, err: a pipe's read and write ends as qmp.Fd
** objects, non-blocking and close-on-exec, holding PIPE_ROOM bytes where
** the kernel allows (else its default, 64 KiB). */
static int core_pipe(lua_State *L) {
  Fd *r = fd_new(L, 0), *w = fd_new(L, 0);
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
    return qmp_fail(L, "io", "pipe: %s", strerror(errno));
#if defined(F_SETPIPE_SZ)
  (void)fcntl(p[1], F_SETPIPE_SZ, PIPE_ROOM);   /* a smaller pipe still works */
#endif
  r->fd = p[0];
  w->fd = p[1];
  return 2;
}

/* nil, err when the Fd is closed; 0 while it is open. */
static int fd_unusable(lua_State *L, Fd *f) {
  if (f->fd < 0) return qmp_fail(L, "closed", "the fd is closed");
  return 0;
}

/*
** fd:read([max]) -> text | false | nil, err.  Never waits (on a
** non-blocking fd): 1 to max bytes (default 65536, at most 1 MiB), false
** when none are there now, or "closed" ("end of file") at the end of the
** stream or when the peer reset it; "io" for other failures.
*/
static int fd_read(lua_State *L) {
  Fd *f = tofd(L);
  lua_Integer max = luaL_optinteger(L, 2, FD_READ_SIZE);
  luaL_Buffer b;
  char *p;
  ssize_t n;
  int r;
  luaL_argcheck(L, max >= 1 && max <= FD_READ_MAX, 2, "max must be 1 to 1048576 bytes");
  if ((r = fd_unusable(L, f)) != 0) return r;
  p = luaL_buffinitsize(L, &b, (size_t)max);
  while ((n = read(f->fd, p, (size_t)max)) < 0 && errno == EINTR) {}
  if (n > 0) {
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
  }
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (n == 0 || errno == ECONNRESET) return qmp_fail(L, "closed", "end of file");
  return qmp_fail(L, "io", "read: %s", strerror(errno));
}

/* write() to a pipe whose reader is gone raises SIGPIPE, which would end
** the process (send() has MSG_NOSIGNAL, write() nothing like it): the
** signal is blocked for the call, and the one the call raised is taken
** before it is unblocked.  One that was already pending stays so. */
static ssize_t write_nosignal(int fd, const char *p, size_t n) {
  sigset_t pipe_only, old, pending;
  struct timespec now = {0, 0};
  ssize_t r;
  int err, was_pending;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  sigprocmask(SIG_BLOCK, &pipe_only, &old);
  sigpending(&pending);
  was_pending = sigismember(&pending, SIGPIPE);
  r = write(fd, p, n);
  err = errno;
  if (r < 0 && err == EPIPE && !was_pending)
    while (sigtimedwait(&pipe_only, NULL, &now) < 0 && errno == EINTR) {}
  sigprocmask(SIG_SETMASK, &old, NULL);
  errno = err;
  return r;
}

/*
** fd:write(text [, offset]) -> new_offset | nil, err.  Never waits (on a
** non-blocking fd): writes what the fd takes now of text from the 0-based
** offset (default 0) and returns where to go on from (#text when all is
** written; offset unchanged when the fd is full).  Sockets use send() with
** MSG_NOSIGNAL, other fds write(): neither raises SIGPIPE.  A reader that
** is gone gives "closed"; other failures "io".
*/
static int fd_write(lua_State *L) {
  Fd *f = tofd(L);
  size_t len, off;
  const char *text = luaL_checklstring(L, 2, &len);
  lua_Integer o = luaL_optinteger(L, 3, 0);
  int r;
  luaL_argcheck(L, o >= 0 && (lua_Unsigned)o <= len, 3, "offset out of range");
  if ((r = fd_unusable(L, f)) != 0) return r;
  if (f->sock < 0) {
    struct stat st;
    f->sock = fstat(f->fd, &st) == 0 && S_ISSOCK(st.st_mode);
  }
  off = (size_t)o;
  while (off < len) {
    ssize_t n = f->sock ? send(f->fd, text + off, len - off, MSG_NOSIGNAL)
                        : write_nosignal(f->fd, text + off, len - off);
    if (n > 0) { off += (size_t)n; continue; }
    if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK) break;
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET)
      return qmp_fail(L, "closed", "closed by the peer (%s)", strerror(errno));
    return qmp_fail(L, "io", "write: %s", strerror(errno));
  }
  lua_pushinteger(L, (lua_Integer)off);
  return 1;
}

/* fd:release() -> the descriptor, which the caller owns from now on (the
** object is closed).  Raises when it is closed already. */
static int fd_release(lua_State *L) {
  Fd *f = tofd(L);
  int fd = f->fd;
  if (fd < 0) return luaL_error(L, "attempt to release a closed qmp.Fd");
  f->fd = -1;
  lua_pushinteger(L, fd);
  return 1;
}

/* fd:fileno() -> the descriptor, -1 once closed */
static int fd_fileno(lua_State *L) {
  lua_pushinteger(L, tofd(L)->fd);
  return 1;
}

/* fd:close(), __gc and __close: idempotent. */
static int fd_close(lua_State *L) {
  Fd *f = tofd(L);
  if (f->fd >= 0) {
    close(f->fd);
    f->fd = -1;
  }
  return 0;
}

static int fd_tostring(lua_State *L) {
  Fd *f = tofd(L);
  if (f->fd < 0) lua_pushliteral(L, "qmp.Fd (closed)");
  else lua_pushfstring(L, "qmp.Fd (fd=%d)", f->fd);
  return 1;
}

/* }====================================================== */

static int conn_tostring(lua_State *L) {
  Conn *c = toconn(L);
  if (c->fd < 0) lua_pushliteral(L, "qmp.Conn (closed)");
  else lua_pushfstring(L, "qmp.Conn (fd=%d)", c->fd);
  return 1;
}

void qmp_transport_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"take", conn_take},
    {"drain", conn_drain},
    {"write", conn_write},
    {"buffered", conn_buffered},
    {"finish_connect", conn_finish_connect},
    {"peercred", conn_peercred},
    {"fileno", conn_fileno},
    {"family", conn_family},
    {"pending", conn_pending},
    {"take_fds", conn_take_fds},
    {"dropped_fds", conn_dropped_fds},
    {"close", conn_close},
    {NULL, NULL}
  };
  static const luaL_Reg fd_methods[] = {
    {"read", fd_read},
    {"write", fd_write},
    {"release", fd_release},
    {"fileno", fd_fileno},
    {"close", fd_close},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"open_unix", core_open_unix},
    {"open_tcp", core_open_tcp},
    {"resolve", core_resolve},
    {"fdopen", core_fdopen},
    {"isfd", core_isfd},
    {"isatty", core_isatty},
    {"socketpair", core_socketpair},
    {"pipe", core_pipe},
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
  if (luaL_newmetatable(L, QMP_FD_MT)) {
    lua_pushcfunction(L, fd_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, fd_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, fd_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, fd_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  qmp_decoder_setfuncs(L, funcs);  /* open_*, fdopen: their decoders need the module state */
  lua_pushinteger(L, MAX_FDS);  /* the Lua layer checks a command's fds against it */
  lua_setfield(L, -2, "MAX_FDS");
}
