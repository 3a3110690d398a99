/*
** decode.c: bytes -> Lua values.
**
** Three stages, all in one pass over each byte where possible:
**   scanner  (scan.c) a JSON-aware byte scanner (strings, escapes, depth) that finds
**            where each top-level object ends, whatever the line endings
**            (pretty=on output, \n, \r\n) and whatever the read chunking;
**            it also rejects what cJSON would silently get wrong (\u0000,
**            bad \u escapes, raw NUL) and bounds nesting;
**   cJSON    parses one framed message in place in the read buffer;
**   walk     turns the cJSON tree into Lua values in one walk, recovering
**            the exact digits of integers that a double cannot hold.
**
** The batch path (drain: many messages per call) frames with a quick scan
** (scan.c) first: a strict one-pass check of a whole message that also reads an
** event's name, timestamp and shape.  An event outside the caller's
** interest set is then skipped unparsed, and of one of QEMU's shape cJSON
** parses only the data.  What the quick scan is unsure of goes the way
** above, so both paths give the same values (spec/fastpath_spec.lua).
**
** The cJSON tree sits in a to-be-closed box while the walk runs, so a Lua
** error (out of memory) in the middle can never leak it.  No Lua code runs
** while a tree is alive: events get their metatable after the tree is freed.
*/
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "qmp.h"
#include "scan.h"

#define TREEBOX_MT "qmp.TreeBox"


/* {====================================================== */
/* Walk: cJSON tree -> Lua */

typedef struct TreeBox {
  cJSON *tree;          /* the tree being walked, or NULL */
  int *busy;            /* the decoder's busy flag while a decoding call runs, or NULL */
  int pieces;           /* push_parts calls under way (bounded: each takes C stack) */
} TreeBox;

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
** strings (registry "qmp.keys", slot + 1 -> name), so pushing one is a table
** read instead of hashing its bytes into Lua's string table.  A name's slot
** comes from its length and three of its bytes; the multiplier was chosen
** so that no two of these names share a slot.  Any other name is pushed as
** usual, so a miss only costs speed.
*/
#define KEY_SLOTS 128
static const char *const KEY_NAMES[KEY_SLOTS] = {
  [0] = "version", [5] = "running", [7] = "ready", [9] = "reason", [12] = "info",
  [14] = "data", [16] = "desc", [18] = "port", [21] = "node-name", [28] = "status",
  [33] = "len", [34] = "guest", [35] = "qemu", [38] = "family", [39] = "nospace",
  [40] = "microseconds", [41] = "device", [44] = "service", [48] = "host",
  [49] = "paused", [52] = "current-progress", [55] = "qom-path", [61] = "timestamp",
  [66] = "speed", [67] = "capabilities", [70] = "package", [73] = "class",
  [75] = "client", [80] = "busy", [82] = "server", [85] = "type", [87] = "websocket",
  [88] = "name", [89] = "error", [90] = "auth", [91] = "event", [93] = "operation",
  [94] = "size", [99] = "total-progress", [104] = "io-status", [107] = "path",
  [109] = "QMP", [114] = "seconds", [117] = "action", [119] = "offset", [124] = "id",
  [127] = "return",
};

static unsigned key_slot(const char *s, size_t n) {  /* n >= 2 */
  uint64_t x = (unsigned char)s[0] | (uint64_t)(unsigned char)s[n - 2] << 8
               | (uint64_t)(unsigned char)s[n - 1] << 16 | (uint64_t)n << 24;
  return (unsigned)((x * UINT64_C(0x024ea8e4fa8ce75b)) >> 57);
}

/* Push the name s[0..n) (s[n] is NUL), from the cache at keysidx if there. */
static void push_name(lua_State *L, int keysidx, const char *s, size_t n) {
  if (n >= 2) {
    unsigned slot = key_slot(s, n);
    const char *k = KEY_NAMES[slot];
    /* strncmp stops at k's end (memcmp would read past a shorter k); then
    ** k[n] == NUL says the lengths match too. */
    if (k != NULL && strncmp(k, s, n) == 0 && k[n] == '\0') {
      lua_rawgeti(L, keysidx, slot + 1);
      return;
    }
  }
  lua_pushlstring(L, s, n);
}

/* The key cache, in the registry from the module's first load on. */
static void keys_open(lua_State *L) {
  unsigned i;
  if (lua_getfield(L, LUA_REGISTRYINDEX, "qmp.keys") == LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_createtable(L, KEY_SLOTS, 0);
  for (i = 0; i < KEY_SLOTS; i++) {
    if (KEY_NAMES[i] != NULL) lua_pushstring(L, KEY_NAMES[i]);
    else lua_pushboolean(L, 0);  /* no holes: the slots stay in the array part */
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "qmp.keys");
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
        push_name(L, w->keys, child->string, strlen(child->string));
        push_node(w, child);
        lua_rawset(L, -3);  /* duplicate keys: the last one wins */
        free_head(node);
      }
      break;
    default: qmp_pushnull(L); break;  /* cJSON_Raw/Invalid: not produced by the parser */
  }
}

static int treebox_close(lua_State *L) {
  TreeBox *box = (TreeBox *)lua_touserdata(L, 1);
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

static TreeBox *treebox_new(lua_State *L) {
  TreeBox *box = (TreeBox *)lua_newuserdatauv(L, sizeof(TreeBox), 0);
  box->tree = NULL;
  box->busy = NULL;
  box->pieces = 0;
  luaL_setmetatable(L, TREEBOX_MT);
  return box;
}

/* Give an event its type: the metatable events[name], created on first sight
** by the events table's __index (Lua).  Messages without data get data = {}. */
static void type_event(lua_State *L, int msgidx, int eventsidx, int keysidx) {
  push_name(L, keysidx, "event", 5);
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
  push_name(L, keysidx, "data", 4);  /* raw: the type's __index must not answer */
  if (lua_rawget(L, msgidx) == LUA_TNIL) {
    push_name(L, keysidx, "data", 4);
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
static int parse_text(TreeBox *box, const char *text, size_t len, char *why, size_t whysz) {
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
static void push_tree(lua_State *L, TreeBox *box, int keysidx,
                      const char *text, size_t len, int sawfloat) {
  Walk w;
  w.L = L; w.keys = keysidx; w.text = text; w.len = len; w.sawfloat = sawfloat;
  w.numseen = 0; w.cur = 0; w.curcount = 0; w.curinstr = 0;
  push_node(&w, box->tree);
  cJSON_Delete(box->tree);
  box->tree = NULL;
}

/* push_tree for a whole message: an object also gets its event type. */
static void push_message(lua_State *L, TreeBox *box, int eventsidx, int keysidx,
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

static int push_piece(lua_State *L, TreeBox *box, int keys, char *start, char *stop, int sawfloat);

/* Push the container [start, stop) a member at a time: 1, or 0 (unsure,
** nothing pushed). */
static int push_parts(lua_State *L, TreeBox *box, int keys, char *start, char *stop, int sawfloat) {
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
      if (plain) push_name(L, keys, (const char *)key, (size_t)(c - 1 - key));
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
static int push_piece(lua_State *L, TreeBox *box, int keys, char *start, char *stop, int sawfloat) {
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
  ok = parse_text(box, start, (size_t)(stop - start), why, sizeof why);
  *stop = saved;
  if (ok <= 0) return 0;
  push_tree(L, box, keys, start, (size_t)(stop - start), sawfloat);
  return 1;
}

#undef SKIP_SPACE

/* }====================================================== */


/* {====================================================== */
/* Streaming decoder: a buffer, the scanner state and a tree box */

#define READ_CHUNK 65536

struct qmp_decoder {
  qmp_framer f;         /* its buf is malloc'd, owned by the userdata (freed by __gc) */
  size_t cap;           /* allocated bytes; always > f.len, for the NUL */
  int busy;             /* a decoding call runs: the buffer must not move, the framer not run */
};

/* Decoder user values: the event types table, the key cache, the tree box.
** In this order they are also the stack slots a decoding call holds. */
#define UV_EVENTS 1
#define UV_KEYS   2
#define UV_BOX    3

static qmp_decoder *checkdecoder(lua_State *L, int idx) {
  return (qmp_decoder *)luaL_checkudata(L, idx, QMP_DECODER_MT);
}

qmp_decoder *qmp_decoder_new(lua_State *L, size_t max_message) {
  qmp_decoder *d = (qmp_decoder *)lua_newuserdatauv(L, sizeof(qmp_decoder), 3);
  memset(d, 0, sizeof *d);  /* harmless state first: no buffer yet */
  d->f.max_message = max_message;
  luaL_setmetatable(L, QMP_DECODER_MT);
  lua_getfield(L, LUA_REGISTRYINDEX, "qmp.events");
  lua_setiuservalue(L, -2, UV_EVENTS);
  lua_getfield(L, LUA_REGISTRYINDEX, "qmp.keys");
  lua_setiuservalue(L, -2, UV_KEYS);
  treebox_new(L);
  lua_setiuservalue(L, -2, UV_BOX);
  return d;
}

/* The buffer grew by `bytes`, which the garbage collector cannot see: a
** step of collection as for that many bytes of Lua's own, so that the
** buffers of connections gone (64 KiB each at least, freed by __gc) do
** not pile up, waiting for a cycle that Lua's allocations alone would bring
** much later (a client reconnecting a thousand times a second held some
** 16 MiB of them).  Not while the collector is stopped, by the script or
** because it is running finalizers (lua_gc then answers -1); and this
** decoder is busy meanwhile, so a finalizer cannot feed it. */
static void grown(lua_State *L, qmp_decoder *d, size_t bytes) {
  if (lua_gc(L, LUA_GCISRUNNING) != 1) return;
  d->busy = 1;
  lua_gc(L, LUA_GCSTEP, (int)(bytes >> 10));
  d->busy = 0;
}

char *qmp_decoder_reserve(lua_State *L, qmp_decoder *d, size_t n) {
  if (d->busy)  /* e.g. a finalizer feeding the decoder in the middle of a walk */
    luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->f.head > 0 && d->cap - d->f.len <= n)  /* slide the live bytes down first */
    qmp_framer_slide(&d->f);
  if (d->cap - d->f.len <= n) {
    size_t newcap = d->cap ? d->cap : READ_CHUNK + 1;
    char *nb;
    while (newcap - d->f.len <= n) newcap *= 2;
    if (newcap > d->f.max_message + 2 * READ_CHUNK)  /* near the cap: grow exactly */
      newcap = d->f.len + n + 1;
    nb = (char *)realloc(d->f.buf, newcap);
    if (nb == NULL) luaL_error(L, "not enough memory for the qmp read buffer");
    d->f.buf = nb;
    grown(L, d, newcap - d->cap);
    d->cap = newcap;
  }
  return d->f.buf + d->f.len;
}

void qmp_decoder_commit(qmp_decoder *d, size_t n) {
  d->f.len += n;
}

size_t qmp_decoder_pending(qmp_decoder *d) {
  return d->f.inmsg ? d->f.len - d->f.head : 0;
}

int qmp_decoder_ready(lua_State *L, qmp_decoder *d) {
  if (d->busy)  /* as in next(): while a walk runs, the decoder is not to be touched */
    return luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->f.errkind != NULL || d->f.framed) return 1;
  return qmp_frame(&d->f) != 0;  /* a new error counts: next() has it to give */
}

/* Push the stack slots a decoding call holds (UV_*, from top + 1 on) and
** mark the decoder busy: the tree box is to-be-closed, so an error can
** never leak a tree nor leave the decoder busy. */
static TreeBox *open_slots(lua_State *L, qmp_decoder *d, int didx, int top) {
  TreeBox *box;
  lua_getiuservalue(L, didx, UV_EVENTS);
  lua_getiuservalue(L, didx, UV_KEYS);
  lua_getiuservalue(L, didx, UV_BOX);
  lua_toclose(L, top + UV_BOX);
  box = (TreeBox *)lua_touserdata(L, top + UV_BOX);
  d->busy = 1;
  box->busy = &d->busy;
  return box;
}

/* Close the slots of open_slots: the decoder is free again. */
static void close_slots(lua_State *L, qmp_decoder *d, int top) {
  lua_closeslot(L, top + UV_BOX);
  d->busy = 0;
}

/*
** Decode the framed message, consuming it: push its value and return 1, or
** return 0 (not valid JSON) or -1 (out of memory) with the reason in why;
** the stream goes on.
** Raises only on memory errors (or from the events table's __index); the
** box then frees the tree and clears busy, which the caller sets (any Lua
** code run by a push must not touch the decoder).
*/
static int decode_framed(lua_State *L, qmp_decoder *d, TreeBox *box, int top,
                         char *why, size_t whysz) {
  size_t start = d->f.fstart, end = d->f.fend;
  char saved = d->f.buf[end];  /* cap > len >= end: NUL-terminate in place for cJSON */
  int ok;
  if (end - start > PIECE_MIN) {
    d->f.head = end;  /* consumed before anything can raise */
    d->f.framed = 0;
    box->pieces = 1;  /* also after an error left it counting */
    if (push_parts(L, box, top + UV_KEYS, d->f.buf + start, d->f.buf + end, d->f.s.sawfloat)) {
      type_event(L, lua_gettop(L), top + UV_EVENTS, top + UV_KEYS);
      return 1;
    }
  }
  d->f.buf[end] = '\0';
  ok = parse_text(box, d->f.buf + start, end - start, why, whysz);
  d->f.buf[end] = saved;
  d->f.head = end;  /* consumed before anything can raise; bad JSON too */
  d->f.framed = 0;
  if (ok <= 0) return ok;
  push_message(L, box, top + UV_EVENTS, top + UV_KEYS, d->f.buf + start, end - start,
               d->f.s.sawfloat);
  return 1;
}

/*
** Flat data: an event's data object whose members are all plain (strings
** without escapes, integers of up to 18 digits, true, false, null) is read
** from the bytes, as the timestamp is: that is most of QEMU's events, and
** it spares cJSON a tree of a node and a string or two per member.  The
** values are the walk's: it pushes such strings as their bytes and reads
** integers from the text too.  The bytes were checked by quick_scan, so
** only the kinds of the values are looked at here.
** Without L: the number of members, or -1 if the data is not flat.  With
** L: push the data as a table of n members.
*/
static long flat_data(lua_State *L, int keys, const unsigned char *c, long n) {
  long count = 0;
  int plain = 1;
  if (L != NULL) lua_createtable(L, 0, n < INT_MAX ? (int)n : INT_MAX);  /* a size hint */
  c++;
  while (isspace_json(*c)) c++;
  if (*c == '}') return 0;
  for (;;) {
    const unsigned char *key = c + 1, *keyend, *value;
    keyend = c = qmp_quick_string(key, &plain);  /* past the closing quote */
    if (!plain) return -1;
    while (*c != ':') c++;
    c++;
    while (isspace_json(*c)) c++;
    value = c;
    switch (*c) {
      case '"': c = qmp_quick_string(c + 1, &plain); if (!plain) return -1; break;
      case 't': c += 4; break;
      case 'f': c += 5; break;
      case 'n': c += 4; break;
      case '{': case '[': return -1;
      default: if ((c = qmp_quick_integer(c)) == NULL) return -1; break;  /* a float, or too long */
    }
    count++;
    if (L != NULL) {
      push_name(L, keys, (const char *)key, (size_t)(keyend - 1 - key));
      switch (*value) {
        case '"': lua_pushlstring(L, (const char *)value + 1, (size_t)(c - value) - 2); break;
        case 't': lua_pushboolean(L, 1); break;
        case 'f': lua_pushboolean(L, 0); break;
        case 'n': qmp_pushnull(L); break;
        default: lua_pushinteger(L, qmp_integer_value(value)); break;
      }
      lua_rawset(L, -3);  /* duplicate keys: the last one wins, as in the walk */
    }
    while (isspace_json(*c)) c++;
    if (*c != ',') return count;  /* the closing brace */
    c++;
    while (isspace_json(*c)) c++;
  }
}

/*
** decode_framed for an event of QEMU's shape (q->shaped): its timestamp and
** name are taken from q, so cJSON parses its data only.  Gives the values
** the whole message would: timestamp integers are exact either way, and
** the message table has room for as many members.
*/
static int decode_shaped(lua_State *L, qmp_decoder *d, TreeBox *box, int top,
                         const qmp_quick *q, char *why, size_t whysz) {
  int keys = top + UV_KEYS, msg;
  char *data = (char *)q->data, saved = 0;  /* in d->f.buf, which is ours to write */
  size_t datalen = q->data ? (size_t)(q->dataend - q->data) : 0;
  int ok = 1;
  long flat = data != NULL && *data == '{' ? flat_data(NULL, 0, (const unsigned char *)data, 0) : -1;
  d->f.head = d->f.fend;  /* consumed before anything can raise */
  d->f.framed = 0;
  if (data != NULL && flat < 0) {
    saved = data[datalen];  /* a byte of the message: '}', ',' or a space */
    data[datalen] = '\0';
    ok = parse_text(box, data, datalen, why, whysz);  /* cannot fail but for memory */
    data[datalen] = saved;
    if (ok <= 0) return ok;
  }
  lua_createtable(L, 0, data ? 3 : 2);
  msg = lua_gettop(L);
  push_name(L, keys, "timestamp", 9);
  lua_createtable(L, 0, 2);
  push_name(L, keys, "seconds", 7);
  lua_pushinteger(L, qmp_integer_value(q->seconds));
  lua_rawset(L, -3);
  push_name(L, keys, "microseconds", 12);
  lua_pushinteger(L, qmp_integer_value(q->microseconds));
  lua_rawset(L, -3);
  lua_rawset(L, msg);
  push_name(L, keys, "event", 5);
  lua_pushlstring(L, q->name, q->namelen);
  lua_rawset(L, msg);
  if (data != NULL) {
    push_name(L, keys, "data", 4);
    if (flat >= 0) flat_data(L, keys, (const unsigned char *)data, flat);
    else push_tree(L, box, keys, data, datalen, q->sawfloat);
    lua_rawset(L, msg);
  }
  type_event(L, msg, top + UV_EVENTS, keys);
  return 1;
}

int qmp_decoder_next(lua_State *L, int didx) {
  qmp_decoder *d = (qmp_decoder *)lua_touserdata(L, didx);
  char why[160];
  TreeBox *box;
  int r, top;
  if (d->busy)  /* a finalizer run by the walk: touch nothing, not even the framer */
    return luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->f.errkind != NULL) return qmp_fail(L, d->f.errkind, "%s", d->f.errmsg);
  if (!d->f.framed) {  /* else qmp_decoder_ready framed it already */
    r = qmp_frame(&d->f);
    if (r == 0) return 0;
    if (r < 0) return qmp_fail(L, d->f.errkind, "%s", d->f.errmsg);
  }
  top = lua_gettop(L);
  box = open_slots(L, d, didx, top);
  r = decode_framed(L, d, box, top, why, sizeof why);
  r = r > 0 ? 1 : qmp_fail(L, r < 0 ? "memory" : "protocol", "%s", why);
  close_slots(L, d, top);
  lua_rotate(L, top + 1, r);  /* results down over the slots */
  lua_settop(L, top + r);
  return r;
}

/* The answers of the interest set for the names one drain call has met:
** a busy stream repeats a few names, and a hit costs a memcmp where
** asking the set costs interning the name as a Lua string. */
#define NAME_CACHE 16        /* entries, a power of two */
#define NAME_CACHE_LEN 47    /* longer names are not cached */
typedef struct NameCache {
  struct {
    unsigned char len;       /* 0: empty entry */
    unsigned char wanted;
    char name[NAME_CACHE_LEN];
  } e[NAME_CACHE];
} NameCache;

/* Is the name q found in the interest set at idx?  A raw read: no Lua runs. */
static int wanted(lua_State *L, int idx, const qmp_quick *q, NameCache *cache) {
  size_t n = q->namelen;
  int yes, slot = -1;
  if (n > 0 && n <= NAME_CACHE_LEN) {
    slot = (int)((n * 31 + (unsigned char)q->name[0] * 7 + (unsigned char)q->name[n - 1])
                 & (NAME_CACHE - 1));
    if (cache->e[slot].len == n && memcmp(cache->e[slot].name, q->name, n) == 0)
      return cache->e[slot].wanted;
  }
  lua_pushlstring(L, q->name, n);
  lua_rawget(L, idx);
  yes = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (slot >= 0) {
    cache->e[slot].len = (unsigned char)n;
    cache->e[slot].wanted = (unsigned char)yes;
    memcpy(cache->e[slot].name, q->name, n);
  }
  return yes;
}

/* Can the peer send an event of this name?  Not "", and not one beginning
** "qmp.": those are the client's own events (qmp.connected, ...), a name
** QAPI cannot make.  The session drops the others as malformed. */
static int peer_event_name(const char *name, size_t len) {
  return len > 0 && !(len >= 4 && memcmp(name, "qmp.", 4) == 0);
}

/* Is the message on top an event, with a name the peer can send?  Raw. */
static int is_event(lua_State *L, int keys) {
  int yes;
  push_name(L, keys, "event", 5);
  yes = lua_rawget(L, -2) == LUA_TSTRING && peer_event_name(lua_tostring(L, -1), lua_rawlen(L, -1));
  lua_pop(L, 1);
  return yes;
}

int qmp_decoder_drain(lua_State *L, int didx, qmp_batch *b) {
  qmp_decoder *d = (qmp_decoder *)lua_touserdata(L, didx);
  NameCache names;  /* for this call only: the set may change between calls */
  const char *kind = NULL, *msg = NULL;
  char why[160];
  TreeBox *box;
  int top;
  if (d->busy)
    return luaL_error(L, "qmp: decoder used re-entrantly");
  top = lua_gettop(L);
  /* One to-be-closed slot for the whole batch; busy all along, as Lua code
  ** may run (finalizers, the events table's __index) while a message is
  ** half-way from framed to decoded. */
  box = open_slots(L, d, didx, top);
  for (int i = 0; i < NAME_CACHE; i++) names.e[i].len = 0;
  while (b->n + b->skipped < b->limit) {
    qmp_quick q;
    int ok;
    q.name = NULL;
    q.shaped = 0;
    if (d->f.errkind != NULL) {
      kind = d->f.errkind;
      msg = d->f.errmsg;
      break;
    }
    if (!d->f.framed && !qmp_quick_frame(&d->f, &q)) {
      int r = qmp_frame(&d->f);
      if (r == 0) break;
      if (r < 0) continue;  /* the sticky error, above */
    }
    if (b->interest) {
      if (q.name == NULL) qmp_quick_framed(&d->f, &q);  /* framed by the framer (or by ready()) */
      /* An event named "" or "qmp.*" is no event: the session reports it
      ** (malformed), wanted or not. */
      if (q.name != NULL && peer_event_name(q.name, q.namelen) && !wanted(L, b->interest, &q, &names)) {
        d->f.head = d->f.fend;  /* consumed unparsed */
        d->f.framed = 0;
        b->skipped++;
        continue;
      }
    }
    if (q.shaped) ok = decode_shaped(L, d, box, top, &q, why, sizeof why);
    else ok = decode_framed(L, d, box, top, why, sizeof why);
    if (ok <= 0) {
      kind = ok < 0 ? "memory" : "protocol";
      msg = why;
      break;
    }
    if ((q.shaped && peer_event_name(q.name, q.namelen)) || is_event(L, top + UV_KEYS)) b->events++;
    lua_rawseti(L, b->list, ++b->n);
  }
  close_slots(L, d, top);
  lua_settop(L, top);
  if (kind == NULL) return 0;
  qmp_pusherror(L, kind, "%s", msg);
  return 1;
}

void qmp_batch_start(lua_State *L, qmp_batch *b, int arg) {
  lua_Integer limit = luaL_checkinteger(L, arg);
  luaL_argcheck(L, limit > 0, arg, "limit must be positive");
  if (!lua_isnoneornil(L, arg + 1)) luaL_checktype(L, arg + 1, LUA_TTABLE);
  b->interest = lua_istable(L, arg + 1) ? arg + 1 : 0;
  b->limit = limit;
  b->n = b->skipped = b->events = 0;
  lua_settop(L, arg + 1);
  lua_createtable(L, limit < 16 ? (int)limit : 16, 0);
  b->list = arg + 2;
}

int qmp_batch_finish(lua_State *L, qmp_batch *b, int failed) {
  if (!failed) lua_pushnil(L);  /* else the error object, pushed by the drain */
  lua_pushvalue(L, b->list);
  lua_pushinteger(L, b->skipped);
  lua_rotate(L, -3, -1);  /* err or nil after them */
  lua_pushinteger(L, b->events);
  return 4;
}

static int decoder_gc(lua_State *L) {
  qmp_decoder *d = (qmp_decoder *)luaL_checkudata(L, 1, QMP_DECODER_MT);
  free(d->f.buf);
  d->f.buf = NULL;
  d->cap = d->f.len = d->f.head = d->f.scan = 0;
  d->f.framed = 0;
  return 0;
}

static size_t opt_max_message(lua_State *L, int idx) {
  lua_Integer max = QMP_MAX_MESSAGE;
  if (lua_istable(L, idx)) {
    if (lua_getfield(L, idx, "max_message") != LUA_TNIL) {
      int ok;
      max = lua_tointegerx(L, -1, &ok);
      luaL_argcheck(L, ok && max > 0, idx, "max_message must be a positive integer");
    }
    lua_pop(L, 1);
  }
  else
    luaL_argcheck(L, lua_isnoneornil(L, idx), idx, "options table expected");
  return (size_t)max;
}

/* qmp.decoder{ max_message = n } */
static int decoder_new(lua_State *L) {
  qmp_decoder_new(L, opt_max_message(L, 1));
  return 1;
}

/* d:feed(bytes) -> d */
static int decoder_feed(lua_State *L) {
  qmp_decoder *d = checkdecoder(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (d->f.errkind == NULL && n > 0) {
    memcpy(qmp_decoder_reserve(L, d, n), s, n);
    qmp_decoder_commit(d, n);
  }
  lua_settop(L, 1);
  return 1;
}

/* d:next() -> message | nil (more bytes needed) | nil, err */
static int decoder_next(lua_State *L) {
  int r;
  checkdecoder(L, 1);
  lua_settop(L, 1);
  r = qmp_decoder_next(L, 1);
  if (r == 0) luaL_pushfail(L);
  return r ? r : 1;
}

/* d:drain(limit [, interest]) -> list, skipped, err|nil, events
** Up to limit messages in one call, as next() would give them one by one;
** with interest (a set of event names), an event outside it may be counted
** in skipped instead (see qmp_decoder_drain).  The error ends the list.
** events says how many listed messages are events, so that a caller whose
** list holds nothing else can hand it on whole. */
static int decoder_drain(lua_State *L) {
  qmp_batch b;
  checkdecoder(L, 1);
  qmp_batch_start(L, &b, 2);
  return qmp_batch_finish(L, &b, qmp_decoder_drain(L, 1, &b));
}

/* d:buffered() -> true when next() would give a message or an error now */
static int decoder_buffered(lua_State *L) {
  lua_pushboolean(L, qmp_decoder_ready(L, checkdecoder(L, 1)));
  return 1;
}

/* d:pending() -> bytes of an incomplete message held */
static int decoder_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)qmp_decoder_pending(checkdecoder(L, 1)));
  return 1;
}

/* qmp.decode(text) -> value | nil, err.  Any JSON value; objects with an
** "event" member come back typed, as from a connection. */
static int core_decode(lua_State *L) {
  size_t len, pos = 0;
  const char *text = luaL_checklstring(L, 1, &len);
  char why[160];
  TreeBox *box;
  qmp_scanner s;
  int r;
  memset(&s, 0, sizeof s);
  /* Only JSON whitespace before the value, as between a stream's messages:
  ** cJSON would also skip a UTF-8 BOM and any control byte there. */
  while (pos < len && isspace_json((unsigned char)text[pos])) pos++;
  if (pos < len && (((unsigned char)text[pos] > 0 && (unsigned char)text[pos] < ' ')
                    || (unsigned char)text[pos] >= 0x80))
    return qmp_fail(L, "protocol", "expected a JSON value at byte %d, got the byte %d",
                    (int)pos, (int)(unsigned char)text[pos]);
  pos = 0;
  while (pos < len) {  /* validate every top-level piece; cJSON judges the syntax */
    if (qmp_scan_value(&s, (const unsigned char *)text, len, &pos) == QMP_SCAN_ERROR)
      return qmp_fail(L, "protocol", "%s (byte %d)", s.err, (int)pos);
  }
  lua_settop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, "qmp.events");
  lua_getfield(L, LUA_REGISTRYINDEX, "qmp.keys");
  box = treebox_new(L);
  lua_toclose(L, 4);
  r = parse_text(box, text, len, why, sizeof why);  /* Lua strings end in NUL */
  if (r > 0) push_message(L, box, 2, 3, text, len, s.sawfloat);
  else r = qmp_fail(L, r < 0 ? "memory" : "protocol", "%s", why);
  lua_closeslot(L, 4);
  lua_rotate(L, 2, r);
  lua_settop(L, 1 + r);
  return r;
}

void qmp_decode_open(lua_State *L) {
  static const luaL_Reg decoder_methods[] = {
    {"feed", decoder_feed},
    {"next", decoder_next},
    {"drain", decoder_drain},
    {"pending", decoder_pending},
    {"buffered", decoder_buffered},
    {NULL, NULL}
  };
  keys_open(L);
  if (luaL_newmetatable(L, TREEBOX_MT)) {
    lua_pushcfunction(L, treebox_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, treebox_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, QMP_DECODER_MT)) {
    lua_pushcfunction(L, decoder_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, decoder_gc);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, decoder_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  /* The event types table: events[name] is the metatable of that event.
  ** The Lua layer fills it and gives it an __index that creates new types. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, "qmp.events") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "qmp.events");
  }
  lua_setfield(L, -2, "events");
  lua_pushcfunction(L, core_decode);
  lua_setfield(L, -2, "decode");
  lua_pushcfunction(L, decoder_new);
  lua_setfield(L, -2, "decoder");
}
/* }====================================================== */
