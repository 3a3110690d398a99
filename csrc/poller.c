/*
** poller.c: a persistent set of (fd, interest), for qmp.loop.
**
** core.poller([backend]) makes one.  The loop registers a client's fd once
** (p:set) and changes it only when the client's fd or interest changes, so
** that a wait costs what is ready, not what is watched: a fleet of idle
** monitors costs nothing per event.  Two backends with one behaviour:
** "epoll" (Linux; the default there) keeps the set in the kernel; "poll"
** (everywhere, and for the specs) keeps it in an array that poll() is
** handed whole, without rebuilding it from Lua.  p:wait(timeout, out) puts
** the ready fds in out[1..n] and returns n; as in every wait of the core,
** the deadline is on CLOCK_MONOTONIC, EINTR is retried and a signal caught
** with core.catch_signals ends it with an "interrupted" error (signal.c).
** p:fileno() is the epoll fd (-1 with the poll backend): it is readable
** when any fd in the set is ready, so that another poll()/epoll can wait on
** the whole set (a poller inside another loop).
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/epoll.h>
#define QMP_HAVE_EPOLL 1
#endif

#include "qmp.h"

#define QMP_POLLER_MT "qmp.Poller"

/* Ready fds one wait reports at most; the others are reported by the next
** wait (both backends are level-triggered: nothing ready is lost). */
#define MAX_READY 256

/* The epoll data of the signal pipe: no fd has this number. */
#define SIGNAL_TAG ((uint64_t)-1)

/* User values of the poll backend: the pollfd array (a userdata that grows
** by replacement) and the table fd -> its 1-based place in the array. */
#define UV_SET   1
#define UV_PLACE 2

typedef struct Poller {
  int epfd;        /* epoll: its fd (-1 once closed); poll backend: -2 */
  int sigfd;       /* epoll: the signal pipe registered, -1 none */
  int n, cap;      /* poll backend: entries used, entries allocated (+1 for the pipe) */
  int next;        /* poll backend: where the next scan for ready fds starts */
  int closed;
} Poller;

static Poller *topoller(lua_State *L) {
  Poller *p = (Poller *)luaL_checkudata(L, 1, QMP_POLLER_MT);
  if (p->closed) luaL_error(L, "qmp.core: the poller is closed");
  return p;
}

static int is_epoll(const Poller *p) {
  return p->epfd >= 0;
}

static int check_fd(lua_State *L, int idx) {
  lua_Integer fd = luaL_checkinteger(L, idx);
  luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, idx, "not a file descriptor");
  return (int)fd;
}

static short check_interest(lua_State *L, int idx) {
  static const char *const names[] = { "r", "w", "rw", NULL };
  static const short masks[] = { POLLIN, POLLOUT, POLLIN | POLLOUT };
  return masks[luaL_checkoption(L, idx, NULL, names)];
}

/* {====================================================== */
/* The poll backend: a dense array, entry k of fd at place[fd] = k + 1 */

static struct pollfd *poll_set(lua_State *L, int pidx) {
  struct pollfd *set;
  lua_getiuservalue(L, pidx, UV_SET);
  set = (struct pollfd *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return set;
}

/* Room for one more entry (and the pipe after them): the array doubles. */
static struct pollfd *poll_grow(lua_State *L, Poller *p, int pidx) {
  struct pollfd *old = poll_set(L, pidx), *set;
  int cap;
  if (p->n + 1 < p->cap) return old;
  if (p->cap > INT_MAX / 2) luaL_error(L, "qmp.core: too many fds in one poller");
  cap = p->cap * 2;
  set = (struct pollfd *)lua_newuserdatauv(L, (size_t)cap * sizeof *set, 0);
  memcpy(set, old, (size_t)p->n * sizeof *set);
  lua_setiuservalue(L, pidx, UV_SET);
  p->cap = cap;
  return set;
}

/* The place of fd in the array (0: absent). */
static int poll_place(lua_State *L, int pidx, int fd) {
  int place;
  lua_getiuservalue(L, pidx, UV_PLACE);
  lua_rawgeti(L, -1, fd);
  place = (int)lua_tointeger(L, -1);
  lua_pop(L, 2);
  return place;
}

static void poll_set_place(lua_State *L, int pidx, int fd, int place) {
  lua_getiuservalue(L, pidx, UV_PLACE);
  if (place > 0) lua_pushinteger(L, place); else lua_pushnil(L);
  lua_rawseti(L, -2, fd);
  lua_pop(L, 1);
}

static void poll_add(lua_State *L, Poller *p, int fd, short events) {
  int place = poll_place(L, 1, fd);
  struct pollfd *set = place ? poll_set(L, 1) : poll_grow(L, p, 1);
  if (!place) {
    place = ++p->n;
    poll_set_place(L, 1, fd, place);
  }
  set[place - 1].fd = fd;
  set[place - 1].events = events;
  set[place - 1].revents = 0;
}

/* The last entry takes the place of the one removed. */
static void poll_remove(lua_State *L, Poller *p, int fd) {
  int place = poll_place(L, 1, fd);
  struct pollfd *set;
  if (!place) return;
  set = poll_set(L, 1);
  poll_set_place(L, 1, fd, 0);
  if (place != p->n) {
    set[place - 1] = set[p->n - 1];
    poll_set_place(L, 1, set[place - 1].fd, place);
  }
  p->n--;
}

/* Put up to MAX_READY ready fds into the table at 'out', starting the scan
** where the last one stopped so that no fd is always served last. */
static int poll_collect(lua_State *L, Poller *p, const struct pollfd *set, int out) {
  int ready = 0, k, i;
  for (k = 0; k < p->n && ready < MAX_READY; k++) {
    i = (p->next + k) % p->n;
    if (set[i].revents != 0) {  /* POLLIN/OUT, POLLHUP, POLLERR, POLLNVAL */
      lua_pushinteger(L, set[i].fd);
      lua_rawseti(L, out, ++ready);
    }
  }
  if (p->n > 0) p->next = (p->next + k) % p->n;
  return ready;
}

/* One poll(): the number of ready fds put in out, -1 for a signal or an
** interrupted call (the caller loops), -2 on error (errno). */
static int poll_once(lua_State *L, Poller *p, int ms, int out) {
  struct pollfd *set = poll_set(L, 1), *pipe = &set[p->n];
  int r;
  pipe->fd = qmp_signal_fd();  /* -1 before any catch: poll() skips it */
  pipe->events = POLLIN;
  pipe->revents = 0;
  r = poll(set, (nfds_t)p->n + 1, ms);
  if (r < 0) return errno == EINTR ? -1 : -2;
  if (pipe->revents != 0) {
    qmp_signal_drain();
    if (r == 1) return -1;
  }
  return r == 0 ? 0 : poll_collect(L, p, set, out);
}

/* }====================================================== */

#if defined(QMP_HAVE_EPOLL)

/* {====================================================== */
/* The epoll backend */

static uint32_t epoll_mask(short events) {
  return ((events & POLLIN) ? EPOLLIN : 0) | ((events & POLLOUT) ? EPOLLOUT : 0);
}

/* Watch the signal pipe too, once there is one (catch_signals may come
** after the poller); a pipe closed by release_signals left the set itself. */
static int epoll_watch_signals(Poller *p) {
  struct epoll_event ev;
  int fd = qmp_signal_fd();
  if (fd < 0 || fd == p->sigfd) return 0;
  ev.events = EPOLLIN;
  ev.data.u64 = SIGNAL_TAG;
  if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 && errno != EEXIST) return -1;
  p->sigfd = fd;
  return 0;
}

static int epoll_once(lua_State *L, Poller *p, int ms, int out) {
  struct epoll_event evs[MAX_READY];
  int r, k, ready = 0;
  if (epoll_watch_signals(p) < 0) return -2;
  r = epoll_wait(p->epfd, evs, MAX_READY, ms);
  if (r < 0) return errno == EINTR ? -1 : -2;
  for (k = 0; k < r; k++) {
    if (evs[k].data.u64 == SIGNAL_TAG) {
      qmp_signal_drain();
      continue;
    }
    lua_pushinteger(L, (lua_Integer)evs[k].data.u64);
    lua_rawseti(L, out, ++ready);
  }
  return (r > 0 && ready == 0) ? -1 : ready;
}

/* }====================================================== */

#endif

/* p:set(fd, interest): watch fd for "r", "w" or "rw", from now on (added,
** or its interest changed).  true | nil, err (kind "io": a closed fd). */
static int poller_set(lua_State *L) {
  Poller *p = topoller(L);
  int fd = check_fd(L, 2);
  short events = check_interest(L, 3);
#if defined(QMP_HAVE_EPOLL)
  if (is_epoll(p)) {
    struct epoll_event ev;
    ev.events = epoll_mask(events);
    ev.data.u64 = (uint64_t)fd;
    if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, fd, &ev) < 0
        && (errno != ENOENT || epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0))
      return qmp_fail(L, "io", "cannot watch fd %d: %s", fd, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
  }
#endif
  poll_add(L, p, fd, events);
  lua_pushboolean(L, 1);
  return 1;
}

/* p:unset(fd): stop watching fd.  Not watched, or already closed (which
** took it out of an epoll set): nothing to do. */
static int poller_unset(lua_State *L) {
  Poller *p = topoller(L);
  int fd = check_fd(L, 2);
#if defined(QMP_HAVE_EPOLL)
  if (is_epoll(p)) {
    struct epoll_event ev;  /* kernels before 2.6.9 want one, even unused */
    memset(&ev, 0, sizeof ev);
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, &ev);
    return 0;
  }
#endif
  poll_remove(L, p, fd);
  return 0;
}

/* p:wait(timeout, out) -> n | nil, err: wait until a watched fd is ready
** (readable, writable as asked, hung up or in error) or the timeout (seconds;
** nil: forever; 0: just look) passes; out[1..n] are the ready fds. */
static int poller_wait(lua_State *L) {
  Poller *p = topoller(L);
  double t = luaL_optnumber(L, 2, -1), deadline;
  int ms, r;
  luaL_argcheck(L, !isnan(t), 2, "timeout must be a number");
  luaL_checktype(L, 3, LUA_TTABLE);
  deadline = t < 0 ? HUGE_VAL : qmp_monotime() + t;
  for (;;) {
    if ((r = qmp_signal_interrupted(L))) return r;
    ms = qmp_poll_ms(deadline);
#if defined(QMP_HAVE_EPOLL)
    r = is_epoll(p) ? epoll_once(L, p, ms, 3) : poll_once(L, p, ms, 3);
#else
    r = poll_once(L, p, ms, 3);
#endif
    if (r == -2) return qmp_fail(L, "io", "%s: %s", is_epoll(p) ? "epoll_wait" : "poll",
                                 strerror(errno));
    if (r > 0 || (r == 0 && (ms == 0 || qmp_monotime() >= deadline))) break;
  }
  lua_pushinteger(L, r);
  return 1;
}

/* p:backend() -> "epoll" or "poll". */
static int poller_backend(lua_State *L) {
  Poller *p = topoller(L);
  lua_pushstring(L, is_epoll(p) ? "epoll" : "poll");
  return 1;
}

/* p:fileno() -> the epoll fd, readable when a watched fd is ready; -1 with
** the poll backend (it has no fd) or once closed. */
static int poller_fileno(lua_State *L) {
  Poller *p = (Poller *)luaL_checkudata(L, 1, QMP_POLLER_MT);
  lua_pushinteger(L, is_epoll(p) ? p->epfd : -1);
  return 1;
}

static int poller_close(lua_State *L) {
  Poller *p = (Poller *)luaL_checkudata(L, 1, QMP_POLLER_MT);
  if (p->epfd >= 0) close(p->epfd);
  p->epfd = -1;
  p->closed = 1;
  return 0;
}

/* core.poller([backend]) -> poller | nil, err.  backend: "epoll" (the
** default where there is one) or "poll". */
static int core_poller(lua_State *L) {
  static const char *const names[] = { "epoll", "poll", NULL };
#if defined(QMP_HAVE_EPOLL)
  int want_poll = luaL_checkoption(L, 1, "epoll", names) == 1;
#else
  int want_poll = 1;
  luaL_checkoption(L, 1, "poll", names);
#endif
  Poller *p = (Poller *)lua_newuserdatauv(L, sizeof(Poller), 2);
  p->epfd = -2;
  p->sigfd = -1;
  p->n = p->next = p->closed = 0;
  p->cap = 8;
  luaL_setmetatable(L, QMP_POLLER_MT);
  lua_newuserdatauv(L, (size_t)p->cap * sizeof(struct pollfd), 0);
  lua_setiuservalue(L, -2, UV_SET);
  lua_newtable(L);
  lua_setiuservalue(L, -2, UV_PLACE);
#if defined(QMP_HAVE_EPOLL)
  if (!want_poll) {
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
      int err = errno;
      p->closed = 1;
      return qmp_fail(L, "io", "epoll_create1: %s", strerror(err));
    }
  }
#else
  (void)want_poll;
#endif
  return 1;
}

void qmp_poller_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"set", poller_set},
    {"unset", poller_unset},
    {"wait", poller_wait},
    {"backend", poller_backend},
    {"fileno", poller_fileno},
    {"close", poller_close},
    {NULL, NULL}
  };
  if (luaL_newmetatable(L, QMP_POLLER_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, poller_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, poller_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, core_poller);
  lua_setfield(L, -2, "poller");
}
