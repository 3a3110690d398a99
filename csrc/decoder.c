/*
** decoder.c: the streaming decoder, qmp.decoder and qmp.decode.
**
** A decoder is a userdata holding a read buffer and its framer (scan.c):
** bytes are fed in (d:feed, or a connection's reads), and next() or drain()
** take out one message or many, each walked into Lua values (walk.c).  Both
** frame with the quick scan first: an event of QEMU's shape is then built
** from what the scan read, and drain skips unparsed an event outside the
** caller's interest set; next() decodes a few messages at once, as drain
** does, and hands them out one by one, so that a call per message costs
** little more.  A reference decoder (core.reference_decoder)
** never uses the quick scan: the differential specs and fuzzers compare
** the quick paths with it.  A decoding call marks the decoder busy,
** so that Lua code it runs (finalizers, the events table's __index) cannot
** move the buffer under it.  core.decode decodes one text, any JSON value.
*/
#include <stdlib.h>
#include <string.h>

#include "qmp.h"
#include "scan.h"
#include "walk.h"

/* {====================================================== */
/* Streaming decoder: a buffer, its framer and a tree box */

#define READ_CHUNK 65536
#define REWIND_MAX 4096  /* live bytes a read slides down at most to start at the buffer's head */

struct qmp_decoder {
  qmp_framer f;         /* its buf is malloc'd, owned by the userdata (freed by __gc) */
  size_t cap;           /* allocated bytes; always > f.len + QMP_SCAN_PAD: the NUL
                        ** the scans write at f.len, then the bytes they may read
                        ** past it, kept initialized (qmp_decoder_commit) */
  int busy;             /* a decoding call runs: the buffer must not move, the framer not run */
  int quick;            /* 0: a reference decoder, which never uses the quick scan */
  qmp_quick q;          /* what the quick scan found of the message buffered() framed, */
  int qframed;          /* when it framed it (its pointers hold until the buffer moves) */
  int ahead, aheadn;    /* next() decoded ahead UV_AHEAD[ahead .. aheadn] (ahead 0: none) */
  int aheaderr;         /* the last of them is an error object, for the message that was not JSON */
};

/* Decoder user values: the event types table, the key cache, the tree box
** (in this order also the stack slots a decoding call holds), and the
** messages next() decoded ahead (a table made on first use). */
#define UV_EVENTS 1
#define UV_KEYS   2
#define UV_BOX    3
#define UV_AHEAD  4

/* next() decodes up to AHEAD messages at once, as drain does, and hands
** them out one by one: one call each would cost as much as a message; it
** stops early once it has taken AHEAD_BYTES of them. */
#define AHEAD 32
#define AHEAD_BYTES 65536

/* The module's state: upvalues of the functions that make decoders
** (qmp_decoder_setfuncs), as lua-cjson keeps its configuration. */
#define UP_EVENTS lua_upvalueindex(1)  /* the event types table, core.events */
#define UP_KEYS   lua_upvalueindex(2)  /* the key cache */

static qmp_decoder *checkdecoder(lua_State *L, int idx) {
  return (qmp_decoder *)luaL_checkudata(L, idx, QMP_DECODER_MT);
}

qmp_decoder *qmp_decoder_new(lua_State *L, size_t max_message) {
  qmp_decoder *d = (qmp_decoder *)lua_newuserdatauv(L, sizeof(qmp_decoder), 4);
  memset(d, 0, sizeof *d);  /* harmless state first: no buffer yet */
  d->f.max_message = max_message;
  d->quick = 1;
  luaL_setmetatable(L, QMP_DECODER_MT);
  if (lua_type(L, UP_EVENTS) != LUA_TTABLE || lua_type(L, UP_KEYS) != LUA_TTABLE)
    luaL_error(L, "qmp: a decoder made by a function without the decoder state");
  lua_pushvalue(L, UP_EVENTS);
  lua_setiuservalue(L, -2, UV_EVENTS);
  lua_pushvalue(L, UP_KEYS);
  lua_setiuservalue(L, -2, UV_KEYS);
  qmp_treebox_new(L);
  lua_setiuservalue(L, -2, UV_BOX);
  return d;
}

/* The collector cannot see this buffer: a step as for the bytes grown, so
** that closed connections' buffers (freed by __gc) do not pile up.  None
** while it is stopped or running finalizers (lua_gc then answers 0 or -1). */
static void grown(lua_State *L, qmp_decoder *d, size_t bytes) {
  if (lua_gc(L, LUA_GCISRUNNING) != 1) return;
  d->busy = 1;  /* a finalizer the step runs must not feed this decoder */
  lua_gc(L, LUA_GCSTEP, (int)(bytes >> 10));
  d->busy = 0;
}

char *qmp_decoder_reserve(lua_State *L, qmp_decoder *d, size_t n) {
  if (d->busy)  /* e.g. a finalizer feeding the decoder in the middle of a walk */
    luaL_error(L, "qmp: decoder used re-entrantly");
  n += QMP_SCAN_PAD;  /* room for the NUL and the pad after the n bytes */
  /* Slide the live bytes down when there is no room after them, and also
  ** when they are few: the next read then lands at the start of the
  ** buffer, whose lines are in the cache, instead of walking through all
  ** of it (with many connections, through more than the cache holds). */
  if (d->f.head > 0 && (d->cap - d->f.len <= n || d->f.len - d->f.head <= REWIND_MAX)) {
    d->qframed = 0;  /* the bytes move: q's pointers go stale */
    qmp_framer_slide(&d->f);
  }
  if (d->cap - d->f.len <= n) {
    d->qframed = 0;
    size_t newcap = d->cap ? d->cap : READ_CHUNK + 1 + QMP_SCAN_PAD;
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
  memset(d->f.buf + d->f.len, 0, QMP_SCAN_PAD);  /* read by the scans, never used */
}

size_t qmp_decoder_pending(qmp_decoder *d) {
  return d->f.inmsg ? d->f.len - d->f.head : 0;
}

int qmp_decoder_ready(lua_State *L, qmp_decoder *d) {
  if (d->busy)  /* as in next(): while a walk runs, the decoder is not to be touched */
    return luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->ahead != 0 || d->f.errkind != NULL || d->f.framed) return 1;
  if (d->quick && qmp_quick_frame(&d->f, &d->q)) return d->qframed = 1;  /* kept for frame_next */
  return qmp_frame(&d->f) != 0;  /* a new error counts: next() has it to give */
}

/* Push the stack slots a decoding call holds (UV_*, from top + 1 on) and
** mark the decoder busy: the tree box is to-be-closed, so an error can
** never leak a tree nor leave the decoder busy.  The stack gets room for
** the call to its __close too, so that closing it cannot fail for want of
** memory to grow the stack. */
static qmp_treebox *open_slots(lua_State *L, qmp_decoder *d, int didx, int top) {
  qmp_treebox *box;
  luaL_checkstack(L, UV_BOX + LUA_MINSTACK + 4, "cannot grow the Lua stack to decode");
  lua_getiuservalue(L, didx, UV_EVENTS);
  lua_getiuservalue(L, didx, UV_KEYS);
  lua_getiuservalue(L, didx, UV_BOX);
  lua_toclose(L, top + UV_BOX);
  box = (qmp_treebox *)lua_touserdata(L, top + UV_BOX);
  d->busy = 1;
  box->busy = &d->busy;
  return box;
}

/* Close the slots of open_slots (the top ones): the decoder is free again,
** before the box's __close is called. */
static void close_slots(lua_State *L, qmp_decoder *d, int top) {
  ((qmp_treebox *)lua_touserdata(L, top + UV_BOX))->busy = NULL;
  d->busy = 0;
  lua_closeslot(L, top + UV_BOX);
}

/* The framed message is taken: the framer goes on after it. */
static void consume(qmp_decoder *d) {
  d->f.head = d->f.fend;
  d->f.framed = 0;
  d->qframed = 0;
}

/* Frame the next message unless one is: 1 (q says what the quick scan
** found, if it framed it), 0 (more bytes needed) or -1 (the sticky error). */
static int frame_next(qmp_decoder *d, qmp_quick *q) {
  q->name = NULL;
  q->shaped = 0;
  if (d->f.errkind != NULL) return -1;
  if (d->f.framed) {  /* by qmp_decoder_ready, or left by a decode that raised */
    if (d->qframed) *q = d->q;
    return 1;
  }
  if (d->quick && qmp_quick_frame(&d->f, q)) return 1;
  return qmp_frame(&d->f);
}

/*
** Decode the message frame_next framed (an event of QEMU's shape, q->shaped,
** from what the quick scan read: cJSON parses its data only): push its
** value and return 1, or return 0 (not valid JSON) or -1 (out of memory)
** with the reason in why; the stream goes on.  Unless keep, the message is
** consumed before anything can raise, so that one that always raises
** cannot stop the stream; with keep the caller consumes it once its value
** is safe, and a raise leaves it framed, to be decoded again.
** Raises only on memory errors (or from the events table's __index); the
** box then frees the tree and clears busy, which the caller sets (any Lua
** code run by a push must not touch the decoder).
*/
static int decode(lua_State *L, qmp_decoder *d, qmp_treebox *box, int top, const qmp_quick *q,
                  int keep, char *why, size_t whysz) {
  size_t start = d->f.fstart, end = d->f.fend;
  if (!keep) consume(d);
  if (q->shaped) return qmp_push_shaped(L, box, top + UV_EVENTS, top + UV_KEYS, q, why, whysz);
  /* cap > len >= end: room for the NUL cJSON needs */
  return qmp_push_framed(L, box, top + UV_EVENTS, top + UV_KEYS, d->f.buf + start, end - start,
                         d->f.s.sawfloat, why, whysz);
}

/* Push the next message decoded ahead (1), or fail and the error that
** stands for a message that was not JSON (2). */
static int take_ahead(lua_State *L, qmp_decoder *d, int didx) {
  int i = d->ahead, failed = i == d->aheadn && d->aheaderr;
  lua_getiuservalue(L, didx, UV_AHEAD);
  lua_rawgeti(L, -1, i);
  lua_pushnil(L);
  lua_rawseti(L, -3, i);  /* the decoder keeps nothing it gave */
  lua_remove(L, -2);
  if (i < d->aheadn) d->ahead = i + 1;
  else d->ahead = d->aheadn = d->aheaderr = 0;
  if (!failed) return 1;
  luaL_pushfail(L);
  lua_insert(L, -2);
  return 2;
}

/* Decode the framed message into UV_AHEAD (at top), after those there: 1;
** or 0 when it was not JSON (its error stands for it, the last one) or,
** with keep, when cJSON could not allocate.  keep: as decode, the message
** is consumed once stored; one cJSON failed is left framed, to be decoded
** again by the call that gives it: the memory it lacked is that call's. */
static int decode_ahead(lua_State *L, qmp_decoder *d, qmp_treebox *box, int top,
                        const qmp_quick *q, int keep) {
  char why[160];
  int ok = decode(L, d, box, top, q, keep, why, sizeof why);
  if (ok < 0 && keep) return 0;
  if (ok <= 0) qmp_pusherror(L, ok < 0 ? "memory" : "protocol", "%s", why);
  lua_rawseti(L, top, d->aheadn + 1);  /* the array never grows: allocates nothing */
  if (keep) consume(d);
  d->ahead = 1;
  d->aheadn++;
  d->aheaderr = ok <= 0;
  return ok > 0;
}

/* fill_ahead's protected part: more messages after the first, while they
** are whole, up to AHEAD of them or AHEAD_BYTES.  (decoder, table) */
static int decode_more(lua_State *L) {
  qmp_decoder *d = (qmp_decoder *)lua_touserdata(L, 1);
  qmp_treebox *box = open_slots(L, d, 1, 2);
  size_t taken = 0;
  qmp_quick q;
  while (d->aheadn < AHEAD && taken < AHEAD_BYTES && frame_next(d, &q) > 0) {
    taken += d->f.fend - d->f.fstart;
    if (!decode_ahead(L, d, box, 2, &q, 1)) break;
  }
  close_slots(L, d, 2);
  return 0;
}

/*
** Decode the next whole messages into UV_AHEAD, ending at one that is not
** JSON (its error stands for it): 1; or, when none is whole, what next()
** returns: 0 (more bytes needed) or 2 (fail and the sticky error).  The
** first is decoded as drain would; those after it under a protected call,
** each kept framed until its value is held: whatever one of them raises
** (memory, the events table's __index) only ends the batch before it,
** and comes from the call that decodes it first, as next() gives it.
*/
static int fill_ahead(lua_State *L, qmp_decoder *d, int didx) {
  qmp_treebox *box;
  qmp_quick q;
  int ok, top, r = frame_next(d, &q);
  if (r == 0) return 0;
  if (r < 0) return qmp_fail(L, d->f.errkind, "%s", d->f.errmsg);
  lua_pushcfunction(L, decode_more);
  lua_pushvalue(L, didx);
  if (lua_getiuservalue(L, didx, UV_AHEAD) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, AHEAD, 0);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, didx, UV_AHEAD);
  }
  top = lua_gettop(L);  /* the table */
  box = open_slots(L, d, didx, top);
  ok = decode_ahead(L, d, box, top, &q, 0);
  close_slots(L, d, top);
  lua_settop(L, top);
  if (ok && lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);  /* the batch ends there */
  lua_settop(L, top - 3);
  return 1;
}

int qmp_decoder_next(lua_State *L, int didx) {
  qmp_decoder *d = (qmp_decoder *)lua_touserdata(L, didx);
  int r;
  if (d->busy)  /* a finalizer run by the walk: touch nothing, not even the framer */
    return luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->ahead == 0 && (r = fill_ahead(L, d, didx)) != 1) return r;
  return take_ahead(L, d, didx);
}

/* The answers of the interest set for the names one drain call has met:
** a busy stream repeats a few dozen names, and a hit costs a compare where
** asking the set costs interning the name as a Lua string. */
#define NAME_CACHE 64        /* entries, a power of two */
#define NAME_CACHE_LEN 47    /* longer names are not cached */
typedef struct NameCache {
  unsigned char len[NAME_CACHE];     /* 0: empty entry */
  unsigned char wanted[NAME_CACHE];
  char name[NAME_CACHE][NAME_CACHE_LEN];
} NameCache;

/* Is the name q found in the interest set at idx?  A raw read: no Lua runs.
** The slot mixes the length and four of the name's bytes (n >= 1). */
static int wanted(lua_State *L, int idx, const qmp_quick *q, NameCache *cache) {
  const unsigned char *s = (const unsigned char *)q->name;
  size_t n = q->namelen;
  int yes, slot = -1;
  if (n > 0 && n <= NAME_CACHE_LEN) {
    uint32_t x = (uint32_t)n | (uint32_t)s[0] << 8 | (uint32_t)s[n / 2] << 16 | (uint32_t)s[n - 1] << 24;
    x ^= s[n > 1 ? n - 2 : 0];
    slot = (int)((x * UINT32_C(0x9E3779B1)) >> 26);  /* the top 6 bits: NAME_CACHE */
    if (cache->len[slot] == n && memcmp(cache->name[slot], s, n) == 0) return cache->wanted[slot];
  }
  lua_pushlstring(L, q->name, n);
  lua_rawget(L, idx);
  yes = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (slot >= 0) {
    cache->len[slot] = (unsigned char)n;
    cache->wanted[slot] = (unsigned char)yes;
    memcpy(cache->name[slot], s, n);
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
  qmp_push_name(L, keys, "event", 5);
  yes = lua_rawget(L, -2) == LUA_TSTRING && peer_event_name(lua_tostring(L, -1), lua_rawlen(L, -1));
  lua_pop(L, 1);
  return yes;
}

/* Into the batch first: the messages next() decoded ahead.  1 with the
** error pushed when one of them ends it, else 0. */
static int drain_ahead(lua_State *L, qmp_decoder *d, int didx, qmp_batch *b) {
  int keys = lua_gettop(L) + 1;
  lua_getiuservalue(L, didx, UV_KEYS);
  while (d->ahead != 0 && b->n + b->skipped < b->limit) {
    if (take_ahead(L, d, didx) == 2) {
      lua_copy(L, -1, keys);
      lua_settop(L, keys);
      return 1;
    }
    if (is_event(L, keys)) b->events++;
    lua_rawseti(L, b->list, ++b->n);
  }
  lua_settop(L, keys - 1);
  return 0;
}

int qmp_decoder_drain(lua_State *L, int didx, qmp_batch *b) {
  qmp_decoder *d = (qmp_decoder *)lua_touserdata(L, didx);
  NameCache names;  /* for this call only: the set may change between calls */
  const char *kind = NULL, *msg = NULL;
  char why[160];
  qmp_treebox *box;
  int top;
  if (d->busy)
    return luaL_error(L, "qmp: decoder used re-entrantly");
  if (d->ahead != 0 && drain_ahead(L, d, didx, b)) return 1;
  top = lua_gettop(L);
  /* One to-be-closed slot for the whole batch; busy all along, as Lua code
  ** may run (finalizers, the events table's __index) while a message is
  ** half-way from framed to decoded. */
  box = open_slots(L, d, didx, top);
  memset(names.len, 0, sizeof names.len);
  while (b->n + b->skipped < b->limit) {
    qmp_quick q;
    int asked = 0;  /* the interest set holds its name */
    int ok = frame_next(d, &q);
    if (ok == 0) break;
    if (ok < 0) {
      kind = d->f.errkind;
      msg = d->f.errmsg;
      break;
    }
    if (b->interest && d->quick) {
      if (q.name == NULL) qmp_quick_framed(&d->f, &q);  /* framed by the framer (or by ready()) */
      /* An event named "" or "qmp.*" is no event: the session reports it
      ** (malformed), wanted or not. */
      if (q.name != NULL && peer_event_name(q.name, q.namelen)) {
        if (!wanted(L, b->interest, &q, &names)) {
          consume(d);  /* unparsed */
          b->skipped++;
          continue;
        }
        asked = 1;
      }
    }
    ok = decode(L, d, box, top, &q, 0, why, sizeof why);
    if (ok <= 0) {
      kind = ok < 0 ? "memory" : "protocol";
      msg = why;
      break;
    }
    if ((q.shaped && peer_event_name(q.name, q.namelen)) || is_event(L, top + UV_KEYS)) b->events++;
    b->wanted += asked;
    lua_rawseti(L, b->list, ++b->n);
  }
  close_slots(L, d, top);
  lua_settop(L, top);
  if (kind == NULL) return 0;
  qmp_pusherror(L, kind, "%s", msg);
  return 1;
}

void qmp_batch_start(lua_State *L, qmp_batch *b, int arg, int reuse) {
  lua_Integer limit = luaL_checkinteger(L, arg);
  luaL_argcheck(L, limit > 0, arg, "limit must be positive");
  if (!lua_isnoneornil(L, arg + 1)) luaL_checktype(L, arg + 1, LUA_TTABLE);
  b->interest = lua_istable(L, arg + 1) ? arg + 1 : 0;
  b->limit = limit;
  b->n = b->skipped = b->events = b->wanted = 0;
  if (reuse && !lua_isnoneornil(L, arg + 2)) {
    luaL_checktype(L, arg + 2, LUA_TTABLE);
    lua_settop(L, arg + 2);
  }
  else {
    lua_settop(L, arg + 1);
    lua_createtable(L, limit < 16 ? (int)limit : 16, 0);
  }
  b->list = arg + 2;
}

int qmp_batch_finish(lua_State *L, qmp_batch *b, int failed) {
  lua_Integer i;
  /* A reused list: what it held past these messages goes (a new one holds nothing there). */
  for (i = b->n + 1; lua_rawgeti(L, b->list, i) != LUA_TNIL; i++) {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_rawseti(L, b->list, i);
  }
  lua_pop(L, 1);
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

/* core.reference_decoder{ max_message = n }: a decoder that takes every
** message the long way, the framer then cJSON whole, and skips nothing:
** what the differential specs and fuzzers compare the quick paths with. */
static int reference_decoder_new(lua_State *L) {
  qmp_decoder_new(L, opt_max_message(L, 1))->quick = 0;
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
  qmp_batch_start(L, &b, 2, 0);
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
  qmp_treebox *box;
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
  lua_pushvalue(L, UP_EVENTS);
  lua_pushvalue(L, UP_KEYS);
  box = qmp_treebox_new(L);
  lua_toclose(L, 4);
  r = qmp_parse_text(box, text, len, why, sizeof why);  /* Lua strings end in NUL */
  if (r > 0) qmp_push_message(L, box, 2, 3, text, len, s.sawfloat);
  else r = qmp_fail(L, r < 0 ? "memory" : "protocol", "%s", why);
  lua_closeslot(L, 4);
  lua_rotate(L, 2, r);
  lua_settop(L, 1 + r);
  return r;
}

void qmp_decoder_setfuncs(lua_State *L, const luaL_Reg *l) {
  lua_getfield(L, -1, "events");  /* the table the Lua layer fills */
  qmp_keys_new(L);
  luaL_setfuncs(L, l, 2);
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
  static const luaL_Reg funcs[] = {
    {"decode", core_decode},
    {"decoder", decoder_new},
    {"reference_decoder", reference_decoder_new},
    {NULL, NULL}
  };
  qmp_walk_open(L);
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
  ** The Lua layer fills it and gives it an __index that creates new types.
  ** Each load of the module has its own, as its own functions see it. */
  lua_newtable(L);
  lua_setfield(L, -2, "events");
  qmp_decoder_setfuncs(L, funcs);
}
/* }====================================================== */
