/*
** encode.c: Lua values -> JSON text.
** Written here rather than by cJSON's printer, which knows only doubles (the
** integer 10^15 would go out as 1e+15) and writes NaN as null: integers come
** out as their exact digits, floats as the shortest text that reads back to
** the same double (whatever the locale), and strings must be UTF-8.  Whatever JSON cannot say (nil, functions, NaN,
** cycles, sparse or mixed tables) raises an error that names the problem
** and where it sits ("at arguments.cb").  Tables are read raw: metatables
** are ignored, except qmp.array, which makes even an empty table an array.
** Options: 'pretty' (one element or member a line, indented by two spaces)
** and 'sort' (object keys in byte order, so equal values give equal text;
** otherwise keys come in the table's own order, which varies from run to run).
**
** The text grows in a block of our own, not in a luaL_Buffer: walking tables
** needs the Lua stack, and a luaL_Buffer needs its slot on top at every
** addition.  The block starts inside the Encoder and moves to a userdata
** (Lua-owned, so an error cannot leak it) when it outgrows that.
*/
#include <math.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qmp.h"

#if !defined(QMP_ENC_INITSIZE)
#define QMP_ENC_INITSIZE 256  /* text that fits needs no allocation but the result */
#endif

/* Path components shown in error messages: the first few and the last few. */
#define PATH_HEAD 8
#define PATH_TAIL 8
#define PATH_KEYMAX 40  /* longer keys are cut */

/*
** Stack layout while encoding: the block slot at 'boxidx', then for each
** table being walked (when sorting an object, its keys) the key and the
** value under way.  'keyslot' remembers where the key of each path step
** sits, so an error message can rebuild the path.
*/
typedef struct Encoder {
  lua_State *L;
  char *b;          /* the text so far: 'init' or the userdata at 'boxidx' */
  size_t n;         /* bytes of text in 'b' */
  size_t size;      /* capacity of 'b' */
  int boxidx;       /* stack slot of the userdata block (nil while 'init' serves) */
  int pretty;       /* option: indented, one item a line */
  int sort;         /* option: object keys in byte order */
  int nkeys;        /* steps in the path to the value under way */
  int depth;        /* tables being walked, outermost first in 'tables' */
  const void *tables[QMP_MAX_DEPTH];  /* to tell a cycle from a shared table */
  int keyslot[QMP_MAX_DEPTH];         /* stack slot of the key of each path step */
  char init[QMP_ENC_INITSIZE];
} Encoder;

/* {====================================================== */
/* Errors */

/* Append path step i (a string or integer key) to b. */
static void addstep(Encoder *e, luaL_Buffer *b, int i) {
  lua_State *L = e->L;
  int kidx = e->keyslot[i];
  if (lua_type(L, kidx) == LUA_TSTRING) {
    size_t len, j;
    const char *k = lua_tolstring(L, kidx, &len);
    int plain = (len > 0 && len <= PATH_KEYMAX);
    for (j = 0; plain && j < len; j++) {
      unsigned char c = (unsigned char)k[j];
      plain = ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
               (c >= 'A' && c <= 'Z') || c == '_' || c == '-');
    }
    if (plain) {  /* arguments.qom-path */
      if (i > 0) luaL_addchar(b, '.');
      luaL_addlstring(b, k, len);
      return;
    }
    luaL_addstring(b, "[\"");  /* anything else is quoted, bytes escaped */
    for (j = 0; j < len && j < PATH_KEYMAX; j++) {
      unsigned char c = (unsigned char)k[j];
      if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\')
        luaL_addchar(b, (char)c);
      else {
        char esc[8];
        snprintf(esc, sizeof esc, "\\x%02x", c);
        luaL_addstring(b, esc);
      }
    }
    luaL_addstring(b, (len > PATH_KEYMAX) ? "...\"]" : "\"]");
  }
  else {  /* an array index */
    char num[48];
    snprintf(num, sizeof num, "[" LUA_INTEGER_FMT "]",
             (LUAI_UACINT)lua_tointeger(L, kidx));
    luaL_addstring(b, num);
  }
}

/* Push the path to the value under way, e.g. "arguments.devices[2].id". */
static void pushpath(Encoder *e) {
  luaL_Buffer b;
  int i;
  luaL_buffinit(e->L, &b);
  for (i = 0; i < e->nkeys; i++) {
    if (i == PATH_HEAD && e->nkeys > PATH_HEAD + PATH_TAIL) {
      luaL_addstring(&b, "...");
      i = e->nkeys - PATH_TAIL;
    }
    addstep(e, &b, i);
  }
  luaL_pushresult(&b);
}

/* Raise "qmp.encode: <message> at <path>".  The stack may hold anything. */
static int encerror(Encoder *e, const char *fmt, ...) {
  lua_State *L = e->L;
  va_list ap;
  luaL_checkstack(L, 4, NULL);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  if (e->nkeys > 0) {
    pushpath(e);
    lua_pushfstring(L, "qmp.encode: %s at %s", lua_tostring(L, -2), lua_tostring(L, -1));
  }
  else
    lua_pushfstring(L, "qmp.encode: %s", lua_tostring(L, -1));
  return lua_error(L);
}

/* }====================================================== */

/* {====================================================== */
/* The text block */

/* Make room for 'need' more bytes, moving the text to a bigger userdata. */
static void growblock(Encoder *e, size_t need) {
  lua_State *L = e->L;
  size_t newsize = e->size * 2;
  char *nb;
  if (need > ((size_t)-1) / 2 - e->n)
    encerror(e, "text too large");
  if (newsize < e->n + need)
    newsize = e->n + need;
  nb = (char *)lua_newuserdatauv(L, newsize, 0);
  memcpy(nb, e->b, e->n);  /* the old block is still anchored at boxidx */
  lua_replace(L, e->boxidx);
  e->b = nb;
  e->size = newsize;
}

static void addlstring(Encoder *e, const char *s, size_t len) {
  if (e->size - e->n < len) growblock(e, len);
  memcpy(e->b + e->n, s, len);
  e->n += len;
}

static void addchar(Encoder *e, char c) {
  if (e->n == e->size) growblock(e, 1);
  e->b[e->n++] = c;
}

#define addliteral(e, s) addlstring(e, "" s, sizeof(s) - 1)

/* }====================================================== */

/* {====================================================== */
/* Scalars */

static void addinteger(Encoder *e, lua_Integer i) {
  char buff[32];
  int len = snprintf(buff, sizeof buff, LUA_INTEGER_FMT, (LUAI_UACINT)i);
  addlstring(e, buff, (size_t)len);
}

/*
** The shortest of %.15g, %.16g, %.17g that reads back as the same double,
** made to look like a float ("1.0", not "1") and freed from the locale:
** printf and strtod agree on the locale's decimal point, which we then
** replace by '.' (every byte that cannot be part of a number, as a run).
*/
static void addfloat(Encoder *e, lua_Number x) {
  char buff[64], out[64];
  double d = (double)x;
  int prec, isfloat = 0;
  size_t i, n = 0;
  if (isnan(d) || isinf(d))
    encerror(e, "cannot encode NaN or infinity");
  for (prec = 15; prec < 17; prec++) {
    snprintf(buff, sizeof buff, "%.*g", prec, d);
    if (strtod(buff, NULL) == d) break;
  }
  if (prec == 17)  /* always enough */
    snprintf(buff, sizeof buff, "%.17g", d);
  for (i = 0; buff[i] != '\0'; i++) {
    char c = buff[i];
    if ((c >= '0' && c <= '9') || c == '-' || c == '+')
      out[n++] = c;
    else if (c == 'e' || c == 'E') {
      out[n++] = 'e';
      isfloat = 1;
    }
    else if (n == 0 || out[n - 1] != '.') {  /* the decimal point */
      out[n++] = '.';
      isfloat = 1;
    }
  }
  if (!isfloat) {
    out[n++] = '.';
    out[n++] = '0';
  }
  addlstring(e, out, n);
}

/*
** Length of the well-formed UTF-8 sequence at p, whose first byte is not
** ASCII; 0 if ill-formed: a stray continuation byte, an overlong form, a
** surrogate (U+D800..DFFF), a code point above U+10FFFF, or a cut sequence.
*/
static size_t utf8seq(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0];
  unsigned lo = 0x80, hi = 0xBF;  /* bounds of the second byte */
  size_t n, i;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;  /* overlong */
    else if (c == 0xED) hi = 0x9F;  /* surrogates */
  }
  else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;  /* overlong */
    else if (c == 0xF4) hi = 0x8F;  /* above U+10FFFF */
  }
  else return 0;
  if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi) return 0;
  for (i = 2; i < n; i++)
    if ((p[i] & 0xC0) != 0x80) return 0;
  return n;
}

static void addescape(Encoder *e, unsigned char c) {
  char buff[8];
  switch (c) {
    case '"': addliteral(e, "\\\""); break;
    case '\\': addliteral(e, "\\\\"); break;
    case '\b': addliteral(e, "\\b"); break;
    case '\f': addliteral(e, "\\f"); break;
    case '\n': addliteral(e, "\\n"); break;
    case '\r': addliteral(e, "\\r"); break;
    case '\t': addliteral(e, "\\t"); break;
    default:
      snprintf(buff, sizeof buff, "\\u%04x", (unsigned)c);
      addlstring(e, buff, 6);
  }
}

/*
** A JSON string.  Runs of bytes that need no escape, valid UTF-8 included,
** are copied in one go.  'what' names the string in errors ("string", "key").
*/
static void addstring(Encoder *e, const char *s, size_t len, const char *what) {
  const unsigned char *start = (const unsigned char *)s;
  const unsigned char *p = start, *end = start + len, *run = start;
  addchar(e, '"');
  while (p < end) {
    unsigned char c = *p;
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\')
      p++;
    else if (c >= 0x80) {
      size_t n = utf8seq(p, end);
      if (n == 0)
        encerror(e, "invalid UTF-8 at byte %I of a %s",
                 (lua_Integer)(p - start) + 1, what);
      p += n;
    }
    else {
      addlstring(e, (const char *)run, (size_t)(p - run));
      addescape(e, c);
      run = ++p;
    }
  }
  addlstring(e, (const char *)run, (size_t)(p - run));
  addchar(e, '"');
}

/* }====================================================== */

/* {====================================================== */
/* Tables */

static void encodevalue(Encoder *e, int idx);

/* Does the table at idx carry the qmp.array metatable? */
static int ismarked(lua_State *L, int idx) {
  int r = 0;
  if (lua_getmetatable(L, idx)) {
    luaL_getmetatable(L, QMP_ARRAY_MT);
    r = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  return r;
}

/*
** Look at the keys of the table at idx and return how many there are:
** *isarray is set when they are exactly 1..n, cleared when they are all
** strings (an object).  An empty table is an object unless marked as an
** array.  Raises for any other key set.  A key is only read as a string
** once lua_type says it is one, so lua_next never sees a key converted
** under it.
*/
static lua_Integer tablekeys(Encoder *e, int idx, int marked, int *isarray) {
  lua_State *L = e->L;
  lua_Integer count = 0, max = 0, strings = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);  /* the value */
    if (lua_type(L, -1) == LUA_TSTRING)
      strings++;
    else if (lua_isinteger(L, -1)) {
      lua_Integer k = lua_tointeger(L, -1);
      if (k <= 0)
        encerror(e, "cannot encode a table with integer key %I (arrays start at 1)", k);
      count++;
      if (k > max) max = k;
    }
    else
      encerror(e, "cannot encode a table with a %s key",
               lua_type(L, -1) == LUA_TNUMBER ? "float" : luaL_typename(L, -1));
    if (strings && count > 0 && !marked)
      encerror(e, "cannot encode a mixed table (both string and integer keys)");
  }
  if (strings) {
    if (marked) encerror(e, "cannot encode a qmp.array with string keys");
    *isarray = 0;
    return strings;
  }
  *isarray = (count > 0 || marked);
  if (count != max) {  /* a hole; the first one is at most count + 1 */
    lua_Integer hole = 1;
    while (lua_rawgeti(L, idx, hole) != LUA_TNIL) {
      lua_pop(L, 1);
      hole++;
    }
    encerror(e, "cannot encode a sparse array (no element %I)", hole);
  }
  return count;
}

/* Pretty form: a line break and the indentation of nesting level 'level'. */
static void newline(Encoder *e, int level) {
  static const char spaces[] = "                                ";
  size_t n = 2 * (size_t)level;
  addchar(e, '\n');
  while (n > 0) {
    size_t k = n < sizeof spaces - 1 ? n : sizeof spaces - 1;
    addlstring(e, spaces, k);
    n -= k;
  }
}

/* Before each element or member: the comma, and in pretty form a new line. */
static void beginitem(Encoder *e, int first) {
  if (!first) addchar(e, ',');
  if (e->pretty) newline(e, e->depth);
}

/* After the last one: the closing bracket, on a line of its own when pretty. */
static void endlist(Encoder *e, char close) {
  if (e->pretty) newline(e, e->depth - 1);
  addchar(e, close);
}

/* Encode the value on top of the stack, whose key (for the path) is just below. */
static void encodechild(Encoder *e) {
  int top = lua_gettop(e->L);
  e->keyslot[e->nkeys++] = top - 1;
  encodevalue(e, top);
  e->nkeys--;
}

/* Write the member whose key and value are on top of the stack. */
static void addmember(Encoder *e, int first) {
  size_t len;
  const char *k = lua_tolstring(e->L, -2, &len);  /* a string: checked by tablekeys */
  beginitem(e, first);
  addstring(e, k, len, "key");
  if (e->pretty) addliteral(e, ": ");
  else addchar(e, ':');
  encodechild(e);
}

/* A key to sort: its bytes, and its place in the table of keys that anchors it. */
typedef struct SortKey {
  const char *s;
  size_t len;
  lua_Integer i;
} SortKey;

/* Byte order, as memcmp; a prefix comes first.  Keys are never equal. */
static int keyorder(const void *a, const void *b) {
  const SortKey *x = (const SortKey *)a, *y = (const SortKey *)b;
  int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
  return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

/*
** The n members of the object at idx, keys in byte order.  The keys are
** collected in a Lua table (which keeps their strings alive) and sorted in
** a userdata, both Lua-owned, so an error anywhere leaks nothing.
*/
static void addsorted(Encoder *e, int idx, lua_Integer n) {
  lua_State *L = e->L;
  lua_Integer i = 0, j;
  int kidx;
  SortKey *keys;
  if (n > INT_MAX || (size_t)n > ((size_t)-1) / sizeof(SortKey))
    encerror(e, "too many keys to sort");
  lua_createtable(L, (int)n, 0);
  kidx = lua_gettop(L);
  keys = (SortKey *)lua_newuserdatauv(L, (size_t)n * sizeof(SortKey), 0);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);  /* the value */
    if (i == n || lua_type(L, -1) != LUA_TSTRING)  /* a finalizer changed it */
      encerror(e, "a table changed while being encoded");
    lua_pushvalue(L, -1);
    lua_rawseti(L, kidx, ++i);
    keys[i - 1].s = lua_tolstring(L, -1, &keys[i - 1].len);
    keys[i - 1].i = i;
  }
  qsort(keys, (size_t)i, sizeof(SortKey), keyorder);
  for (j = 0; j < i; j++) {
    lua_rawgeti(L, kidx, keys[j].i);
    lua_pushvalue(L, -1);
    lua_rawget(L, idx);
    addmember(e, j == 0);
    lua_pop(L, 2);
  }
  lua_pop(L, 2);  /* the keys and their order */
}

static void encodetable(Encoder *e, int idx) {
  lua_State *L = e->L;
  const void *t = lua_topointer(L, idx);
  lua_Integer n, i;
  int d, isarray;
  if (e->depth >= QMP_MAX_DEPTH)
    encerror(e, "cannot encode tables nested deeper than %d", QMP_MAX_DEPTH);
  for (d = 0; d < e->depth; d++)
    if (e->tables[d] == t) encerror(e, "cycle: a table contains itself");
  luaL_checkstack(L, 6, "qmp.encode: tables nested too deep");
  e->tables[e->depth++] = t;
  n = tablekeys(e, idx, ismarked(L, idx), &isarray);
  if (n == 0)  /* on one line, pretty or not */
    addlstring(e, isarray ? "[]" : "{}", 2);
  else if (isarray) {
    addchar(e, '[');
    for (i = 1; i <= n; i++) {
      beginitem(e, i == 1);
      lua_pushinteger(L, i);  /* the key, for the path */
      lua_rawgeti(L, idx, i);
      encodechild(e);
      lua_pop(L, 2);
    }
    endlist(e, ']');
  }
  else {
    addchar(e, '{');
    if (e->sort)
      addsorted(e, idx, n);
    else {
      int first = 1;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        addmember(e, first);
        first = 0;
        lua_pop(L, 1);
      }
    }
    endlist(e, '}');
  }
  e->depth--;
}

/* }====================================================== */

static void encodevalue(Encoder *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) addliteral(e, "true");
      else addliteral(e, "false");
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) addinteger(e, lua_tointeger(L, idx));
      else addfloat(e, lua_tonumber(L, idx));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      addstring(e, s, len, "string");
      break;
    }
    case LUA_TTABLE:
      encodetable(e, idx);
      break;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) != NULL)
        encerror(e, "cannot encode a light userdata other than qmp.null");
      addliteral(e, "null");
      break;
    case LUA_TUSERDATA: {
      uint64_t v;
      char buff[24];
      if (!qmp_touint64(L, idx, &v)) {
        if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING)
          encerror(e, "cannot encode a userdata (%s)", lua_tostring(L, -1));
        encerror(e, "cannot encode a userdata");
      }
      addlstring(e, buff, (size_t)snprintf(buff, sizeof buff, "%" PRIu64, v));
      break;
    }
    case LUA_TNIL:
      encerror(e, "cannot encode nil");
      break;
    default:  /* functions, threads */
      encerror(e, "cannot encode a %s", luaL_typename(L, idx));
  }
}

/* Read the options table at idx (or none) into e; raises on a bad one. */
static void readoptions(lua_State *L, int idx, Encoder *e) {
  e->pretty = e->sort = 0;
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int isname = (lua_type(L, -2) == LUA_TSTRING);
    const char *name = isname ? lua_tostring(L, -2) : NULL;
    int *flag = !isname ? NULL : strcmp(name, "pretty") == 0 ? &e->pretty
              : strcmp(name, "sort") == 0 ? &e->sort : NULL;
    if (flag == NULL && isname)
      luaL_argerror(L, idx, lua_pushfstring(L, "unknown option '%s'", name));
    else if (flag == NULL)
      luaL_argerror(L, idx, lua_pushfstring(L, "unknown option (a %s key)",
                                            luaL_typename(L, -2)));
    else if (!lua_isboolean(L, -1))
      luaL_argerror(L, idx, lua_pushfstring(L, "option '%s' must be a boolean, not %s",
                                            name, luaL_typename(L, -1)));
    else
      *flag = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
}

/* core.encode(value [, opts]) -> JSON text; raises on anything JSON cannot hold. */
static int enc_encode(lua_State *L) {
  Encoder e;
  luaL_checkany(L, 1);
  readoptions(L, 2, &e);
  lua_settop(L, 1);
  luaL_checkstack(L, 8, "qmp.encode");
  lua_pushnil(L);  /* slot for the block, once the text outgrows 'init' */
  e.L = L;
  e.b = e.init;
  e.n = 0;
  e.size = sizeof(e.init);
  e.boxidx = 2;
  e.nkeys = e.depth = 0;
  encodevalue(&e, 1);
  lua_pushlstring(L, e.b, e.n);
  return 1;
}

void qmp_encode_open(lua_State *L) {
  lua_pushcfunction(L, enc_encode);
  lua_setfield(L, -2, "encode");
}
