/*
** allocfail.c: the decoder under failing Lua allocations.
**
** The decoder builds Lua values from a cJSON tree allocated with malloc; if a
** Lua allocation fails half way through, the tree must still be freed, the
** Lua state must stay usable and so must a stream decoder.  This program
** runs the cases of spec/support/allocfail.lua in a Lua state whose
** allocator refuses the Nth allocation (N = 1, 2, ... until a run needs
** fewer than N), checking after each run that:
**   - no cJSON node is left (cJSON's allocations are counted through its
**     hooks): at once in "single" runs, where only the Nth allocation (and
**     Lua's retry of it) fails, and after a full collection in "persistent"
**     runs, where every allocation from the Nth on fails;
**   - a run either succeeded or raised a memory error, never anything else
**     (but "stack overflow" when the refused allocation was a stack growth:
**     lua_checkstack reports both the same way);
**   - the case's own check passes (same result as without failures, the
**     decoder goes on with the next message, ...).
** The cases of modes "hostile" and "reentry" instead run once, without
** failures, for a memory checker to watch: hostile inputs, and finalizers
** that use a decoder while it decodes.
**
** usage: allocfail SCRIPT MODE LUA_PATH LUA_CPATH
**   MODE: decode | stream | resume | hostile | reentry
** Prints one line per case and a last line
**   "allocfail MODE: P failure points, C checks, F failed"
** and exits 0 when F is 0, 1 otherwise, 2 on a usage or setup error.
** Run it under valgrind --leak-check=full for the leaks cJSON's count
** cannot see.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define MAX_RUNS 200000  /* per case and kind: a bound on a runaway loop */

/* {====================================================== */
/* The failing Lua allocator */

typedef struct Alloc {
  int armed;          /* count growth requests, and refuse as told */
  int persistent;     /* refuse every request from the Nth on */
  long countdown;     /* growth requests before the one to refuse */
  int refusing;       /* persistent: the Nth request was refused */
  int retry;          /* single: Lua may ask once more for the refused block */
  void *rblock;
  size_t rnsize;
  long refused;       /* requests refused since arming */
} Alloc;

static Alloc alloc_state;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  Alloc *a = (Alloc *)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* Only new blocks and growing ones may fail: when ptr is NULL, osize is a
  ** type tag, not a size. */
  if (a->armed && (ptr == NULL || nsize > osize)) {
    if (a->refusing) {
      a->refused++;
      return NULL;
    }
    if (a->retry) {  /* Lua retries a refused request after an emergency GC */
      a->retry = 0;
      if (ptr == a->rblock && nsize == a->rnsize) {
        a->refused++;
        return NULL;
      }
    }
    if (a->countdown > 0 && --a->countdown == 0) {
      a->refused++;
      if (a->persistent) a->refusing = 1;
      else { a->retry = 1; a->rblock = ptr; a->rnsize = nsize; }
      return NULL;
    }
  }
  return realloc(ptr, nsize);
}

static void arm(long n, int persistent) {
  memset(&alloc_state, 0, sizeof alloc_state);
  alloc_state.persistent = persistent;
  alloc_state.countdown = n;
  alloc_state.armed = 1;
}

static void disarm(void) {
  alloc_state.armed = 0;
}
/* }====================================================== */


/* {====================================================== */
/* cJSON's allocations, counted */

static long cjson_live;    /* blocks allocated and not freed */
static long cjson_total;   /* blocks ever allocated */

static void *counting_malloc(size_t n) {
  void *p = malloc(n);
  if (p != NULL) { cjson_live++; cjson_total++; }
  return p;
}

static void counting_free(void *p) {
  if (p != NULL) cjson_live--;
  free(p);
}
/* }====================================================== */


static int checks, failed;
static long points;

static void fail(const char *mode, const char *name, long n, const char *kind, const char *why) {
  failed++;
  if (failed <= 20)
    printf("FAIL %s %s: N=%ld (%s): %s\n", mode, name, n, kind, why ? why : "?");
}

/* Call the function below nargs arguments in protected mode, unarmed. */
static int call(lua_State *L, int nargs, int nres, const char **why) {
  int status = lua_pcall(L, nargs, nres, 0);
  if (status != LUA_OK) {
    *why = lua_tostring(L, -1);
    if (*why == NULL) *why = "(error object is not a string)";
  }
  return status;
}

/*
** Run case number ci (1-based) of the cases table at index cases, with
** failures from the 1st allocation on, then the 2nd, ... until a run refuses
** nothing.  The case is { name = , setup = function(n) -> f, args... ,
** check = function(ok, results or error...) -> true | nil, why }.
*/
static void run_case(lua_State *L, const char *mode, int cases, int ci, int persistent) {
  const char *kind = persistent ? "persistent" : "single";
  const char *name;
  long n, casepoints = 0, errors = 0, stackerrors = 0;
  lua_geti(L, cases, ci);
  lua_getfield(L, -1, "name");
  name = lua_tostring(L, -1);
  lua_pop(L, 1);  /* the name stays alive in the case table */
  for (n = 1; n <= MAX_RUNS; n++) {
    int top = lua_gettop(L), status, nres, base;
    long refused;
    const char *why = NULL;
    /* f, args = case.setup(n) */
    lua_getfield(L, top, "setup");
    lua_pushinteger(L, n);
    if (call(L, 1, LUA_MULTRET, &why) != LUA_OK) {
      fail(mode, name, n, kind, why);
      lua_settop(L, top);
      break;
    }
    lua_gc(L, LUA_GCCOLLECT);  /* start each run from the same heap */
    if (cjson_live != 0) {
      fail(mode, name, n, kind, "cJSON blocks alive before the run");
      lua_settop(L, top);
      break;
    }
    base = top + 1;  /* the function to run */
    arm(n, persistent);
    status = lua_pcall(L, lua_gettop(L) - base, LUA_MULTRET, 0);
    disarm();
    refused = alloc_state.refused;
    checks++;
    if (!persistent && cjson_live != 0) {  /* the to-be-closed box freed it at once */
      fail(mode, name, n, kind, "the cJSON tree outlived the failed call");
      lua_settop(L, top);
      break;
    }
    if (status != LUA_OK && status != LUA_ERRMEM) {
      /* lua_checkstack cannot tell a refused stack growth from a full
      ** stack: luaL_checkstack then raises "stack overflow (...)". */
      const char *msg = lua_tostring(L, -1);
      if (status == LUA_ERRRUN && refused > 0 && msg != NULL && strstr(msg, "stack overflow") != NULL) {
        stackerrors++;
        lua_pop(L, 1);
        lua_pushliteral(L, "not enough memory");  /* for the case's check */
      }
      else {
        fail(mode, name, n, kind, lua_pushfstring(L, "not a memory error (status %d): %s",
                                                  status, msg ? msg : "?"));
        lua_settop(L, top);
        break;
      }
    }
    if (refused > 0) { casepoints++; if (status != LUA_OK) errors++; }
    else if (status != LUA_OK) {
      fail(mode, name, n, kind, "an error without any refused allocation");
      lua_settop(L, top);
      break;
    }
    /* ok = case.check(status == LUA_OK, results...) */
    nres = lua_gettop(L) - top;
    lua_getfield(L, top, "check");
    lua_pushboolean(L, status == LUA_OK);
    lua_rotate(L, top + 1, 2);  /* check, ok, results... */
    checks++;
    if (call(L, nres + 1, 2, &why) != LUA_OK) {
      fail(mode, name, n, kind, why);
      lua_settop(L, top);
      break;
    }
    if (!lua_toboolean(L, -2)) {
      const char *msg = lua_tostring(L, -1);
      fail(mode, name, n, kind, msg ? msg : "check failed");
      lua_settop(L, top);
      break;
    }
    lua_settop(L, top);
    lua_gc(L, LUA_GCCOLLECT);
    checks++;
    if (cjson_live != 0) {
      fail(mode, name, n, kind, "cJSON blocks left after a full collection");
      break;
    }
    if (refused == 0) break;  /* the run needed fewer than n allocations */
  }
  if (n > MAX_RUNS) fail(mode, name, n, kind, "never ran without a failure");
  points += casepoints;
  printf("%s %s (%s): %ld failure points, %ld errors (%ld of them \"stack overflow\")\n",
         mode, name, kind, casepoints, errors, stackerrors);
  lua_pop(L, 1);  /* the case */
}

/* Cases with run: case.run() -> true | nil, why; once each, nothing refused. */
static void run_once(lua_State *L, const char *mode, int cases, int ci) {
  const char *why = NULL, *name;
  lua_geti(L, cases, ci);
  lua_getfield(L, -1, "name");
  name = lua_tostring(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "run");
  checks++;
  if (call(L, 0, 2, &why) != LUA_OK) fail(mode, name, 0, "run", why);
  else if (!lua_toboolean(L, -2)) fail(mode, name, 0, "run", lua_tostring(L, -1));
  else printf("%s %s: ok\n", mode, name);
  lua_settop(L, lua_gettop(L) - 2);
  lua_gc(L, LUA_GCCOLLECT);
  checks++;
  if (cjson_live != 0) fail(mode, name, 0, "run", "cJSON blocks left after a full collection");
  lua_pop(L, 1);  /* the case */
}

int main(int argc, char **argv) {
  cJSON_Hooks hooks = { counting_malloc, counting_free };
  const char *script, *mode, *why = NULL;
  lua_State *L;
  int ci, ncases, cases;
  long total_before;
  if (argc != 5) {
    fprintf(stderr, "usage: %s SCRIPT MODE LUA_PATH LUA_CPATH\n", argv[0]);
    return 2;
  }
  script = argv[1];
  mode = argv[2];
  setvbuf(stdout, NULL, _IOLBF, 0);  /* lines in order with a memory checker's */
  cJSON_InitHooks(&hooks);  /* before the module is loaded and parses anything */
  L = lua_newstate(failing_alloc, &alloc_state);
  if (L == NULL) return 2;
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, argv[3]);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, argv[4]);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  /* cases = dofile(script)[mode] */
  if (luaL_loadfile(L, script) != LUA_OK || call(L, 0, 1, &why) != LUA_OK) {
    fprintf(stderr, "allocfail: %s\n", why ? why : lua_tostring(L, -1));
    lua_close(L);
    return 2;
  }
  if (lua_getfield(L, -1, mode) != LUA_TTABLE) {
    fprintf(stderr, "allocfail: no mode '%s' in %s\n", mode, script);
    lua_close(L);
    return 2;
  }
  cases = lua_gettop(L);
  ncases = (int)luaL_len(L, cases);
  total_before = cjson_total;
  for (ci = 1; ci <= ncases; ci++) {
    int once;
    lua_geti(L, cases, ci);
    once = lua_getfield(L, -1, "run") == LUA_TFUNCTION;
    lua_pop(L, 2);
    if (once)
      run_once(L, mode, cases, ci);
    else {
      run_case(L, mode, cases, ci, 0);
      run_case(L, mode, cases, ci, 1);
    }
  }
  checks++;
  if (cjson_total == total_before)  /* else the counts above prove nothing */
    fail(mode, "setup", 0, "hooks", "the module's cJSON allocations were not seen");
  lua_settop(L, 0);
  lua_close(L);
  checks++;
  if (cjson_live != 0) fail(mode, "exit", 0, "close", "cJSON blocks alive after lua_close");
  printf("allocfail %s: %ld failure points, %d checks, %d failed\n", mode, points, checks, failed);
  return failed == 0 ? 0 : 1;
}
