/*
** walk.h: cJSON trees -> Lua values (walk.c), for decoder.c.
** A decoding call holds on its stack the event types table, the key cache
** and a tree box (to-be-closed) that frees any tree a Lua error cuts short.
*/
#if !defined(walk_h)
#define walk_h

#include "qmp.h"
#include "scan.h"

#pragma GCC visibility push(hidden)

typedef struct qmp_treebox {
  struct cJSON *tree;   /* the tree being walked, or NULL */
  int *busy;            /* the decoder's busy flag while a decoding call runs, or NULL */
  int pieces;           /* push_parts calls under way (bounded: each takes C stack) */
} qmp_treebox;

void qmp_walk_open(lua_State *L);            /* the tree box's metatable */
qmp_treebox *qmp_treebox_new(lua_State *L);  /* pushes it */
void qmp_keys_new(lua_State *L);             /* pushes a key cache */

/* Push the member name s[0..n), from the key cache at keys if there. */
void qmp_push_name(lua_State *L, int keys, const char *s, size_t n);

/* Parse text[0..len) (text[len] must be NUL) into box->tree; touches no
** Lua state.  1; or 0 (not JSON) or -1 (cJSON could not allocate) with the
** reason in why. */
int qmp_parse_text(qmp_treebox *box, const char *text, size_t len, char *why, size_t whysz);
/* Push the value of box->tree (parsed from text), an object typed as an
** event, and free the tree.  Raises only on memory errors (or from the
** events table's __index). */
void qmp_push_message(lua_State *L, qmp_treebox *box, int events, int keys,
                      const char *text, size_t len, int sawfloat);
/* Parse and push a framed message (its strings and brackets close inside
** it; text[len] is writable): a big one a member at a time.  1, or 0 (not
** JSON) or -1 (out of memory) with the reason in why. */
int qmp_push_framed(lua_State *L, qmp_treebox *box, int events, int keys,
                    char *text, size_t len, int sawfloat, char *why, size_t whysz);
/* Push an event of QEMU's shape (q->shaped) from what the quick scan found:
** cJSON parses its data only, if that.  As qmp_push_framed. */
int qmp_push_shaped(lua_State *L, qmp_treebox *box, int events, int keys,
                    const qmp_quick *q, char *why, size_t whysz);

#pragma GCC visibility pop

#endif
