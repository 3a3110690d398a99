/*
** scan.h: the byte scanner and the framer (scan.c), which know no Lua.
** Bytes in; out, where each message ends, why a stream is broken, and what
** the quick scan read of an event (its name, timestamp and shape).
*/
#if !defined(scan_h)
#define scan_h

#include <stddef.h>
#include <stdint.h>

#include "qmp_limits.h"

#pragma GCC visibility push(hidden)

static inline int isspace_json(unsigned char c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline int isdigit_json(unsigned char c) {
  return c >= '0' && c <= '9';
}

/* The scanner: where a top-level value ends, across any number of reads. */
typedef struct qmp_scanner {
  int depth;              /* bracket depth; 0 between messages */
  unsigned char instr;    /* inside a string */
  unsigned char esc;      /* after a backslash in a string */
  unsigned char hex;      /* \u digits still expected */
  unsigned char prevdigit;  /* the previous read ended on a digit outside strings */
  unsigned char sawfloat; /* a '.' or exponent outside strings: not all numbers are integers */
  unsigned code;          /* value of the \u escape being read */
  const char *err;        /* why the scan failed, or NULL */
} qmp_scanner;

enum { QMP_SCAN_MORE, QMP_SCAN_DONE, QMP_SCAN_ERROR };

/* Scan p[*pos .. n) inside a value: QMP_SCAN_DONE with *pos just past the
** bracket that closes the top-level value, QMP_SCAN_MORE when the bytes run
** out first (*pos = n), or QMP_SCAN_ERROR with s->err set (*pos at the culprit). */
int qmp_scan_value(qmp_scanner *s, const unsigned char *p, size_t n, size_t *pos);

/* What the quick scan found in a message (scan.c says what it accepts). */
typedef struct qmp_quick {
  size_t len;           /* bytes of the message, through its closing brace */
  int sawfloat;         /* a number with a fraction or an exponent */
  const char *name;     /* the top-level "event" string (no escapes), or NULL */
  size_t namelen;
  /* QEMU's shape: the members timestamp (of two integer members, seconds
  ** and microseconds), event and, optionally, data, each once, no other.
  ** Then these parts are all there is to the message. */
  int shaped;
  const unsigned char *seconds, *microseconds;  /* their digits (qmp_quick_integer) */
  const char *data, *dataend;  /* the text of the data member, or NULL */
  /* When shaped: the number of data's members if it is a flat object (its
  ** members all plain: strings without escapes, integers of at most 18
  ** digits, true, false, null; duplicates counted), else -1. */
  long flat;
} qmp_quick;

/* The helpers below read bytes that end in a NUL, and stop there. */
/* Bytes that follow the NUL, readable, in the text the quick scan reads:
** it reads strings a block at a time, and compares QEMU's fixed words
** whole, so it may look up to this many past the byte it stops at.  The
** decoder's read buffer always has them (decoder.c). */
#define QMP_SCAN_PAD 64
/* Scan a string from p, just past its opening quote: the byte past its
** closing quote (*plain = 0 if it has escapes), or NULL if unsure.  The
** text must have QMP_SCAN_PAD bytes after its NUL. */
const unsigned char *qmp_quick_string(const unsigned char *p, int *plain);
/* An integer of at most 18 digits at p, with nothing after it that would
** make it a float: past it, or NULL. */
const unsigned char *qmp_quick_integer(const unsigned char *p);
int64_t qmp_integer_value(const unsigned char *p);  /* of one qmp_quick_integer accepted */
/* Is text[0..len) one JSON value by the quick scan's strict grammar? */
int qmp_strict_json(const unsigned char *text, size_t len);

/* Up to 40 bytes of p as printable text in out (48 bytes), for error messages. */
const char *qmp_excerpt(char *out, const char *p, size_t n);

/* The framer: the messages in a buffer of bytes, one at a time. */
typedef struct qmp_framer {
  char *buf;            /* the bytes; buf[len] is always writable, for a NUL */
  size_t head;          /* start of the current message or of unscanned space */
  size_t len;           /* bytes held */
  size_t scan;          /* next byte for the scanner */
  size_t max_message;   /* largest message accepted */
  int inmsg;            /* the scanner is inside a message starting at head */
  int framed;           /* [fstart, fend) is a complete message not yet consumed */
  size_t fstart, fend;  /* offsets into buf; fstart == head while framed */
  qmp_scanner s;        /* left alone while framed: its sawfloat is the message's */
  const char *errkind;  /* sticky framing error, or NULL */
  char errmsg[160];
} qmp_framer;

/* Frame the next message into framed/fstart/fend: 1, 0 when more bytes are
** needed, or -1 with a sticky error in errkind/errmsg.  Only when nothing is
** framed: each call moves scan on. */
int qmp_frame(qmp_framer *f);
/* Frame the next message with the quick scan, when it is sure of it: 1
** (framed, q says what it found) or 0 (qmp_frame's turn; nothing changed). */
int qmp_quick_frame(qmp_framer *f, qmp_quick *q);
/* What the quick scan finds in the message framed (q->name NULL if unsure). */
void qmp_quick_framed(qmp_framer *f, qmp_quick *q);
/* Drop the bytes before head: the live ones move to the start of buf. */
void qmp_framer_slide(qmp_framer *f);

#pragma GCC visibility pop

#endif
