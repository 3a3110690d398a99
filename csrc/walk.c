/*
** walk.c: a cJSON tree -> Lua values.  cJSON parses a framed message in
** place in the read buffer; one walk turns the tree into Lua values
** (integers with their exact digits, events typed by events[name]), inside
** a to-be-closed box so that a Lua error (out of memory) never leaks it; no
** Lua code runs while a tree is alive.  A big message is taken apart a
** member at a time (Piecewise), and an event of QEMU's shape is built from
** what the quick scan read (scan.c): the values are the same whichever way
** a message goes (spec/fastpath_spec.lua).
*/
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "walk.h"

#define TREEBOX_MT "qmp.TreeBox"

/* {====================================================== */
/* Walk: cJSON tree -> Lua */

typedef struct Walk {
  lua_State *L;
  int keys;           /* stack index of the key cache */
  const char *text;   /* the message, for exact integer digits */
  size_t len;
  int sawfloat;       /* from the scanner */
  size_t numseen;     /* numbers visited so far (document order) */
  size_t cur;         /* number-token cursor into text */
  size_t curcount;    /* number tokens the cursor has passed */
  int curinstr;       /* the cursor is inside a string */
} Walk;

static int isnumchar(char c) {
  return isdigit_json((unsigned char)c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Find the text of the k-th number token (0-based).  cJSON keeps members in
** document order and the walk is depth-first, so tokens and nodes line up. */
static const char *number_token(Walk *w, size_t k, size_t *toklen) {
  const char *t = w->text;
  size_t i = w->cur;
  for (; i < w->len; i++) {
    char c = t[i];
    if (w->curinstr) {
      if (c == '\\') i++;
      else if (c == '"') w->curinstr = 0;
    }
    else if (c == '"') w->curinstr = 1;
    else if (c == '-' || isdigit_json((unsigned char)c)) {
      size_t start = i;
      while (i < w->len && isnumchar(t[i])) i++;
      if (w->curcount++ == k) {
        w->cur = i;
        *toklen = i - start;
        return t + start;
      }
      i--;
    }
  }
  w->cur = i;
  return NULL;
}

/* Push the integer written in tok (no fraction, no exponent) exactly:
** int64 range as a Lua integer, above it up to 2^64-1 as a qmp.uint64,
** anything else as the float cJSON computed. */
static void push_exact_integer(lua_State *L, const char *tok, size_t n, double d) {
  uint64_t v = 0;
  size_t i = 0;
  int neg = (n > 0 && tok[0] == '-');
  for (i = neg; i < n; i++) {
    unsigned digit = (unsigned)(tok[i] - '0');
    if (v > (UINT64_MAX - digit) / 10) { lua_pushnumber(L, d); return; }
    v = v * 10 + digit;
  }
  if (neg) {
    if (v <= (uint64_t)INT64_MAX) lua_pushinteger(L, -(lua_Integer)v);
    else if (v == (uint64_t)INT64_MAX + 1) lua_pushinteger(L, LUA_MININTEGER);
    else lua_pushnumber(L, d);
  }
  else if (v <= (uint64_t)INT64_MAX) lua_pushinteger(L, (lua_Integer)v);
  else qmp_pushuint64(L, v);
}

#define EXACT_LIMIT 9007199254740992.0  /* 2^53: doubles below are exact integers */

static void push_number(Walk *w, const cJSON *node) {
  lua_State *L = w->L;
  double d = node->valuedouble;
  size_t k = w->numseen++;
  const char *tok;
  size_t toklen;
  if (!w->sawfloat && fabs(d) < EXACT_LIMIT) {  /* common case: all integers, small */
    lua_pushinteger(L, (lua_Integer)d);
    return;
  }
  if (w->sawfloat && (isinf(d) || isnan(d) || d != floor(d))) {
    lua_pushnumber(L, d);  /* certainly a float; skip the token search */
    return;
  }
  tok = number_token(w, k, &toklen);
  if (tok == NULL || memchr(tok, '.', toklen) || memchr(tok, 'e', toklen)
      || memchr(tok, 'E', toklen))
    lua_pushnumber(L, d);
  else
    push_exact_integer(L, tok, toklen, d);
}

/*
** Key cache.  The member names QMP repeats in every message are kept as Lua
** strings (a table, slot + 1 -> name, that the decoding functions hold as an
** upvalue), so pushing one is a table read instead of hashing its bytes into
** Lua's string table.  A name's slot
** comes from its length and three of its bytes; the multiplier was chosen
** so that no two of these names share a slot.  Any other name is pushed as
** usual, so a miss only costs speed.
*/
#define KEY_SLOTS 128
#define K(name) { name, sizeof name - 1 }
static const struct { const char *name; size_t len; } KEY_NAMES[KEY_SLOTS] = {
  [0] = K("version"), [5] = K("running"), [7] = K("ready"), [9] = K("reason"), [12] = K("info"),
  [14] = K("data"), [16] = K("desc"), [18] = K("port"), [21] = K("node-name"), [28] = K("status"),
  [33] = K("len"), [34] = K("guest"), [35] = K("qemu"), [38] = K("family"), [39] = K("nospace"),
  [40] = K("microseconds"), [41] = K("device"), [44] = K("service"), [48] = K("host"),
  [49] = K("paused"), [52] = K("current-progress"), [55] = K("qom-path"), [61] = K("timestamp"),
  [66] = K("speed"), [67] = K("capabilities"), [70] = K("package"), [73] = K("class"),
  [75] = K("client"), [80] = K("busy"), [82] = K("server"), [85] = K("type"), [87] = K("websocket"),
  [88] = K("name"), [89] = K("error"), [90] = K("auth"), [91] = K("event"), [93] = K("operation"),
  [94] = K("size"), [99] = K("total-progress"), [104] = K("io-status"), [107] = K("path"),
  [109] = K("QMP"), [114] = K("seconds"), [117] = K("action"), [119] = K("offset"), [124] = K("id"),
  [127] = K("return"),
};
#undef K

static unsigned key_slot(const char *s, size_t n) {  /* n >= 2 */
  uint64_t x = (unsigned char)s[0] | (uint64_t)(unsigned char)s[n - 2] << 8
               | (uint64_t)(unsigned char)s[n - 1] << 16 | (uint64_t)n << 24;
  return (unsigned)((x * UINT64_C(0x024ea8e4fa8ce75b)) >> 57);
}

/* Push the name s[0..n), from the cache at keysidx if there.  An empty
** slot has length 0, which no name that gets here has. */
void qmp_push_name(lua_State *L, int keysidx, const char *s, size_t n) {
  if (n >= 2) {
    unsigned slot = key_slot(s, n);
    if (KEY_NAMES[slot].len == n && memcmp(KEY_NAMES[slot].name, s, n) == 0) {
      lua_rawgeti(L, keysidx, slot + 1);
      return;
    }
  }
  lua_pushlstring(L, s, n);
}

void qmp_keys_new(lua_State *L) {
  unsigned i;
  lua_createtable(L, KEY_SLOTS, 0);
  for (i = 0; i < KEY_SLOTS; i++) {
    if (KEY_NAMES[i].name != NULL) lua_pushlstring(L, KEY_NAMES[i].name, KEY_NAMES[i].len);
    else lua_pushboolean(L, 0);  /* no holes: the slots stay in the array part */
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static int count_children(const cJSON *node) {
  int n = 0;
  for (node = node->child; node != NULL; node = node->next) n++;
  return n;
}

/* The walk frees each child once it is pushed: the cJSON tree shrinks as
** the Lua value grows, so a big reply never holds both whole (peak memory).
** The child is unlinked first, so the tree stays whole for the box's
** cleanup if a push raises. */
static void free_head(cJSON *node) {
  cJSON *child = node->child;
  node->child = child->next;
  if (child->next != NULL) child->next->prev = child->prev;  /* the head's prev is the tail */
  child->next = child->prev = NULL;
  cJSON_Delete(child);
}

static void push_node(Walk *w, cJSON *node) {
  lua_State *L = w->L;
  cJSON *child;
  luaL_checkstack(L, 3, "cannot grow the Lua stack for a nested JSON value");
  switch (node->type & 0xFF) {
    case cJSON_False: lua_pushboolean(L, 0); break;
    case cJSON_True: lua_pushboolean(L, 1); break;
    case cJSON_NULL: qmp_pushnull(L); break;
    case cJSON_Number: push_number(w, node); break;
    case cJSON_String:  /* no NUL inside: the scanner */
      lua_pushlstring(L, node->valuestring, strlen(node->valuestring));
      break;
    case cJSON_Array: {
      lua_Integer i = 1;
      lua_createtable(L, count_children(node), 0);
      /* An empty array is marked so that it encodes back as [], not {}.  A
      ** non-empty one needs no mark (its keys 1..n say array), and leaving
      ** it plain keeps decoding fast. */
      if (node->child == NULL) luaL_setmetatable(L, QMP_ARRAY_MT);
      while ((child = node->child) != NULL) {
        push_node(w, child);
        lua_rawseti(L, -2, i++);
        free_head(node);
      }
      break;
    }
    case cJSON_Object:
      lua_createtable(L, 0, count_children(node));
      while ((child = node->child) != NULL) {
        qmp_push_name(L, w->keys, child->string, strlen(child->string));
        push_node(w, child);
        lua_rawset(L, -3);  /* duplicate keys: the last one wins */
        free_head(node);
      }
      break;
    default: qmp_pushnull(L); break;  /* cJSON_Raw/Invalid: not produced by the parser */
  }
}

static int treebox_close(lua_State *L) {
  qmp_treebox *box = (qmp_treebox *)lua_touserdata(L, 1);
  if (box == NULL) return 0;
  if (box->tree != NULL) {
    cJSON_Delete(box->tree);
    box->tree = NULL;
  }
  if (box->busy != NULL) {  /* the call is over, or cut short by an error: the decoder is free */
    *box->busy = 0;
    box->busy = NULL;
  }
  return 0;
}

qmp_treebox *qmp_treebox_new(lua_State *L) {
  qmp_treebox *box = (qmp_treebox *)lua_newuserdatauv(L, sizeof(qmp_treebox), 0);
  box->tree = NULL;
  box->busy = NULL;
  box->pieces = 0;
  luaL_setmetatable(L, TREEBOX_MT);
  return box;
}

void qmp_walk_open(lua_State *L) {
  if (luaL_newmetatable(L, TREEBOX_MT)) {
    lua_pushcfunction(L, treebox_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, treebox_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

/* Give an event its type: the metatable events[name], created on first sight
** by the events table's __index (Lua).  Messages without data get data = {}. */
static void type_event(lua_State *L, int msgidx, int eventsidx, int keysidx) {
  qmp_push_name(L, keysidx, "event", 5);
  if (lua_rawget(L, msgidx) != LUA_TSTRING) {
    lua_pop(L, 1);
    return;
  }
  lua_pushvalue(L, -1);
  if (lua_rawget(L, eventsidx) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_gettable(L, eventsidx);  /* may call Lua: the tree is already gone */
  }
  if (lua_type(L, -1) == LUA_TTABLE) lua_setmetatable(L, msgidx);
  else lua_pop(L, 1);
  lua_pop(L, 1);  /* the name */
  qmp_push_name(L, keysidx, "data", 4);  /* raw: the type's __index must not answer */
  if (lua_rawget(L, msgidx) == LUA_TNIL) {
    qmp_push_name(L, keysidx, "data", 4);
    lua_newtable(L);
    lua_rawset(L, msgidx);
  }
  lua_pop(L, 1);
}

/*
** Parse text[0..len) (text[len] must be NUL) into box->tree.  Touches no
** Lua state, so callers can restore the byte after the text at once.
** Returns 1; or 0 (not JSON) or -1 (cJSON could not allocate: kind
** "memory") with the reason in why.
*/
int qmp_parse_text(qmp_treebox *box, const char *text, size_t len, char *why, size_t whysz) {
  const char *end = NULL;
  char ex[48];
  box->tree = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (box->tree == NULL) {
    size_t at;
    if (qmp_strict_json((const unsigned char *)text, len)) {
      snprintf(why, whysz, "out of memory: cJSON could not allocate while parsing %d bytes of JSON",
               (int)len);
      return -1;
    }
    at = (end != NULL && end >= text) ? (size_t)(end - text) : 0;
    if (at > len) at = len;
    snprintf(why, whysz, "invalid JSON at byte %d of a %d-byte message near '%s'",
             (int)at, (int)len, qmp_excerpt(ex, text + at, len - at));
    return 0;
  }
  while (end < text + len && isspace_json((unsigned char)*end)) end++;
  if (end != text + len) {
    cJSON_Delete(box->tree);
    box->tree = NULL;
    snprintf(why, whysz, "trailing data after the JSON value at byte %d: '%s'",
             (int)(end - text), qmp_excerpt(ex, end, (size_t)(text + len - end)));
    return 0;
  }
  return 1;
}

/*
** Push the Lua value of box->tree (parsed from text) and free the tree.
** Raises only on memory errors (the box, marked to-be-closed by the
** caller, then frees the tree).
*/
static void push_tree(lua_State *L, qmp_treebox *box, int keysidx,
                      const char *text, size_t len, int sawfloat) {
  Walk w;
  w.L = L; w.keys = keysidx; w.text = text; w.len = len; w.sawfloat = sawfloat;
  w.numseen = 0; w.cur = 0; w.curcount = 0; w.curinstr = 0;
  push_node(&w, box->tree);
  cJSON_Delete(box->tree);
  box->tree = NULL;
}

/* push_tree for a whole message: an object also gets its event type. */
void qmp_push_message(lua_State *L, qmp_treebox *box, int eventsidx, int keysidx,
                      const char *text, size_t len, int sawfloat) {
  push_tree(L, box, keysidx, text, len, sawfloat);
  if (lua_type(L, -1) == LUA_TTABLE)
    type_event(L, lua_gettop(L), eventsidx, keysidx);  /* may call Lua: the tree is gone */
}

/* }====================================================== */


/* {====================================================== */
/* Piecewise: a big message a member at a time
**
** cJSON's tree of a message takes some ten times its size, and the Lua
** value four more: a big reply (query-qmp-schema) would hold both.  So a
** container longer than PIECE_MIN is taken apart here, and cJSON parses
** one member's value at a time, each tree freed once its value is pushed.
** The values are the ones the whole parse would give: each piece goes
** through the same parse and walk, keys are pushed as the walk does, and
** anything this cannot be sure of (a byte cJSON would be laxer about than
** the walk here, a piece cJSON refuses) gives up, leaving the message to
** the whole parse.  The message was framed, so its strings and brackets
** close inside it: no scan here runs past its end.
*/

#define PIECE_MIN QMP_PIECE_MIN
/* Containers taken apart inside one another at most: deeper ones are parsed
** whole, so that decoding nesting 1000 deep still fits in 128 KiB of C
** stack (docs/faults.md row 64). */
#define PIECE_DEPTH 32

#define SKIP_SPACE() while (isspace_json(*c)) c++

/* The end of the value at c: past a string or a balanced container, or up
** to a delimiter for anything else (cJSON judges the piece); NULL if unsure. */
static char *value_end(char *text) {
  const unsigned char *c = (const unsigned char *)text;
  int depth = 0, plain;
  if (*c != '"' && *c != '{' && *c != '[') {
    while (*c != ',' && *c != ']' && *c != '}' && !isspace_json(*c) && *c != '\0') c++;
    return (char *)c == text ? NULL : (char *)c;  /* none: a misplaced delimiter */
  }
  do {
    switch (*c) {
      case '"': if ((c = qmp_quick_string(c + 1, &plain)) == NULL) return NULL; continue;
      case '{': case '[': depth++; break;
      case '}': case ']': depth--; break;
      case '\0': return NULL;
      default: break;
    }
    c++;
  } while (depth > 0);
  return (char *)c;
}

static int push_piece(lua_State *L, qmp_treebox *box, int keys, char *start, char *stop, int sawfloat);

/* Push the container [start, stop) a member at a time: 1, or 0 (unsure,
** nothing pushed). */
static int push_parts(lua_State *L, qmp_treebox *box, int keys, char *start, char *stop, int sawfloat) {
  int object = *start == '{', top = lua_gettop(L), plain;
  char close = object ? '}' : ']';
  const unsigned char *c;
  size_t n = 0;
  lua_Integer i = 0;
  luaL_checkstack(L, 4, "cannot grow the Lua stack for a nested JSON value");
  c = (const unsigned char *)start + 1;  /* first the members' layout, and how many */
  SKIP_SPACE();
  while (*c != (unsigned char)close) {
    if (object) {
      if (*c != '"' || (c = qmp_quick_string(c + 1, &plain)) == NULL) return 0;
      SKIP_SPACE();
      if (*c++ != ':') return 0;
      SKIP_SPACE();
    }
    if ((c = (const unsigned char *)value_end((char *)c)) == NULL) return 0;
    n++;
    SKIP_SPACE();
    if (*c == ',') {
      c++;
      SKIP_SPACE();
      if (*c == (unsigned char)close) return 0;  /* a trailing comma */
    }
    else if (*c != (unsigned char)close) return 0;
  }
  if ((char *)c + 1 != stop || n == 0) return 0;  /* an empty one: the walk marks arrays */
  if (n > INT_MAX) n = INT_MAX;  /* a size hint only */
  lua_createtable(L, object ? 0 : (int)n, object ? (int)n : 0);
  c = (const unsigned char *)start + 1;  /* then the members, as laid out above */
  SKIP_SPACE();
  while (*c != (unsigned char)close) {
    char *end;
    if (object) {
      const unsigned char *key = c + 1;
      plain = 1;
      c = qmp_quick_string(key, &plain);
      if (plain) qmp_push_name(L, keys, (const char *)key, (size_t)(c - 1 - key));
      else if (!push_piece(L, box, keys, (char *)key - 1, (char *)c, sawfloat)) goto unsure;
      SKIP_SPACE();
      c++;  /* the colon */
      SKIP_SPACE();
    }
    end = value_end((char *)c);
    if (!push_piece(L, box, keys, (char *)c, end, sawfloat)) goto unsure;
    if (object) lua_rawset(L, -3);  /* duplicate keys: the last one wins, as in the walk */
    else lua_rawseti(L, -2, ++i);
    c = (const unsigned char *)end;
    SKIP_SPACE();
    if (*c == ',') {
      c++;
      SKIP_SPACE();
    }
  }
  return 1;
 unsure:
  lua_settop(L, top);
  return 0;
}

/* Push the value [start, stop): a big container by push_parts, anything
** else parsed whole.  1, or 0 (unsure, nothing pushed). */
static int push_piece(lua_State *L, qmp_treebox *box, int keys, char *start, char *stop, int sawfloat) {
  char saved, why[8];
  int ok;
  if (stop - start > PIECE_MIN && (*start == '{' || *start == '[') && box->pieces < PIECE_DEPTH) {
    box->pieces++;
    ok = push_parts(L, box, keys, start, stop, sawfloat);
    box->pieces--;
    return ok;
  }
  saved = *stop;  /* a byte of the message, after the piece */
  *stop = '\0';
  ok = qmp_parse_text(box, start, (size_t)(stop - start), why, sizeof why);
  *stop = saved;
  if (ok <= 0) return 0;
  push_tree(L, box, keys, start, (size_t)(stop - start), sawfloat);
  return 1;
}

#undef SKIP_SPACE

/* }====================================================== */


/* {====================================================== */
/* Messages: framed ones, and events of QEMU's shape */

int qmp_push_framed(lua_State *L, qmp_treebox *box, int events, int keys,
                    char *text, size_t len, int sawfloat, char *why, size_t whysz) {
  char saved;
  int ok;
  if (len > PIECE_MIN) {
    box->pieces = 1;  /* also after an error left it counting */
    if (push_parts(L, box, keys, text, text + len, sawfloat)) {
      type_event(L, lua_gettop(L), events, keys);
      return 1;
    }
  }
  saved = text[len];  /* NUL-terminate in place for cJSON */
  text[len] = '\0';
  ok = qmp_parse_text(box, text, len, why, whysz);
  text[len] = saved;
  if (ok <= 0) return ok;
  qmp_push_message(L, box, events, keys, text, len, sawfloat);
  return 1;
}

/*
** Flat data: an event's data object whose members are all plain (strings
** without escapes, integers of up to 18 digits, true, false, null) is read
** from the bytes, as the timestamp is: that is most of QEMU's events, and
** it spares cJSON a tree of a node and a string or two per member.  The
** values are the walk's: it pushes such strings as their bytes and reads
** integers from the text too.  quick_scan checked the bytes and found the
** data flat, with n members (q->flat): only the kinds of the values are
** looked at here.
*/
static void push_flat_data(lua_State *L, int keys, const unsigned char *c, long n) {
  int plain = 1;
  lua_createtable(L, 0, n < INT_MAX ? (int)n : INT_MAX);  /* a size hint */
  c++;
  while (isspace_json(*c)) c++;
  if (*c == '}') return;
  for (;;) {
    const unsigned char *key = c + 1, *keyend, *value;
    keyend = c = qmp_quick_string(key, &plain);  /* past the closing quote */
    while (*c != ':') c++;
    c++;
    while (isspace_json(*c)) c++;
    value = c;
    qmp_push_name(L, keys, (const char *)key, (size_t)(keyend - 1 - key));
    switch (*c) {
      case '"':
        c = qmp_quick_string(c + 1, &plain);
        lua_pushlstring(L, (const char *)value + 1, (size_t)(c - value) - 2);
        break;
      case 't': c += 4; lua_pushboolean(L, 1); break;
      case 'f': c += 5; lua_pushboolean(L, 0); break;
      case 'n': c += 4; qmp_pushnull(L); break;
      default:
        c = qmp_quick_integer(c);
        lua_pushinteger(L, qmp_integer_value(value));
        break;
    }
    lua_rawset(L, -3);  /* duplicate keys: the last one wins, as in the walk */
    while (isspace_json(*c)) c++;
    if (*c != ',') return;  /* the closing brace */
    c++;
    while (isspace_json(*c)) c++;
  }
}

/*
** Gives the values the whole message would: timestamp integers are exact
** either way, the message table has room for as many members, and the
** event is typed as type_event would (data = {} when there is none).
*/
int qmp_push_shaped(lua_State *L, qmp_treebox *box, int events, int keys,
                    const qmp_quick *q, char *why, size_t whysz) {
  int msg;
  char *data = (char *)q->data, saved = 0;  /* in the framer's buffer, which is writable */
  size_t datalen = q->data ? (size_t)(q->dataend - q->data) : 0;
  if (data != NULL && q->flat < 0) {
    int ok;
    saved = data[datalen];  /* a byte of the message: '}', ',' or a space */
    data[datalen] = '\0';
    ok = qmp_parse_text(box, data, datalen, why, whysz);  /* cannot fail but for memory */
    data[datalen] = saved;
    if (ok <= 0) return ok;
  }
  lua_createtable(L, 0, 3);
  msg = lua_gettop(L);
  lua_pushlstring(L, q->name, q->namelen);  /* at msg + 1 until typed */
  qmp_push_name(L, keys, "timestamp", 9);
  lua_createtable(L, 0, 2);
  qmp_push_name(L, keys, "seconds", 7);
  lua_pushinteger(L, qmp_integer_value(q->seconds));
  lua_rawset(L, -3);
  qmp_push_name(L, keys, "microseconds", 12);
  lua_pushinteger(L, qmp_integer_value(q->microseconds));
  lua_rawset(L, -3);
  lua_rawset(L, msg);
  qmp_push_name(L, keys, "event", 5);
  lua_pushvalue(L, msg + 1);
  lua_rawset(L, msg);
  qmp_push_name(L, keys, "data", 4);
  if (data == NULL) lua_newtable(L);
  else if (q->flat >= 0) push_flat_data(L, keys, (const unsigned char *)data, q->flat);
  else push_tree(L, box, keys, data, datalen, q->sawfloat);
  lua_rawset(L, msg);
  lua_pushvalue(L, msg + 1);  /* the type: events[name], made by its __index on first sight */
  if (lua_rawget(L, events) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushvalue(L, msg + 1);
    lua_gettable(L, events);  /* may call Lua: the tree is already gone */
  }
  if (lua_type(L, -1) == LUA_TTABLE) lua_setmetatable(L, msg);
  else lua_pop(L, 1);
  lua_pop(L, 1);  /* the name */
  return 1;
}
/* }====================================================== */
