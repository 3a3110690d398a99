/*
** decode.c: bytes -> Lua values.
**
** Three stages, all in one pass over each byte where possible:
**   scanner  a JSON-aware byte scanner (strings, escapes, depth) that finds
**            where each top-level object ends, whatever the line endings
**            (pretty=on output, \n, \r\n) and whatever the read chunking;
**            it also rejects what cJSON would silently get wrong (\u0000,
**            bad \u escapes, raw NUL) and bounds nesting;
**   cJSON    parses one framed message in place in the read buffer;
**   walk     turns the cJSON tree into Lua values in one walk, recovering
**            the exact digits of integers that a double cannot hold.
**
** The cJSON tree sits in a to-be-closed box while the walk runs, so a Lua
** error (out of memory) in the middle can never leak it.  No Lua code runs
** while a tree is alive: events get their metatable after the tree is freed.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "qmp.h"

#define TREEBOX_MT "qmp.TreeBox"

/* {====================================================== */
/* Scanner */

typedef struct Scanner {
  int depth;              /* bracket depth; 0 between messages */
  unsigned char instr;    /* inside a string */
  unsigned char esc;      /* after a backslash in a string */
  unsigned char hex;      /* \u digits still expected */
  unsigned char prevdigit;  /* the previous read ended on a digit outside strings */
  unsigned char sawfloat; /* a '.' or exponent outside strings: not all numbers are integers */
  unsigned code;          /* value of the \u escape being read */
  const char *err;        /* why the scan failed, or NULL */
} Scanner;

enum { SCAN_MORE, SCAN_DONE, SCAN_ERROR };

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Bytes the scanner must stop at: inside strings, and outside them. */
static const unsigned char STRING_STOP[256] = { ['"'] = 1, ['\\'] = 1, [0] = 1 };
static const unsigned char VALUE_STOP[256] = {
  ['"'] = 1, ['{'] = 1, ['['] = 1, ['}'] = 1, [']'] = 1, ['.'] = 1, ['e'] = 1, ['E'] = 1, [0] = 1
};

static int isdigit_json(unsigned char c) {
  return c >= '0' && c <= '9';
}

/*
** Scan p[*pos .. n) inside a value.  Returns SCAN_DONE with *pos just past
** the bracket that closes the top-level value, SCAN_MORE when the bytes run
** out first (*pos = n), or SCAN_ERROR with s->err set (*pos at the culprit).
** Runs of ordinary bytes are skipped through the STOP tables.
*/
static int scan_value(Scanner *s, const unsigned char *p, size_t n, size_t *pos) {
  size_t first = *pos, i = *pos;
  for (; i < n; i++) {
    unsigned char c;
    if (s->instr) {
      c = p[i];
      if (s->hex) {
        int v = hexval(c);
        if (v < 0) { s->err = "invalid \\u escape in a string"; goto error; }
        s->code = (s->code << 4) | (unsigned)v;
        if (--s->hex == 0 && s->code == 0) {
          s->err = "\\u0000 in a string is not supported"; goto error;
        }
      }
      else if (s->esc) {
        s->esc = 0;
        if (c == 'u') { s->hex = 4; s->code = 0; }
        else if (c == 0 || !strchr("\"\\/bfnrt", c)) {
          s->err = "invalid escape in a string"; goto error;
        }
      }
      else {
        while (i < n && !STRING_STOP[p[i]]) i++;
        if (i == n) break;
        c = p[i];
        if (c == '"') s->instr = 0;
        else if (c == '\\') s->esc = 1;
        else { s->err = "NUL byte in a message"; goto error; }
      }
      continue;
    }
    while (i < n && !VALUE_STOP[p[i]]) i++;
    if (i == n) break;
    switch (p[i]) {
      case '"': s->instr = 1; break;
      case '{': case '[':
        if (++s->depth > QMP_MAX_DEPTH) { s->err = "nesting too deep"; goto error; }
        break;
      case '}': case ']':
        if (--s->depth <= 0) { *pos = i + 1; s->prevdigit = 0; return SCAN_DONE; }
        break;
      case '.': s->sawfloat = 1; break;
      case 'e': case 'E':  /* an exponent, unless it is a letter of true/false */
        if (i > first ? isdigit_json(p[i - 1]) : s->prevdigit) s->sawfloat = 1;
        break;
      default: s->err = "NUL byte in a message"; goto error;
    }
  }
  *pos = n;
  if (n > first)  /* "1" | "e5" across reads; a call with no new bytes must keep it */
    s->prevdigit = !s->instr && isdigit_json(p[n - 1]);
  return SCAN_MORE;
 error:
  *pos = i;
  return SCAN_ERROR;
}

static int isspace_json(unsigned char c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}
/* }====================================================== */


/* {====================================================== */
/* Walk: cJSON tree -> Lua */

typedef struct TreeBox {
  cJSON *tree;          /* the tree being walked, or NULL */
  int *busy;            /* the decoder's busy flag while a walk runs, or NULL */
} TreeBox;

typedef struct Walk {
  lua_State *L;
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

static int count_children(const cJSON *node) {
  int n = 0;
  for (node = node->child; node != NULL; node = node->next) n++;
  return n;
}

static void push_node(Walk *w, const cJSON *node) {
  lua_State *L = w->L;
  const cJSON *child;
  luaL_checkstack(L, 3, "cannot grow the Lua stack for a nested JSON value");
  switch (node->type & 0xFF) {
    case cJSON_False: lua_pushboolean(L, 0); break;
    case cJSON_True: lua_pushboolean(L, 1); break;
    case cJSON_NULL: qmp_pushnull(L); break;
    case cJSON_Number: push_number(w, node); break;
    case cJSON_String: lua_pushstring(L, node->valuestring); break;  /* no NUL: scanner */
    case cJSON_Array: {
      lua_Integer i = 1;
      lua_createtable(L, count_children(node), 0);
      /* An empty array is marked so that it encodes back as [], not {}.  A
      ** non-empty one needs no mark (its keys 1..n say array), and leaving
      ** it plain keeps decoding fast. */
      if (node->child == NULL) luaL_setmetatable(L, QMP_ARRAY_MT);
      for (child = node->child; child != NULL; child = child->next) {
        push_node(w, child);
        lua_rawseti(L, -2, i++);
      }
      break;
    }
    case cJSON_Object:
      lua_createtable(L, 0, count_children(node));
      for (child = node->child; child != NULL; child = child->next) {
        lua_pushstring(L, child->string);
        push_node(w, child);
        lua_rawset(L, -3);  /* duplicate keys: the last one wins */
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
  if (box->busy != NULL) {  /* a walk was cut short by an error: the decoder is free again */
    *box->busy = 0;
    box->busy = NULL;
  }
  return 0;
}

static TreeBox *treebox_new(lua_State *L) {
  TreeBox *box = (TreeBox *)lua_newuserdatauv(L, sizeof(TreeBox), 0);
  box->tree = NULL;
  box->busy = NULL;
  luaL_setmetatable(L, TREEBOX_MT);
  return box;
}

/* Copy up to 40 bytes of p as printable text, for error messages. */
static const char *excerpt(char *out, const char *p, size_t n) {
  size_t i, o = 0;
  for (i = 0; i < n && o < 40; i++) {
    unsigned char c = (unsigned char)p[i];
    out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '.';
  }
  out[o] = '\0';
  return out;
}

/* Give an event its type: the metatable events[name], created on first sight
** by the events table's __index (Lua).  Messages without data get data = {}. */
static void type_event(lua_State *L, int msgidx, int eventsidx) {
  lua_pushliteral(L, "event");
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
  lua_pushliteral(L, "data");  /* raw: the type's __index must not answer */
  if (lua_rawget(L, msgidx) == LUA_TNIL) {
    lua_pushliteral(L, "data");
    lua_newtable(L);
    lua_rawset(L, msgidx);
  }
  lua_pop(L, 1);
}

/*
** Parse text[0..len) (text[len] must be NUL) into box->tree.  Touches no
** Lua state, so callers can restore the byte after the text at once.
** Returns 1, or 0 with the reason in why.
*/
static int parse_text(TreeBox *box, const char *text, size_t len, char *why, size_t whysz) {
  const char *end = NULL;
  char ex[48];
  box->tree = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (box->tree == NULL) {
    size_t at = (end != NULL && end >= text) ? (size_t)(end - text) : 0;
    if (at > len) at = len;
    snprintf(why, whysz, "invalid JSON at byte %d of a %d-byte message near '%s'",
             (int)at, (int)len, excerpt(ex, text + at, len - at));
    return 0;
  }
  while (end < text + len && isspace_json((unsigned char)*end)) end++;
  if (end != text + len) {
    cJSON_Delete(box->tree);
    box->tree = NULL;
    snprintf(why, whysz, "trailing data after the JSON value at byte %d: '%s'",
             (int)(end - text), excerpt(ex, end, (size_t)(text + len - end)));
    return 0;
  }
  return 1;
}

/*
** Push the Lua value of box->tree (parsed from text) and free the tree; a
** top-level event gets its type.  Raises only on memory errors (the box,
** marked to-be-closed by the caller, then frees the tree).
*/
static void push_tree(lua_State *L, TreeBox *box, int eventsidx,
                      const char *text, size_t len, int sawfloat) {
  Walk w;
  w.L = L; w.text = text; w.len = len; w.sawfloat = sawfloat;
  w.numseen = 0; w.cur = 0; w.curcount = 0; w.curinstr = 0;
  push_node(&w, box->tree);
  cJSON_Delete(box->tree);
  box->tree = NULL;
  if (lua_type(L, -1) == LUA_TTABLE)
    type_event(L, lua_gettop(L), eventsidx);  /* may call Lua: the tree is gone */
}

/* }====================================================== */


/* {====================================================== */
/* Streaming decoder: a buffer, the scanner state and a tree box */

#define READ_CHUNK 65536

struct qmp_decoder {
  char *buf;            /* malloc'd, owned by the userdata (freed by __gc) */
  size_t cap;           /* allocated bytes; always > len, for the NUL */
  size_t head;          /* start of the current message or of unscanned space */
  size_t len;           /* bytes held */
  size_t scan;          /* next byte for the scanner */
  size_t max_message;   /* largest message accepted */
  int inmsg;            /* the scanner is inside a message starting at head */
  int busy;             /* a walk reads the buffer: it must not move */
  int framed;           /* [fstart, fend) is a complete message not yet decoded */
  size_t fstart, fend;  /* offsets into buf; fstart == head while framed */
  Scanner s;            /* left alone while framed: its sawfloat is the message's */
  const char *errkind;  /* sticky framing error, or NULL */
  char errmsg[160];
};

/* Decoder user values: 1 = tree box, 2 = the event types table. */
#define UV_BOX    1
#define UV_EVENTS 2

static qmp_decoder *checkdecoder(lua_State *L, int idx) {
  return (qmp_decoder *)luaL_checkudata(L, idx, QMP_DECODER_MT);
}

qmp_decoder *qmp_decoder_new(lua_State *L, size_t max_message) {
  qmp_decoder *d = (qmp_decoder *)lua_newuserdatauv(L, sizeof(qmp_decoder), 2);
  memset(d, 0, sizeof *d);  /* harmless state first: no buffer yet */
  d->max_message = max_message;
  luaL_setmetatable(L, QMP_DECODER_MT);
  treebox_new(L);
  lua_setiuservalue(L, -2, UV_BOX);
  lua_getfield(L, LUA_REGISTRYINDEX, "qmp.events");
  lua_setiuservalue(L, -2, UV_EVENTS);
  return d;
}

char *qmp_decoder_reserve(lua_State *L, qmp_decoder *d, size_t n) {
  if (d->busy)  /* e.g. a finalizer feeding the decoder in the middle of a walk */
    luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->head > 0 && d->cap - d->len <= n) {  /* slide the live bytes down first */
    memmove(d->buf, d->buf + d->head, d->len - d->head);
    d->len -= d->head;
    d->scan -= d->head;
    if (d->framed) {  /* a cached frame starts at head: it slides with the bytes */
      d->fstart -= d->head;
      d->fend -= d->head;
    }
    d->head = 0;
  }
  if (d->cap - d->len <= n) {
    size_t newcap = d->cap ? d->cap : READ_CHUNK + 1;
    char *nb;
    while (newcap - d->len <= n) newcap *= 2;
    if (newcap > d->max_message + 2 * READ_CHUNK)  /* near the cap: grow exactly */
      newcap = d->len + n + 1;
    nb = (char *)realloc(d->buf, newcap);
    if (nb == NULL) luaL_error(L, "not enough memory for the qmp read buffer");
    d->buf = nb;
    d->cap = newcap;
  }
  return d->buf + d->len;
}

void qmp_decoder_commit(qmp_decoder *d, size_t n) {
  d->len += n;
}

size_t qmp_decoder_pending(qmp_decoder *d) {
  return d->inmsg ? d->len - d->head : 0;
}

/* Framing errors are sticky: the stream cannot be resynchronised. */
static int sticky(qmp_decoder *d, const char *kind) {
  d->errkind = kind;
  return -1;
}

/*
** Find the next complete message and cache it in d->framed/fstart/fend:
** returns 1, 0 when more bytes are needed, or -1 with a sticky error in
** d->errkind/errmsg.  Pushes nothing, so qmp_decoder_ready can ask too.
** Each call moves d->scan on: only call it when nothing is framed.
*/
static int frame(qmp_decoder *d) {
  const unsigned char *p = (const unsigned char *)d->buf;
  char *why = d->errmsg;
  for (;;) {
    if (!d->inmsg) {  /* between messages: skip whitespace, expect '{' */
      while (d->scan < d->len && isspace_json(p[d->scan])) d->scan++;
      d->head = d->scan;
      if (d->scan == d->len) return 0;
      if (p[d->scan] != '{') {
        char ex[48];
        snprintf(why, sizeof d->errmsg, "expected a JSON object, got '%s'",
                 excerpt(ex, d->buf + d->scan, d->len - d->scan));
        return sticky(d, "protocol");
      }
      memset(&d->s, 0, sizeof d->s);
      d->inmsg = 1;
    }
    switch (scan_value(&d->s, p, d->len, &d->scan)) {
      case SCAN_DONE:
        d->inmsg = 0;
        if (d->scan - d->head > d->max_message) break;  /* toolarge, below */
        d->framed = 1;
        d->fstart = d->head;
        d->fend = d->scan;
        return 1;
      case SCAN_ERROR:
        snprintf(why, sizeof d->errmsg, "%s (byte %d of a message)", d->s.err,
                 (int)(d->scan - d->head));
        return sticky(d, "protocol");
      default:
        if (d->scan - d->head <= d->max_message) return 0;
        break;
    }
    snprintf(why, sizeof d->errmsg, "message exceeds max_message (%lu bytes)",
             (unsigned long)d->max_message);
    return sticky(d, "toolarge");
  }
}

int qmp_decoder_ready(lua_State *L, qmp_decoder *d) {
  if (d->busy)  /* as in next(): while a walk runs, the decoder is not to be touched */
    return luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->errkind != NULL || d->framed) return 1;
  return frame(d) != 0;  /* a new error counts: next() has it to give */
}

int qmp_decoder_next(lua_State *L, int didx) {
  qmp_decoder *d = (qmp_decoder *)lua_touserdata(L, didx);
  size_t start = 0, end = 0;
  char saved, why[160];
  TreeBox *box;
  int r, ok, top;
  if (d->busy)  /* a finalizer run by the walk: touch nothing, not even the framer */
    return luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->errkind != NULL) return qmp_fail(L, d->errkind, "%s", d->errmsg);
  if (!d->framed) {  /* else qmp_decoder_ready framed it already */
    r = frame(d);
    if (r == 0) return 0;
    if (r < 0) return qmp_fail(L, d->errkind, "%s", d->errmsg);
  }
  start = d->fstart;
  end = d->fend;
  top = lua_gettop(L);
  lua_getiuservalue(L, didx, UV_EVENTS);
  lua_getiuservalue(L, didx, UV_BOX);
  lua_toclose(L, top + 2);
  box = (TreeBox *)lua_touserdata(L, top + 2);
  saved = d->buf[end];  /* cap > len >= end: NUL-terminate in place for cJSON */
  d->buf[end] = '\0';
  ok = parse_text(box, d->buf + start, end - start, why, sizeof why);
  d->buf[end] = saved;
  d->head = end;  /* consumed before anything can raise; bad JSON too: the stream goes on */
  d->framed = 0;
  if (ok) {
    d->busy = 1;
    box->busy = &d->busy;  /* cleared by the box if the walk raises */
    push_tree(L, box, top + 1, d->buf + start, end - start, d->s.sawfloat);
    d->busy = 0;
    box->busy = NULL;
    r = 1;
  }
  else
    r = qmp_fail(L, "protocol", "%s", why);
  lua_closeslot(L, top + 2);
  lua_rotate(L, top + 1, r);  /* results down over the events table and box */
  lua_settop(L, top + r);
  return r;
}

static int decoder_gc(lua_State *L) {
  qmp_decoder *d = (qmp_decoder *)luaL_checkudata(L, 1, QMP_DECODER_MT);
  free(d->buf);
  d->buf = NULL;
  d->cap = d->len = d->head = d->scan = 0;
  d->framed = 0;
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
  if (d->errkind == NULL && n > 0) {
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
  Scanner s;
  int r;
  memset(&s, 0, sizeof s);
  while (pos < len) {  /* validate every top-level piece; cJSON judges the syntax */
    if (scan_value(&s, (const unsigned char *)text, len, &pos) == SCAN_ERROR)
      return qmp_fail(L, "protocol", "%s (byte %d)", s.err, (int)pos);
  }
  lua_settop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, "qmp.events");
  box = treebox_new(L);
  lua_toclose(L, 3);
  if (parse_text(box, text, len, why, sizeof why)) {  /* Lua strings end in NUL */
    push_tree(L, box, 2, text, len, s.sawfloat);
    r = 1;
  }
  else
    r = qmp_fail(L, "protocol", "%s", why);
  lua_closeslot(L, 3);
  lua_rotate(L, 2, r);
  lua_settop(L, 1 + r);
  return r;
}

void qmp_decode_open(lua_State *L) {
  static const luaL_Reg decoder_methods[] = {
    {"feed", decoder_feed},
    {"next", decoder_next},
    {"pending", decoder_pending},
    {"buffered", decoder_buffered},
    {NULL, NULL}
  };
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
