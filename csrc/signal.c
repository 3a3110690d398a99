/*
** signal.c: SIGINT, SIGTERM and SIGHUP as world events for the blocking waits.
**
** core.catch_signals{"INT", "TERM"} installs a handler that notes the signal
** and writes one byte to a self-pipe.  The blocking waits (core.poll,
** core.wait_fd, core.sleep) watch the pipe's read end, so a signal wakes
** them even between two checks; while a caught signal is pending they
** return at once with an "interrupted" error, until core.take_signal()
** takes it.  The waits' callers (the Lua layer) then unwind and decide.
**
** A signal handler cannot reach a lua_State, so the state here is
** process-wide C statics, written only by catch/release/take and the
** handler (which touches nothing but a sig_atomic_t and write(2)).
*/
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "qmp.h"

static const struct { const char *name; int signo; } SIGNALS[] = {
  {"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {NULL, 0}
};

static volatile sig_atomic_t pending;   /* the signal caught last and not taken, or 0 */
static int wake[2] = {-1, -1};          /* the self-pipe: [0] is watched, [1] written */
static struct sigaction previous[3];    /* what catch replaced, by index into SIGNALS */
static int caught[3];                   /* 1: SIGNALS[i] has our handler */

static void on_signal(int signo) {
  int saved = errno;  /* the interrupted code may be about to read errno */
  pending = signo;
  if (wake[1] >= 0) (void)!write(wake[1], "", 1);  /* full pipe: a wake-up is on its way anyway */
  errno = saved;
}

static const char *name_of(int signo) {
  for (int i = 0; SIGNALS[i].name; i++)
    if (SIGNALS[i].signo == signo) return SIGNALS[i].name;
  return "?";
}

/* The index in SIGNALS of a name ("INT" or "SIGINT"), or a raised error. */
static int check_name(lua_State *L, int arg, const char *name) {
  if (strncmp(name, "SIG", 3) == 0) name += 3;
  for (int i = 0; SIGNALS[i].name; i++)
    if (strcmp(SIGNALS[i].name, name) == 0) return i;
  return luaL_argerror(L, arg, lua_pushfstring(L, "no signal named %s (INT, TERM or HUP)", name));
}

static int open_pipe(lua_State *L) {
  if (wake[0] >= 0) return 0;
  if (pipe2(wake, O_NONBLOCK | O_CLOEXEC) < 0) {
    wake[0] = wake[1] = -1;
    return qmp_fail(L, "io", "pipe: %s", strerror(errno));
  }
  return 0;
}

/* core.catch_signals(names) -> true | nil, err: names is a list of "INT",
** "TERM", "HUP" (or "SIGINT"...).  Catching one already caught does nothing. */
static int core_catch_signals(lua_State *L) {
  lua_Integer n;
  int idx[3], count = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 3, 1, "a list of at most three signal names");
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 1, "signal names are strings");
    idx[count++] = check_name(L, 1, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (open_pipe(L)) return 2;
  for (int k = 0; k < count; k++) {
    int i = idx[k];
    struct sigaction sa;
    if (caught[i]) continue;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  /* no SA_RESTART: a blocking call returns EINTR and looks */
    if (sigaction(SIGNALS[i].signo, &sa, &previous[i]) < 0)
      return qmp_fail(L, "io", "sigaction: %s", strerror(errno));
    caught[i] = 1;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.release_signals(): give every caught signal its previous handler
** back; a signal still pending stays so until taken. */
static int core_release_signals(lua_State *L) {
  (void)L;
  for (int i = 0; SIGNALS[i].name; i++) {
    if (!caught[i]) continue;
    sigaction(SIGNALS[i].signo, &previous[i], NULL);
    caught[i] = 0;
  }
  return 0;
}

/* core.signal_pending() -> "SIGINT", 2 | nothing */
static int core_signal_pending(lua_State *L) {
  int signo = pending;
  if (signo == 0) return 0;
  lua_pushfstring(L, "SIG%s", name_of(signo));
  lua_pushinteger(L, signo);
  return 2;
}

/* core.take_signal() -> "SIGINT", 2 | nothing: the pending signal, which
** is no longer pending (swapped out at once: one arriving meanwhile stays). */
static int core_take_signal(lua_State *L) {
  int signo = __atomic_exchange_n(&pending, 0, __ATOMIC_SEQ_CST);
  if (signo == 0) return 0;
  lua_pushfstring(L, "SIG%s", name_of(signo));
  lua_pushinteger(L, signo);
  return 2;
}

int qmp_signal_fd(void) {
  return wake[0];
}

void qmp_signal_drain(void) {
  char bytes[64];
  if (wake[0] >= 0)
    while (read(wake[0], bytes, sizeof bytes) > 0) {}
}

int qmp_signal_interrupted(lua_State *L) {
  int signo = pending;
  if (signo == 0) return 0;
  luaL_pushfail(L);
  qmp_pusherror(L, "interrupted", "interrupted by SIG%s", name_of(signo));
  lua_pushfstring(L, "SIG%s", name_of(signo));
  lua_setfield(L, -2, "signal");
  return 2;
}

void qmp_signal_open(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"catch_signals", core_catch_signals},
    {"release_signals", core_release_signals},
    {"signal_pending", core_signal_pending},
    {"take_signal", core_take_signal},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}
