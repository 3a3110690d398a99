/*
** qmp.h: private declarations shared by the files of the qmp.core module.
** Only luaopen_qmp_core is exported; everything here has hidden visibility.
*/
#if !defined(qmp_h)
#define qmp_h

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 504
#error "qmp requires Lua 5.4"
#endif

#pragma GCC visibility push(hidden)

/* Registry names of the metatables the C files share. */
#define QMP_ERROR_MT   "qmp.Error"    /* error objects: { kind =, message =, ... } */
#define QMP_ARRAY_MT   "qmp.array"    /* marks a table that encodes as a JSON array */
#define QMP_UINT64_MT  "qmp.uint64"   /* userdata: an unsigned integer above 2^63-1 */
#define QMP_DECODER_MT "qmp.Decoder"  /* streaming framer + decoder */
#define QMP_CONN_MT    "qmp.Conn"     /* a monitor connection */
#define QMP_FD_MT      "qmp.Fd"       /* a file descriptor, owned until closed or released */

/* Limits (QMP_MAX_MESSAGE, QMP_MAX_DEPTH, ...); each can be overridden at build time. */
#include "qmp_limits.h"

/* JSON null is this light userdata (qmp.null), as in lua-cjson. */
#define qmp_pushnull(L) lua_pushlightuserdata(L, NULL)
#define qmp_isnull(L, i) (lua_islightuserdata(L, i) && lua_touserdata(L, i) == NULL)

/* error.c: errors.  Push fail (nil) and an error object { kind, message };
** return 2 so a C function can 'return qmp_fail(...)'. */
int qmp_fail(lua_State *L, const char *kind, const char *fmt, ...);
/* Push only the error object. */
void qmp_pusherror(lua_State *L, const char *kind, const char *fmt, ...);
void qmp_error_open(lua_State *L);  /* adds Error, the errors' metatable */

/* uint64.c: boxed unsigned 64-bit integers above INT64_MAX. */
void qmp_uint64_open(lua_State *L);             /* module table at top */
void qmp_pushuint64(lua_State *L, uint64_t v);
int qmp_touint64(lua_State *L, int idx, uint64_t *v);  /* 1 if idx is a qmp.uint64 */

/* encode.c: Lua value -> JSON text. */
void qmp_encode_open(lua_State *L);             /* adds encode to the module table */

/* decoder.c: bytes -> Lua values (with scan.c, the framer, and walk.c, cJSON tree -> Lua). */
void qmp_decode_open(lua_State *L);             /* adds decode, decoder, events */
/* luaL_setfuncs for functions that make decoders: they get the module's
** decoder state (core.events and a key cache) as upvalues.  Module table at
** top, after qmp_decode_open. */
void qmp_decoder_setfuncs(lua_State *L, const luaL_Reg *l);

/* A streaming decoder: bytes in, one JSON text at a time out. */
typedef struct qmp_decoder qmp_decoder;
/* Push a new one; only from a function set by qmp_decoder_setfuncs. */
qmp_decoder *qmp_decoder_new(lua_State *L, size_t max_message);
/* Make room for at least n more bytes; returns the write position. */
char *qmp_decoder_reserve(lua_State *L, qmp_decoder *d, size_t n);
void qmp_decoder_commit(qmp_decoder *d, size_t n);   /* n bytes were written */
/* Push the next message (1), nothing (0: need more bytes), or fail+error (2). */
int qmp_decoder_next(lua_State *L, int didx);
/* 1 if qmp_decoder_next would push a message or an error now, without more
** bytes (the frame found is cached for it); 0 if not.  Pushes nothing. */
int qmp_decoder_ready(lua_State *L, qmp_decoder *d);
size_t qmp_decoder_pending(qmp_decoder *d);          /* bytes of a partial message */

/* A batch of messages taken by one drain call (d:drain, conn:drain). */
typedef struct qmp_batch {
  int list;             /* stack index of the list the messages go to */
  int interest;         /* stack index of the interest set, or 0 */
  lua_Integer limit;    /* messages to take at most, listed or skipped */
  lua_Integer n;        /* messages listed */
  lua_Integer skipped;  /* events skipped: outside the interest set */
  lua_Integer events;   /* messages listed that are events (a string "event") */
  lua_Integer wanted;   /* listed events whose name the interest set was asked
                        ** and holds: when n, every listed message is one */
} qmp_batch;
/* Check the arguments limit (at arg) and interest (arg + 1) and, with
** reuse, an optional list at arg + 2 to fill again from 1 (what it held
** after the messages is cleared by qmp_batch_finish); drop any arguments
** after them and leave the list at arg + 2 (a new one without reuse). */
void qmp_batch_start(lua_State *L, qmp_batch *b, int arg, int reuse);
/* Decode the whole messages held into the batch until b->limit: 0 when the
** limit is reached or more bytes are needed; 1 with an error object pushed
** (a framing error, sticky; or a message that is not JSON, consumed).  An
** event whose top-level "event" name the interest set does not hold (raw
** read) is counted in b->skipped, never parsed, when the quick scan is sure
** of the name (scan.c); else it is listed, for the caller to filter. */
int qmp_decoder_drain(lua_State *L, int didx, qmp_batch *b);
/* Push the results list, skipped, err or nil, events; returns their number. */
int qmp_batch_finish(lua_State *L, qmp_batch *b, int failed);

/* transport.c: sockets. */
void qmp_transport_open(lua_State *L);  /* adds open_*, resolve, fdopen, isfd, isatty, socketpair, pipe */
/* A connection (qmp.Conn), for the files that make them from other fds. */
typedef struct qmp_conn qmp_conn;
/* Push a new, closed one; its max_message is the optional argument at
** max_message_arg (raises when it is not positive).  Only from a function
** set by qmp_decoder_setfuncs (the conn owns a decoder). */
qmp_conn *qmp_conn_new(lua_State *L, int max_message_arg);
/* Give it fd (non-blocking, close-on-exec), of family (AF_UNIX...), and the
** label its messages name it by.  Cannot raise: the conn owns fd from here. */
void qmp_conn_adopt(qmp_conn *c, int fd, int family, const char *label);
/* Check the unix socket path at idx (raises when empty, too long or with a
** NUL byte) and fill *sa with it; returns the path. */
struct sockaddr_un;
const char *qmp_check_unix_path(lua_State *L, int idx, struct sockaddr_un *sa);
/* The fd of the qmp.Fd at idx: -1 when it is closed, -2 when idx holds no
** qmp.Fd.  Cannot raise. */
int qmp_fd_get(lua_State *L, int idx);

/* listen.c: listening unix sockets whose accept gives conns. */
void qmp_listen_open(lua_State *L);  /* adds listen_unix */

/* poll.c: one poll() over many fds, for qmp.loop. */
void qmp_poll_open(lua_State *L);              /* adds poll to the module table */
double qmp_monotime(void);                      /* seconds, CLOCK_MONOTONIC */
int qmp_poll_ms(double deadline);  /* poll() timeout: -1 forever (HUGE_VAL), 0 once passed */

/* poller.c: a persistent set of (fd, interest), for qmp.loop. */
void qmp_poller_open(lua_State *L);  /* adds poller */

/* file.c: files readable by their owner only. */
void qmp_file_open(lua_State *L);    /* adds private_file */

/* spawn.c: child processes (QEMU) with chosen fds, watched through a pidfd. */
void qmp_spawn_open(lua_State *L);   /* adds spawn */

/* signal.c: caught signals wake and end the blocking waits. */
void qmp_signal_open(lua_State *L);  /* adds catch_signals, release_signals, signal_pending, take_signal */
int qmp_signal_fd(void);             /* the fd a wait watches too: -1 before any catch */
void qmp_signal_drain(void);         /* empty it once poll() says it is readable */
/* Push fail and an "interrupted" error (err.signal) and return 2 when a
** caught signal is pending; else push nothing and return 0. */
int qmp_signal_interrupted(lua_State *L);

#pragma GCC visibility pop

#endif
