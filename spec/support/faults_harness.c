/*
** faults_harness.c: what a Lua script cannot arrange by itself, for the
** rows of docs/faults.md that spec/faults_spec.lua proves with it.
**
**   faults_harness MODE SCRIPT LUA_PATH LUA_CPATH [ARG...]
**
** SCRIPT returns a table of functions by mode name.  Each mode runs that
** function in a fresh Lua state (standard libraries, package.path and
** package.cpath as given, so `require "qmp.core"` loads the module as
** built) with the ARGs as strings; it returns true, or nil and why.
**
**   threads N  N threads at once, each with a Lua state of its own, each
**              calling the function with its number (row 62)
**   stack KIB  one thread whose whole C stack is KIB KiB (row 64)
**   eintr      a SIGALRM every millisecond, its handler installed without
**              SA_RESTART, while the function runs: the module's poll()s,
**              reads and writes meet EINTR all along (row 6)
**   close      the function returns the fds of connections it leaves open;
**              after lua_close() every one must be closed, and no finalizer
**              may have raised (a warning) (row 57)
**   cjson      cJSON's allocations go through hooks the function can make
**              fail: fail_cjson(n [, persistent]) makes the n-th allocation
**              from now fail (and every later one when persistent), and
**              returns how many allocations the last arming saw; cjson_live()
**              counts blocks not freed (row 56)
**
** Prints one line per run, "ok ..." or "FAIL ...", and exits 0 when every
** run returned true, 1 otherwise, 2 on a usage or setup error.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static const char *mode, *script, *lpath, *cpath;
static char **extra;   /* the ARGs */
static int nextra;

/* {====================================================== */
/* cJSON's allocations, counted and made to fail (mode cjson) */

static long cjson_live;       /* blocks allocated and not freed */
static long cjson_countdown;  /* allocations before the one to refuse; 0: none */
static long cjson_seen;       /* allocations since the last arming */
static int cjson_persistent, cjson_refusing;

static void *hook_malloc(size_t n) {
  void *p;
  cjson_seen++;
  if (cjson_refusing) return NULL;
  if (cjson_countdown > 0 && --cjson_countdown == 0) {
    if (cjson_persistent) cjson_refusing = 1;
    return NULL;
  }
  p = malloc(n);
  if (p != NULL) cjson_live++;
  return p;
}

static void hook_free(void *p) {
  if (p != NULL) cjson_live--;
  free(p);
}

/* fail_cjson(n [, persistent]) -> allocations seen since the last call */
static int l_fail_cjson(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_pushinteger(L, cjson_seen);
  cjson_seen = 0;
  cjson_countdown = n > 0 ? n : 0;
  cjson_persistent = lua_toboolean(L, 2);
  cjson_refusing = 0;
  return 1;
}

static int l_cjson_live(lua_State *L) {
  lua_pushinteger(L, cjson_live);
  return 1;
}
/* }====================================================== */


/* {====================================================== */
/* Lua states */

static int warnings;  /* lua_close: warnings (errors in finalizers) seen */

static void warn_count(void *ud, const char *msg, int tocont) {
  (void)ud;
  if (!tocont) warnings++;
  fprintf(stderr, "lua warning: %s%s", msg, tocont ? "" : "\n");
}

/* A state with the libraries, the paths and, on top, the function of the mode. */
static lua_State *new_state(char *why, size_t whysz) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    snprintf(why, whysz, "no memory for a Lua state");
    return NULL;
  }
  luaL_openlibs(L);
  lua_setwarnf(L, warn_count, NULL);
  lua_getglobal(L, "package");
  lua_pushstring(L, lpath);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, cpath);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  lua_register(L, "fail_cjson", l_fail_cjson);
  lua_register(L, "cjson_live", l_cjson_live);
  if (luaL_dofile(L, script) != LUA_OK) {
    snprintf(why, whysz, "%s: %s", script, lua_tostring(L, -1));
    lua_close(L);
    return NULL;
  }
  if (lua_getfield(L, -1, mode) != LUA_TFUNCTION) {
    snprintf(why, whysz, "%s has no function for mode %s", script, mode);
    lua_close(L);
    return NULL;
  }
  lua_remove(L, -2);
  return L;
}

/* Call the function on top with the ARGs (and first, when given, one
** integer); 1 when it returned true, else 0 with why.  Its two results
** stay on the stack: true and, for mode close, the fds. */
static int run(lua_State *L, const lua_Integer *first, char *why, size_t whysz) {
  int nargs = 0, i;
  if (first != NULL) { lua_pushinteger(L, *first); nargs++; }
  for (i = 0; i < nextra; i++) { lua_pushstring(L, extra[i]); nargs++; }
  if (lua_pcall(L, nargs, 2, 0) != LUA_OK) {
    snprintf(why, whysz, "raised: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
    return 0;
  }
  if (lua_toboolean(L, -2)) return 1;
  snprintf(why, whysz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no reason)");
  return 0;
}
/* }====================================================== */


/* {====================================================== */
/* Threads */

typedef struct Job {
  lua_Integer index;
  int ok;
  char why[512];
} Job;

static void *thread_main(void *arg) {
  Job *job = (Job *)arg;
  lua_State *L = new_state(job->why, sizeof job->why);
  if (L == NULL) return NULL;
  job->ok = run(L, &job->index, job->why, sizeof job->why);
  lua_close(L);
  return NULL;
}

/* n threads, each with stack bytes of C stack (0: the default). */
static int run_threads(int n, size_t stack) {
  pthread_t *tids = calloc((size_t)n, sizeof *tids);
  Job *jobs = calloc((size_t)n, sizeof *jobs);
  pthread_attr_t attr;
  int i, failed = 0;
  if (tids == NULL || jobs == NULL) return 2;
  pthread_attr_init(&attr);
  if (stack > 0 && pthread_attr_setstacksize(&attr, stack) != 0) {
    fprintf(stderr, "faults_harness: cannot set a stack of %zu bytes\n", stack);
    return 2;
  }
  for (i = 0; i < n; i++) {
    jobs[i].index = i + 1;
    if (pthread_create(&tids[i], &attr, thread_main, &jobs[i]) != 0) {
      fprintf(stderr, "faults_harness: pthread_create failed\n");
      return 2;
    }
  }
  for (i = 0; i < n; i++) pthread_join(tids[i], NULL);
  for (i = 0; i < n; i++) {
    if (jobs[i].ok) printf("ok %s thread %d\n", mode, i + 1);
    else {
      printf("FAIL %s thread %d: %s\n", mode, i + 1, jobs[i].why);
      failed = 1;
    }
  }
  pthread_attr_destroy(&attr);
  free(tids);
  free(jobs);
  return failed;
}
/* }====================================================== */


/* {====================================================== */
/* EINTR */

static volatile sig_atomic_t alarms;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

static int run_eintr(void) {
  struct sigaction sa;
  struct itimerval every_ms = { { 0, 1000 }, { 0, 1000 } }, off = { { 0, 0 }, { 0, 0 } };
  char why[512];
  lua_State *L = new_state(why, sizeof why);
  int ok;
  if (L == NULL) {
    fprintf(stderr, "faults_harness: %s\n", why);
    return 2;
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sa.sa_flags = 0;  /* no SA_RESTART: interrupted calls fail with EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, NULL);
  setitimer(ITIMER_REAL, &every_ms, NULL);
  ok = run(L, NULL, why, sizeof why);
  setitimer(ITIMER_REAL, &off, NULL);
  lua_close(L);
  if (!ok) {
    printf("FAIL eintr: %s (%d signals)\n", why, (int)alarms);
    return 1;
  }
  printf("ok eintr: %d signals\n", (int)alarms);
  return 0;
}
/* }====================================================== */


/* {====================================================== */
/* lua_close with open connections */

static int run_close(void) {
  char why[512];
  int fds[64], n = 0, i, failed = 0;
  lua_State *L = new_state(why, sizeof why);
  if (L == NULL) {
    fprintf(stderr, "faults_harness: %s\n", why);
    return 2;
  }
  if (!run(L, NULL, why, sizeof why)) {
    printf("FAIL close: %s\n", why);
    lua_close(L);
    return 1;
  }
  /* the fds: the list after the true */
  if (lua_istable(L, -1)) {
    for (i = 1; i <= (int)luaL_len(L, -1) && n < 64; i++) {
      lua_geti(L, -1, i);
      fds[n++] = (int)lua_tointeger(L, -1);
      lua_pop(L, 1);
    }
  }
  for (i = 0; i < n; i++) {
    if (fcntl(fds[i], F_GETFD) < 0) {
      printf("FAIL close: fd %d was closed before lua_close\n", fds[i]);
      failed = 1;
    }
  }
  lua_close(L);
  for (i = 0; i < n; i++) {
    if (fcntl(fds[i], F_GETFD) >= 0 || errno != EBADF) {
      printf("FAIL close: fd %d is still open after lua_close\n", fds[i]);
      failed = 1;
    }
  }
  if (warnings > 0) {
    printf("FAIL close: %d warnings (a finalizer raised)\n", warnings);
    failed = 1;
  }
  if (n == 0) {
    printf("FAIL close: the function returned no fds\n");
    failed = 1;
  }
  if (!failed) printf("ok close: %d fds closed by lua_close\n", n);
  return failed;
}
/* }====================================================== */


/* {====================================================== */
/* cJSON allocation failures */

static int run_cjson(void) {
  cJSON_Hooks hooks = { hook_malloc, hook_free };
  char why[512];
  lua_State *L;
  int ok;
  cJSON_InitHooks(&hooks);  /* process-global: only in this test program */
  L = new_state(why, sizeof why);
  if (L == NULL) {
    fprintf(stderr, "faults_harness: %s\n", why);
    return 2;
  }
  ok = run(L, NULL, why, sizeof why);
  lua_close(L);
  if (!ok) {
    printf("FAIL cjson: %s\n", why);
    return 1;
  }
  if (cjson_live != 0) {
    printf("FAIL cjson: %ld cJSON blocks alive after lua_close\n", cjson_live);
    return 1;
  }
  printf("ok cjson\n");
  return 0;
}
/* }====================================================== */


int main(int argc, char **argv) {
  int first = 5;
  if (argc < 5) {
    fprintf(stderr, "usage: %s MODE SCRIPT LUA_PATH LUA_CPATH [ARG...]\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  mode = argv[1];
  script = argv[2];
  lpath = argv[3];
  cpath = argv[4];
  if (strcmp(mode, "threads") == 0 || strcmp(mode, "stack") == 0) {
    long k;
    if (argc < 6 || (k = atol(argv[5])) <= 0) {
      fprintf(stderr, "faults_harness: %s needs a positive number\n", mode);
      return 2;
    }
    extra = argv + 6;
    nextra = argc - 6;
    if (mode[0] == 't') return run_threads((int)k, 0);
    return run_threads(1, (size_t)k * 1024);
  }
  extra = argv + first;
  nextra = argc - first;
  if (strcmp(mode, "eintr") == 0) return run_eintr();
  if (strcmp(mode, "close") == 0) return run_close();
  if (strcmp(mode, "cjson") == 0) return run_cjson();
  fprintf(stderr, "faults_harness: unknown mode %s\n", mode);
  return 2;
}
