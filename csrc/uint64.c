/*
** uint64.c: boxed unsigned 64-bit integers.
** QMP sends unsigned values up to 2^64-1 (the hyper-v crash parameters of
** GUEST_PANICKED, for one), beyond what a Lua integer holds.  The decoder
** boxes those in a full userdata holding a uint64_t; the encoder writes a
** box back as its exact digits.  core.uint64() builds a box from a decimal
** string or from the bits of a Lua integer, so values survive a round trip.
** Boxes compare by value: == with other boxes, < and <= with plain numbers
** too.  Like any userdata, two equal boxes are still different table keys.
*/
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qmp.h"

#define U64_DIGITS 20  /* digits of 2^64-1 */

/* The decimal digits of v, as a NUL-terminated string in buff. */
static const char *u64text(char buff[U64_DIGITS + 1], uint64_t v) {
  snprintf(buff, U64_DIGITS + 1, "%" PRIu64, v);
  return buff;
}

void qmp_pushuint64(lua_State *L, uint64_t v) {
  uint64_t *p = (uint64_t *)lua_newuserdatauv(L, sizeof(uint64_t), 0);
  *p = v;
  luaL_setmetatable(L, QMP_UINT64_MT);
}

int qmp_touint64(lua_State *L, int idx, uint64_t *v) {
  uint64_t *p = (uint64_t *)luaL_testudata(L, idx, QMP_UINT64_MT);
  if (p == NULL) return 0;
  *v = *p;
  return 1;
}

static uint64_t checkuint64(lua_State *L, int idx) {
  return *(uint64_t *)luaL_checkudata(L, idx, QMP_UINT64_MT);
}

/*
** Parse a string of decimal digits (nothing else: no sign, no spaces).
** Returns 1 on success, 0 for bad syntax, -1 when above 2^64-1.
*/
static int parseuint64(const char *s, size_t len, uint64_t *v) {
  uint64_t x = 0;
  size_t i;
  if (len == 0 || len != strspn(s, "0123456789")) return 0;
  for (i = 0; i < len; i++) {
    unsigned d = (unsigned)(s[i] - '0');
    if (x > (UINT64_MAX - d) / 10) return -1;  /* x * 10 + d would wrap */
    x = x * 10 + d;
  }
  *v = x;
  return 1;
}

/* core.uint64(x): x is a decimal string, a Lua integer (its 64 bits) or a box. */
static int u64_new(lua_State *L) {
  uint64_t v;
  switch (lua_type(L, 1)) {
    case LUA_TNUMBER:
      if (!lua_isinteger(L, 1))
        return luaL_argerror(L, 1, "integer expected, got a float");
      v = (uint64_t)lua_tointeger(L, 1);  /* two's complement: -1 is 2^64-1 */
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, 1, &len);
      int r = parseuint64(s, len, &v);
      if (r == 0) return luaL_argerror(L, 1, "not a string of decimal digits");
      if (r < 0) return luaL_argerror(L, 1, "above 18446744073709551615");
      break;
    }
    default:
      if (!qmp_touint64(L, 1, &v))
        return luaL_typeerror(L, 1, "integer or decimal string");
  }
  qmp_pushuint64(L, v);
  return 1;
}

static int u64_tostring(lua_State *L) {
  char buff[U64_DIGITS + 1];
  lua_pushstring(L, u64text(buff, checkuint64(L, 1)));
  return 1;
}

static int u64_tonumber(lua_State *L) {
  lua_pushnumber(L, (lua_Number)checkuint64(L, 1));
  return 1;
}

/* The same 64 bits as a Lua integer: values above 2^63-1 come out negative. */
static int u64_bits(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkuint64(L, 1));
  return 1;
}

/* Lua only calls __eq when both operands are full userdata. */
static int u64_eq(lua_State *L) {
  uint64_t a, b;
  lua_pushboolean(L, qmp_touint64(L, 1, &a) && qmp_touint64(L, 2, &b) && a == b);
  return 1;
}

/* {====================================================== */
/* Ordering against boxes, integers and floats, without rounding */

#define TWO64 18446744073709551616.0  /* 2^64, exact as a double */

/* The type of the value at idx as Lua's own messages name it (__name first). */
static const char *objtypename(lua_State *L, int idx) {
  const char *name = NULL;
  int t = luaL_getmetafield(L, idx, "__name");
  if (t == LUA_TSTRING)
    name = lua_tostring(L, -1);  /* stays alive: the metatable holds it */
  if (t != LUA_TNIL)
    lua_pop(L, 1);
  return name ? name : luaL_typename(L, idx);
}

/*
** Compare the box value u with the number at idx: -1, 0 or 1 as u is less,
** equal or greater; 2 when unordered (NaN).  Raises for non-numbers.
*/
static int cmpnumber(lua_State *L, uint64_t u, int idx) {
  uint64_t w;
  if (qmp_touint64(L, idx, &w))
    return (u < w) ? -1 : (u > w);
  if (lua_type(L, idx) != LUA_TNUMBER)
    return luaL_error(L, "attempt to compare %s with %s",
                      objtypename(L, 1), objtypename(L, 2));
  if (lua_isinteger(L, idx)) {
    lua_Integer i = lua_tointeger(L, idx);
    if (i < 0) return 1;
    return (u < (uint64_t)i) ? -1 : (u > (uint64_t)i);
  }
  else {
    double f = (double)lua_tonumber(L, idx);
    uint64_t t;
    if (f != f) return 2;  /* NaN */
    if (f < 0) return 1;
    if (f >= TWO64) return -1;
    /* 0 <= f < 2^64: its integer part t is exact; if f has a fraction it
    ** is below 2^53, so (double)t is exact too and f > t means u < f */
    t = (uint64_t)f;
    if (u != t) return (u < t) ? -1 : 1;
    return (f > (double)t) ? -1 : 0;
  }
}

/* Order of operand 1 against operand 2; at least one of them is a box. */
static int cmpargs(lua_State *L) {
  uint64_t u;
  int c;
  if (qmp_touint64(L, 1, &u))
    return cmpnumber(L, u, 2);
  u = checkuint64(L, 2);
  c = cmpnumber(L, u, 1);
  return (c == 2) ? 2 : -c;
}

static int u64_lt(lua_State *L) {
  lua_pushboolean(L, cmpargs(L) == -1);
  return 1;
}

static int u64_le(lua_State *L) {
  int c = cmpargs(L);
  lua_pushboolean(L, c == -1 || c == 0);
  return 1;
}

/* }====================================================== */

/* "x" .. u and u .. "x": a box concatenates as its digits. */
static int u64_concat(lua_State *L) {
  char buff[U64_DIGITS + 1];
  uint64_t v;
  int i;
  for (i = 1; i <= 2; i++) {
    if (qmp_touint64(L, i, &v)) {
      lua_pushstring(L, u64text(buff, v));
      lua_replace(L, i);
    }
    else if (!lua_isstring(L, i))  /* strings and numbers concatenate */
      return luaL_error(L, "attempt to concatenate a %s value", luaL_typename(L, i));
  }
  lua_settop(L, 2);
  lua_concat(L, 2);
  return 1;
}

static const luaL_Reg u64_meta[] = {
  {"__tostring", u64_tostring},
  {"__eq", u64_eq},
  {"__lt", u64_lt},
  {"__le", u64_le},
  {"__concat", u64_concat},
  {"__index", NULL},  /* placeholder */
  {NULL, NULL}
};

static const luaL_Reg u64_methods[] = {
  {"tonumber", u64_tonumber},
  {"bits", u64_bits},
  {"tostring", u64_tostring},
  {NULL, NULL}
};

void qmp_uint64_open(lua_State *L) {
  if (luaL_newmetatable(L, QMP_UINT64_MT)) {  /* idempotent: we may be loaded twice */
    luaL_setfuncs(L, u64_meta, 0);
    luaL_newlib(L, u64_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_setfield(L, -2, "uint64_mt");
  lua_pushcfunction(L, u64_new);
  lua_setfield(L, -2, "uint64");
}
