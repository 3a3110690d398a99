/*
** scan.c: bytes -> where each message ends.  Knows no Lua.
**
** The scanner is a JSON-aware byte scanner (strings, escapes, depth) that
** finds where each top-level object ends, whatever the line endings
** (pretty=on output, \n, \r\n) and whatever the read chunking; it also
** rejects what cJSON would silently get wrong (\u0000, bad \u escapes, raw
** NUL) and bounds nesting.  The quick scan checks a whole message in one
** pass and reads an event's name, timestamp and shape (decoder.c's batch
** path); the framer runs either over a buffer of bytes, one message at a time.
*/
#include <stdio.h>
#include <string.h>

#include "scan.h"

/* {====================================================== */
/* qmp_scanner */

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

/* Runs of ordinary bytes are skipped through the STOP tables. */
int qmp_scan_value(qmp_scanner *s, const unsigned char *p, size_t n, size_t *pos) {
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
        if (--s->depth <= 0) { *pos = i + 1; s->prevdigit = 0; return QMP_SCAN_DONE; }
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
  return QMP_SCAN_MORE;
 error:
  *pos = i;
  return QMP_SCAN_ERROR;
}
/* }====================================================== */


/* {====================================================== */
/*
** qmp_quick scan: an event's name and shape before cJSON.
**
** An event outside the caller's interest set is skipped without being
** parsed, so its name is read from the bytes; and an event as QEMU writes
** it has its timestamp and name taken from them too.  This must change
** nothing but the cost: the message must be one that the framer would frame
** the same way and cJSON would accept, and the parts the ones cJSON would
** give.  So quick_scan accepts only what it is sure of: a whole object in
** the bytes given, strict JSON, nesting up to 64, numbers of up to 63
** characters (older cJSONs read no more), no raw control characters, no
** \u0000 nor lone \u surrogates, top-level member names without escapes,
** and a first member "timestamp" or "event" (QEMU's events; anything else
** is left at once).  Anything else returns 0 and goes the usual way:
** framer, cJSON.  As it checks the whole grammar, it frames the message too.
*/

/*
** The bytes scanned end in a NUL written there for the scan (the buffer
** always has room for it, as for cJSON's): no byte the scan accepts is a
** NUL, so it stops there without a bounds check, and never reads past it.
*/

#define C8(c) [c] = 1, [c + 1] = 1, [c + 2] = 1, [c + 3] = 1, \
              [c + 4] = 1, [c + 5] = 1, [c + 6] = 1, [c + 7] = 1
/* Bytes a string scan stops at: the end, an escape, a control character. */
static const unsigned char QUICK_STRING_STOP[256] = {
  C8(0), C8(8), C8(16), C8(24), ['"'] = 1, ['\\'] = 1
};
#undef C8

/* The value of the 4 hex digits at p, or 0 (\u0000 is refused alike). */
static unsigned quick_hex4(const unsigned char *p) {
  unsigned code = 0;
  int k, v;
  for (k = 0; k < 4; k++) {  /* stops at the first non-digit: never past the NUL */
    if ((v = hexval(p[k])) < 0) return 0;
    code = (code << 4) | (unsigned)v;
  }
  return code;
}

/* From p in a string: past its closing quote when no escape nor control
** character comes first (1), else the first of those (0); the NUL at the
** end is a control character.  With SSE2, 16 bytes at a time: the block
** holding the stop byte is read whole, so up to 15 bytes past it must be
** readable (QMP_SCAN_PAD). */
#if defined(__SSE2__)
#include <emmintrin.h>

static inline int string_run(const unsigned char **pp) {
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
  const __m128i control = _mm_set1_epi8(0x1f);
  const unsigned char *p = *pp;
  unsigned quotes, others;
  for (;; p += 16) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    quotes = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote));
    others = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, backslash),
                                                      _mm_cmpeq_epi8(_mm_min_epu8(v, control), v)));
    if ((quotes | others) != 0) break;
  }
  /* (others & -others) - 1: the bits below the first other stop (all of them if none) */
  if (quotes & ((others & -others) - 1)) {
    *pp = p + __builtin_ctz(quotes) + 1;
    return 1;
  }
  *pp = p + __builtin_ctz(others);
  return 0;
}
#else
static inline int string_run(const unsigned char **pp) {
  const unsigned char *p = *pp;
  while (!QUICK_STRING_STOP[*p]) p++;
  *pp = p + (*p == '"');
  return *p == '"';
}
#endif

/* An escape at p, in a string: past it, or NULL if bad or unsure. */
static const unsigned char *quick_escape(const unsigned char *p) {
  unsigned code;
  switch (*++p) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
      return p + 1;
    case 'u':
      code = quick_hex4(p + 1);
      p += 5;
      if (code == 0 || (code >= 0xDC00 && code <= 0xDFFF)) return NULL;  /* bad, \u0000, lone low */
      if (code >= 0xD800 && code <= 0xDBFF) {  /* a high surrogate: its low one must follow */
        if (p[0] != '\\' || p[1] != 'u') return NULL;
        code = quick_hex4(p + 2);
        if (code < 0xDC00 || code > 0xDFFF) return NULL;
        p += 6;
      }
      return p;
    default: return NULL;
  }
}

/* The rest of a string from the byte p where string_run stopped, not a
** quote: past the closing quote (*plain = 0), or NULL if unsure. */
static const unsigned char *string_tail(const unsigned char *p, int *plain) {
  *plain = 0;
  do {
    if (*p != '\\' || (p = quick_escape(p)) == NULL) return NULL;  /* a control character, the end */
  } while (!string_run(&p));
  return p;
}

const unsigned char *qmp_quick_string(const unsigned char *p, int *plain) {
  return string_run(&p) ? p : string_tail(p, plain);
}

/* qmp_quick_string without reading past the byte it stops at, for text
** without QMP_SCAN_PAD (qmp_strict_json's). */
static const unsigned char *unpadded_string(const unsigned char *p) {
  for (;;) {
    while (!QUICK_STRING_STOP[*p]) p++;
    if (*p == '"') return p + 1;
    if (*p != '\\' || (p = quick_escape(p)) == NULL) return NULL;
  }
}

/* A string from c, just past its opening quote, in quick_scan: c goes past
** its closing quote (plain = 0 if it has escapes), or quick_scan gives up. */
#define SCAN_STRING(c, plain) \
  if (!string_run(&c) && (c = string_tail(c, &plain)) == NULL) return 0

static const unsigned char *quick_number(const unsigned char *p, int *sawfloat) {
  const unsigned char *start = p;
  if (*p == '-') p++;
  if (*p == '0') p++;
  else if (isdigit_json(*p)) while (isdigit_json(*p)) p++;
  else return NULL;
  if (*p == '.') {
    *sawfloat = 1;
    if (!isdigit_json(*++p)) return NULL;
    while (isdigit_json(*p)) p++;
  }
  if (*p == 'e' || *p == 'E') {
    *sawfloat = 1;
    if (*++p == '+' || *p == '-') p++;
    if (!isdigit_json(*p)) return NULL;
    while (isdigit_json(*p)) p++;
  }
  return p - start > 63 ? NULL : p;  /* cJSON may stop reading a number there */
}

/* An integer of at most 18 digits (exact in an int64_t) at p, with
** nothing after it that would make it a float: past it, or NULL.  Only
** checked here: most events are skipped, and qmp_integer_value reads it
** again for those that are not. */
#define BYTES8(b) (UINT64_C(0x0101010101010101) * (b))

/* Past the digits from p, 8 bytes at a time while all 8 are digits (a
** timestamp has 10 and 6): reads up to 7 bytes past the byte it stops at,
** so only in quick_scan's text (QMP_SCAN_PAD).  A byte is a digit when its
** high nibble is 3 and adding 6 leaves it so (0x3A..0x3F carry into the
** high nibble, never beyond their own byte). */
static inline const unsigned char *digit_run(const unsigned char *p) {
  for (;;) {
    uint64_t x;
    memcpy(&x, p, 8);
    if ((x & BYTES8(0xF0)) != BYTES8(0x30) || ((x + BYTES8(0x06)) & BYTES8(0xF0)) != BYTES8(0x30)) break;
    p += 8;
  }
  while (isdigit_json(*p)) p++;
  return p;
}
#undef BYTES8

static inline const unsigned char *quick_integer(const unsigned char *p) {
  const unsigned char *digits = p += *p == '-';
  if (*p == '0') p++;
  else p = digit_run(p);
  if (p == digits || p - digits > 18 || isdigit_json(*p) || *p == '.' || *p == 'e' || *p == 'E')
    return NULL;  /* none, too long, a leading zero, or a float */
  return p;
}

/* quick_integer a byte at a time: reads nothing past the byte it stops at. */
const unsigned char *qmp_quick_integer(const unsigned char *p) {
  const unsigned char *digits = p += *p == '-';
  if (*p == '0') p++;
  else while (isdigit_json(*p)) p++;
  if (p == digits || p - digits > 18 || isdigit_json(*p) || *p == '.' || *p == 'e' || *p == 'E')
    return NULL;  /* none, too long, a leading zero, or a float */
  return p;
}

/* The value of an integer qmp_quick_integer accepted. */
int64_t qmp_integer_value(const unsigned char *p) {
  int neg = *p == '-';
  int64_t n = 0;
  for (p += neg; isdigit_json(*p); p++) n = n * 10 + (*p - '0');
  return neg ? -n : n;
}

/* p starts with the word w?  Reads no further than a mismatch. */
static int quick_word(const unsigned char *p, const char *w) {
  while (*w != '\0')
    if (*p++ != (unsigned char)*w++) return 0;
  return 1;
}

#define QUICK_MAX_DEPTH 64
#define SKIP_SPACE() while (*c <= ' ' && isspace_json(*c)) c++  /* the NUL stops it */

/* A timestamp's value as QEMU writes it, {"seconds": N, "microseconds": N}
** (either order): past it, with the integers in q; or NULL. */
static const unsigned char *quick_timestamp(const unsigned char *c, qmp_quick *q) {
  int got = 0;  /* 1: seconds, 2: microseconds */
  if (*c++ != '{') return NULL;
  for (;;) {
    int which;
    SKIP_SPACE();
    if (quick_word(c, "\"seconds\"")) which = 1, c += 9;
    else if (quick_word(c, "\"microseconds\"")) which = 2, c += 14;
    else return NULL;
    if (got & which) return NULL;
    got |= which;
    SKIP_SPACE();
    if (*c++ != ':') return NULL;
    SKIP_SPACE();
    if (which == 1) q->seconds = c;
    else q->microseconds = c;
    if ((c = quick_integer(c)) == NULL) return NULL;
    SKIP_SPACE();
    if (*c != ',') break;
    c++;
  }
  return (*c == '}' && got == 3) ? c + 1 : NULL;
}

enum { M_TIMESTAMP = 1, M_EVENT = 2, M_DATA = 4, M_OTHER = 8 };

/* How QEMU opens every event, byte for byte (its JSON writer's spacing). */
#define OPEN_SECONDS "\"timestamp\": {\"seconds\": "
#define OPEN_MICROSECONDS ", \"microseconds\": "
#define OPEN_EVENT "}, \"event\": \""
#define OPEN_DATA ", \"data\": "
#define WORD_IS(c, w) (memcmp(c, w, sizeof w - 1) == 0)  /* whole: QMP_SCAN_PAD */

/* The opening of an event as QEMU writes it, from just past the '{' to
** just past the name's closing quote, read in a few compares where the
** general scan below takes a step per byte: past it, with the timestamp
** and name in q, or NULL (then the general scan reads it, as it would
** read these bytes to the same effect). */
static const unsigned char *qemu_opening(const unsigned char *c, qmp_quick *q) {
  const unsigned char *name;
  if (!WORD_IS(c, OPEN_SECONDS)) return NULL;
  q->seconds = c += sizeof OPEN_SECONDS - 1;
  if ((c = quick_integer(c)) == NULL || !WORD_IS(c, OPEN_MICROSECONDS)) return NULL;
  q->microseconds = c += sizeof OPEN_MICROSECONDS - 1;
  if ((c = quick_integer(c)) == NULL || !WORD_IS(c, OPEN_EVENT)) return NULL;
  name = c += sizeof OPEN_EVENT - 1;
  if (!string_run(&c)) return NULL;  /* an escape in the name: the general scan decides */
  q->name = (const char *)name;
  q->namelen = (size_t)(c - 1 - name);
  return c;
}

/* p starts with '{' and the bytes end in a NUL.  1 when they begin with a
** whole message that quick_scan is sure of (q says what it found), else 0.
** A shaped message's only members two deep are its data's: there it counts
** them and checks that they are flat (q->flat, see walk.c). */
static int quick_scan(const unsigned char *p, qmp_quick *q) {
  const unsigned char *c = p + 1, *key;
  uint64_t arrays = 0;  /* bit k: nesting level k + 1 is an array */
  int depth = 1, member = 0, members = 0, plain = 1;  /* member: M_* of the top-level one read */
  long count = 0;       /* members two deep */
  int flat = 1;         /* and all of them plain */
  q->sawfloat = 0;
  q->name = NULL;
  q->data = q->dataend = NULL;
  q->seconds = q->microseconds = NULL;
  q->shaped = 1;
  if ((key = qemu_opening(c, q)) != NULL) {
    c = key;
    members = M_TIMESTAMP | M_EVENT;
    if (!WORD_IS(c, OPEN_DATA)) {
      member = M_EVENT;
      goto after;
    }
    c += sizeof OPEN_DATA - 1;
    members |= member = M_DATA;
    goto value;
  }
  q->name = NULL;
  q->seconds = q->microseconds = NULL;
 member:  /* a member name, then its value */
  SKIP_SPACE();
  if (*c != '"') return 0;
  key = ++c;
  plain = 1;
  SCAN_STRING(c, plain);
  if (depth == 1) {
    size_t len = (size_t)(c - 1 - key);
    if (!plain) return 0;  /* it might spell "event" */
    if (len == 5 && memcmp(key, "event", 5) == 0) member = M_EVENT;
    else if (len == 9 && memcmp(key, "timestamp", 9) == 0) member = M_TIMESTAMP;
    else if (len == 4 && memcmp(key, "data", 4) == 0) member = M_DATA;
    else member = M_OTHER;
    if (members == 0 && member != M_EVENT && member != M_TIMESTAMP) return 0;  /* not an event */
    if (members & member) q->shaped = 0;  /* twice: the last one counts */
    members |= member;
  }
  else if (depth == 2) {
    count++;
    flat &= plain;
  }
  SKIP_SPACE();
  if (*c++ != ':') return 0;
 value:
  SKIP_SPACE();
  if (depth == 1) {
    if (member == M_EVENT) {  /* its name: a plain string, and the only one */
      if (*c != '"' || q->name != NULL) return 0;
      key = ++c;
      SCAN_STRING(c, plain);
      if (!plain) return 0;
      q->name = (const char *)key;
      q->namelen = (size_t)(c - 1 - key);
      goto after;
    }
    if (member == M_TIMESTAMP && q->shaped) {
      const unsigned char *end = quick_timestamp(c, q);
      if (end != NULL) {
        c = end;
        goto after;
      }
      q->shaped = 0;  /* not QEMU's: scanned as any value */
    }
    if (member == M_DATA) {
      q->data = (const char *)c;
      count = 0;
      flat = 1;
    }
  }
  /* Two deep, plain is a string without escapes, an integer exact in an
  ** int64 or a literal: see below. */
  switch (*c) {
    case '"':
      plain = 1;
      c++;
      SCAN_STRING(c, plain);
      if (depth == 2) flat &= plain;
      break;
    case '{': case '[':
      if (depth == QUICK_MAX_DEPTH) return 0;
      if (depth == 2) flat = 0;
      if (*c == '[') arrays |= (uint64_t)1 << depth;
      else arrays &= ~((uint64_t)1 << depth);
      depth++;
      c++;
      SKIP_SPACE();
      if (*c == '}' || *c == ']') goto close;  /* empty; close checks which */
      if (arrays >> (depth - 1) & 1) goto value;
      goto member;
    case 't': if (!quick_word(c, "true")) return 0; c += 4; break;
    case 'f': if (!quick_word(c, "false")) return 0; c += 5; break;
    case 'n': if (!quick_word(c, "null")) return 0; c += 4; break;
    default:
      if (depth == 2) {
        const unsigned char *end = quick_integer(c);  /* a JSON integer: quick_number's too */
        if (end != NULL) {
          c = end;
          break;
        }
        flat = 0;
      }
      if ((c = quick_number(c, &q->sawfloat)) == NULL) return 0;
      break;
  }
 after:  /* a value ended: a comma, or the end of its object or array */
  if (depth == 1 && member == M_DATA) q->dataend = (const char *)c;
  SKIP_SPACE();
  if (*c == ',') {
    c++;
    if (arrays >> (depth - 1) & 1) goto value;
    goto member;
  }
 close:
  if (*c++ != ((arrays >> (depth - 1) & 1) ? ']' : '}')) return 0;
  if (--depth > 0) goto after;
  q->len = (size_t)(c - p);
  if ((members & ~M_DATA) != (M_TIMESTAMP | M_EVENT)) q->shaped = 0;
  q->flat = q->data != NULL && *q->data == '{' && flat ? count : -1;
  return 1;
}

#undef SKIP_SPACE
#undef WORD_IS
#undef SCAN_STRING

/*
** Is text[0..len) (a NUL at text[len]) one JSON value, with JSON whitespace
** around it, by the quick scan's strict grammar?  Asked only once cJSON
** failed: cJSON accepts all of that, so then it could not allocate (it
** tells a failed allocation from bad JSON no other way).  Never laxer than
** cJSON, so bad JSON is never taken for a memory failure.
*/
int qmp_strict_json(const unsigned char *c, size_t len) {
  const unsigned char *end = c + len;
  unsigned char arrays[QMP_MAX_DEPTH / 8 + 1];  /* bit k: nesting level k + 1 is an array */
  int depth = 0, flag;
#define SKIP() while (c < end && isspace_json(*c)) c++
#define INARRAY() (arrays[(depth - 1) >> 3] >> ((depth - 1) & 7) & 1)
 value:
  SKIP();
  switch (*c) {  /* the helpers stop at the NUL: never past end */
    case '"': if ((c = unpadded_string(c + 1)) == NULL) return 0; break;
    case '{': case '[':
      if (depth == QMP_MAX_DEPTH) return 0;
      if (*c == '[') arrays[depth >> 3] |= (unsigned char)(1u << (depth & 7));
      else arrays[depth >> 3] &= (unsigned char)~(1u << (depth & 7));
      depth++;
      c++;
      SKIP();
      if (*c == (INARRAY() ? ']' : '}')) goto close;
      if (INARRAY()) goto value;
      goto member;
    case 't': if (!quick_word(c, "true")) return 0; c += 4; break;
    case 'f': if (!quick_word(c, "false")) return 0; c += 5; break;
    case 'n': if (!quick_word(c, "null")) return 0; c += 4; break;
    default: if ((c = quick_number(c, &flag)) == NULL) return 0; break;
  }
 after:  /* a value ended */
  SKIP();
  if (depth == 0) return c == end;
  if (*c == ',') {
    c++;
    if (INARRAY()) goto value;
    goto member;
  }
  if (*c != (INARRAY() ? ']' : '}')) return 0;
 close:
  c++;
  depth--;
  goto after;
 member:
  SKIP();
  if (*c != '"' || (c = unpadded_string(c + 1)) == NULL) return 0;
  SKIP();
  if (*c++ != ':') return 0;
  goto value;
#undef SKIP
#undef INARRAY
}
/* }====================================================== */


/* {====================================================== */
/* Framer: a buffer of bytes, one message at a time */

const char *qmp_excerpt(char *out, const char *p, size_t n) {
  size_t i, o = 0;
  for (i = 0; i < n && o < 40; i++) {
    unsigned char c = (unsigned char)p[i];
    out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '.';
  }
  out[o] = '\0';
  return out;
}

/* Framing errors are sticky: the stream cannot be resynchronised. */
static int sticky(qmp_framer *f, const char *kind) {
  f->errkind = kind;
  return -1;
}

/* Pushes nothing, so qmp_decoder_ready can ask too. */
int qmp_frame(qmp_framer *f) {
  const unsigned char *p = (const unsigned char *)f->buf;
  char *why = f->errmsg;
  for (;;) {
    if (!f->inmsg) {  /* between messages: skip whitespace, expect '{' */
      while (f->scan < f->len && isspace_json(p[f->scan])) f->scan++;
      f->head = f->scan;
      if (f->scan == f->len) return 0;
      if (p[f->scan] != '{') {
        char ex[48];
        snprintf(why, sizeof f->errmsg, "expected a JSON object, got '%s'",
                 qmp_excerpt(ex, f->buf + f->scan, f->len - f->scan));
        return sticky(f, "protocol");
      }
      memset(&f->s, 0, sizeof f->s);
      f->inmsg = 1;
    }
    switch (qmp_scan_value(&f->s, p, f->len, &f->scan)) {
      case QMP_SCAN_DONE:
        f->inmsg = 0;
        if (f->scan - f->head > f->max_message) break;  /* toolarge, below */
        f->framed = 1;
        f->fstart = f->head;
        f->fend = f->scan;
        return 1;
      case QMP_SCAN_ERROR:
        snprintf(why, sizeof f->errmsg, "%s (byte %d of a message)", f->s.err,
                 (int)(f->scan - f->head));
        return sticky(f, "protocol");
      default:
        if (f->scan - f->head <= f->max_message) return 0;
        break;
    }
    snprintf(why, sizeof f->errmsg, "message exceeds max_message (%lu bytes)",
             (unsigned long)f->max_message);
    return sticky(f, "toolarge");
  }
}

/* quick_scan over buf[start..end), with the NUL it needs at buf[end]. */
static int quick_scan_at(qmp_framer *f, size_t start, size_t end, qmp_quick *q) {
  char saved = f->buf[end];  /* end <= len, and buf[len] is writable */
  int r;
  f->buf[end] = '\0';
  r = quick_scan((const unsigned char *)f->buf + start, q);
  f->buf[end] = saved;
  if (!r) {  /* what it found before giving up means nothing */
    q->name = NULL;
    q->shaped = 0;
  }
  return r;
}

int qmp_quick_frame(qmp_framer *f, qmp_quick *q) {
  const unsigned char *p = (const unsigned char *)f->buf;
  size_t i = f->scan, n;
  q->name = NULL;
  q->shaped = 0;
  if (f->inmsg) return 0;
  while (i < f->len && isspace_json(p[i])) i++;
  if (i == f->len || p[i] != '{') return 0;
  n = f->len - i;
  if (n > f->max_message) n = f->max_message;  /* a longer one is qmp_frame's error */
  if (!quick_scan_at(f, i, i + n, q)) return 0;
  f->head = f->fstart = i;
  f->scan = f->fend = i + q->len;
  f->s.sawfloat = q->sawfloat;
  f->framed = 1;
  return 1;
}

void qmp_quick_framed(qmp_framer *f, qmp_quick *q) {
  if (quick_scan_at(f, f->fstart, f->fend, q) && q->len != f->fend - f->fstart) {
    q->name = NULL;
    q->shaped = 0;
  }
}

void qmp_framer_slide(qmp_framer *f) {
  memmove(f->buf, f->buf + f->head, f->len - f->head);
  f->len -= f->head;
  f->scan -= f->head;
  if (f->framed) {  /* a cached frame starts at head: it slides with the bytes */
    f->fstart -= f->head;
    f->fend -= f->head;
  }
  f->head = 0;
}
/* }====================================================== */
