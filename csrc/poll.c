/*
** poll.c: one poll() over many monitor connections, for qmp.loop.
**
** core.poll(fds, timeout [, events]) waits until at least one fd of the list
** is ready (readable, or writable for a "w", or hung up, or in error) and
** returns the 1-based indices of the ready ones; an empty list when the
** timeout passes.  Only the fds that are there go to poll(): a negative
** one (a client between reconnect attempts) takes no entry, since poll()
** refuses more entries than RLIMIT_NOFILE, skipped ones included, and a
** loop may hold thousands of clients that are waiting to reconnect.
** As everywhere in the core, the wait is against a
** CLOCK_MONOTONIC deadline and retried on EINTR; a signal caught with
** core.catch_signals ends it with an "interrupted" error (signal.c).
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <string.h>
#include <time.h>

#include "qmp.h"

#if !defined(QMP_MAX_POLL)
#define QMP_MAX_POLL 65536   /* fds in one core.poll call */
#endif

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

/* The signal pipe as a pollfd (fd -1, skipped by poll(), before any catch). */
static void watch_signals(struct pollfd *p) {
  p->fd = qmp_signal_fd();
  p->events = POLLIN;
  p->revents = 0;
}

/* What to wait for on fds[i]: events[i] is "r" (or missing), "w" or "rw". */
static short events_of(lua_State *L, lua_Integer i) {
  const char *e;
  short ev = -1;
  if (lua_isnoneornil(L, 3)) return POLLIN;
  switch (lua_geti(L, 3, i + 1)) {
    case LUA_TNIL: ev = POLLIN; break;
    case LUA_TSTRING:
      e = lua_tostring(L, -1);
      if (strcmp(e, "r") == 0) ev = POLLIN;
      else if (strcmp(e, "w") == 0) ev = POLLOUT;
      else if (strcmp(e, "rw") == 0) ev = POLLIN | POLLOUT;
      break;
    default: break;
  }
  if (ev < 0)
    luaL_argerror(L, 3, lua_pushfstring(L, "events[%I] must be \"r\", \"w\" or \"rw\"",
                                        i + 1));
  lua_pop(L, 1);
  return ev;
}

/* core.poll(fds, timeout [, events]) -> { index, ... } | nil, err
** fds: list of integers (a negative fd is skipped); timeout: seconds,
** nil = forever, 0 = just check; events: list parallel to fds of "r", "w"
** or "rw" (missing entries are "r"). */
static int core_poll(lua_State *L) {
  lua_Integer n, i;
  double t, deadline;
  struct pollfd *p;
  int *place;   /* place[k]: the index in fds of p[k] */
  int r, ms, ready, k, m;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);  /* events stays at 3 (maybe nil) under what is pushed below */
  t = luaL_optnumber(L, 2, -1);
  luaL_argcheck(L, !isnan(t), 2, "timeout must be a number");
  deadline = t < 0 ? HUGE_VAL : qmp_monotime() + t;
  n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 0, 1, "negative length");  /* a __len can say anything */
  if (n > QMP_MAX_POLL)
    return luaL_argerror(L, 1, lua_pushfstring(L, "too many fds (%I, the limit is %d)",
                                               n, (int)QMP_MAX_POLL));
  /* Lua owns the arrays: an error below cannot leak them.  The m fds that
  ** are there come first in p, then the signal pipe, p[m] (when there is one). */
  p = (struct pollfd *)lua_newuserdatauv(L, ((size_t)n + 1) * sizeof *p
                                             + (size_t)n * sizeof *place, 0);
  place = (int *)(p + n + 1);
  m = 0;
  for (i = 0; i < n; i++) {
    lua_Integer fd;
    int isint;
    short ev;
    lua_geti(L, 1, i + 1);
    fd = lua_tointegerx(L, -1, &isint);
    if (!isint)
      return luaL_argerror(L, 1, lua_pushfstring(L, "fds[%I] is not an integer",
                                                 i + 1));
    lua_pop(L, 1);
    ev = events_of(L, i);  /* checked for every entry, skipped ones too */
    if (fd < 0 || fd > INT_MAX) continue;
    p[m].fd = (int)fd;
    p[m].events = ev;
    p[m].revents = 0;
    place[m++] = (int)i;
  }
  watch_signals(&p[m]);
  for (;;) {
    if ((r = qmp_signal_interrupted(L))) return r;
    ms = qmp_poll_ms(deadline);
    r = poll(p, (nfds_t)m + (p[m].fd >= 0), ms);
    if (r > 0 && p[m].revents != 0) {  /* a signal came: looked at above */
      qmp_signal_drain();
      r--;
    }
    if (r >= 0 || errno != EINTR) {
      if (r < 0) return qmp_fail(L, "io", "poll: %s", strerror(errno));
      if (r > 0 || ms == 0 || qmp_monotime() >= deadline) break;
    }
  }
  lua_createtable(L, r > 0 ? r : 0, 0);
  ready = 0;
  for (k = 0; k < m; k++) {
    if (p[k].revents != 0) {   /* POLLIN/OUT, POLLHUP, POLLERR, POLLNVAL */
      lua_pushinteger(L, (lua_Integer)place[k] + 1);
      lua_rawseti(L, -2, ++ready);
    }
  }
  return 1;
}

/* core.wait_fd(fd, mode, timeout) -> ready: one fd, no tables (the
** blocking wait of a single client); mode "r", "w" or "rw"; timeout nil:
** forever. */
static int core_wait_fd(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  const char *mode = luaL_checkstring(L, 2);
  double t = luaL_optnumber(L, 3, -1), deadline;
  struct pollfd p[2];  /* the fd, the signal pipe */
  int r, ms;
  luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, 1, "not a file descriptor");
  luaL_argcheck(L, !isnan(t), 3, "timeout must be a number");
  p[0].fd = (int)fd;
  p[0].events = (short)((strchr(mode, 'r') ? POLLIN : 0) | (strchr(mode, 'w') ? POLLOUT : 0));
  luaL_argcheck(L, p[0].events != 0, 2, "mode must be \"r\", \"w\" or \"rw\"");
  p[0].revents = 0;
  watch_signals(&p[1]);
  deadline = t < 0 ? HUGE_VAL : qmp_monotime() + t;
  for (;;) {
    if ((r = qmp_signal_interrupted(L))) return r;
    ms = qmp_poll_ms(deadline);
    r = poll(p, 2, ms);
    if (r > 0 && p[0].revents != 0) break;
    if (r > 0) {  /* only the signal pipe: looked at above */
      qmp_signal_drain();
      continue;
    }
    if (r < 0 && errno != EINTR) return qmp_fail(L, "io", "poll: %s", strerror(errno));
    if (r == 0 && (ms == 0 || qmp_monotime() >= deadline)) break;
  }
  lua_pushboolean(L, r > 0);
  return 1;
}

/* core.sleep(seconds): wait without busy-looping, EINTR-safe; a caught
** signal ends it early (nil, err). */
static int core_sleep(lua_State *L) {
  double deadline = qmp_monotime() + luaL_checknumber(L, 1);
  struct pollfd p;
  int ms, r;
  watch_signals(&p);
  while ((ms = qmp_poll_ms(deadline)) > 0) {
    if ((r = qmp_signal_interrupted(L))) return r;
    if (poll(&p, 1, ms) > 0) qmp_signal_drain();
  }
  return 0;
}

void qmp_poll_open(lua_State *L) {
  lua_pushcfunction(L, core_poll);
  lua_setfield(L, -2, "poll");
  lua_pushcfunction(L, core_wait_fd);
  lua_setfield(L, -2, "wait_fd");
  lua_pushcfunction(L, core_sleep);
  lua_setfield(L, -2, "sleep");
}
