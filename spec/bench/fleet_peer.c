/*
** fleet_peer CONTROL SOCKET [SOCKET ...]: the QMP peer of the fleet
** benchmark (fleet.lua), one process serving thousands of monitors.
**
** It listens on every SOCKET (a listen backlog holds at most a few thousand
** pending connections: a fleet that connects all at once is spread over
** several sockets), greets each connection as QEMU 7.2 does and answers
** every command line ("execute" or "exec-oob") with {"return": {}} and the
** command's id; a connection is "negotiated" once it sent qmp_capabilities,
** and negotiated connections are numbered from 0 in that order.
**
** Orders come on CONTROL (listened on last: once it listens, all do), one
** per line, one at a time; each is answered by one line, "error <why>" or:
**   count                        the number of negotiated connections
**   paced N GAP_US [FIRST COUNT] N RTC_CHANGE events, one every GAP_US
**                                microseconds, each written at once to a
**                                connection of FIRST..FIRST+COUNT-1 (default:
**                                all) picked by a seeded PRNG; "done N" after
**                                the last
**   flood N K [FIRST]            N events (RTC_CHANGE, BLOCK_IO_ERROR,
**                                BALLOON_CHANGE, JOB_STATUS_CHANGE in turn),
**                                round-robin over connections FIRST..FIRST+K-1,
**                                as fast as the sockets take them, each
**                                connection's FLOOD_WRITE at a time (QEMU
**                                writes one per write: the same for every
**                                spread is what counts); "done N" once all
**                                are written
** An event's timestamp is the time it is made, on CLOCK_MONOTONIC (the
** clock of qmp.monotime): for a paced event, the time it is written, so the
** client can tell its latency.  The peer exits when the control connection
** closes (or after WATCHDOG seconds, whatever happens).  Everything is
** non-blocking, in one epoll; the peer raises its soft limit of open files
** to the hard one.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>

#define WATCHDOG 900               /* seconds: no peer outlives a stuck benchmark */
#define BACKLOG 4096               /* the kernel caps it at net.core.somaxconn */
#define SEED 20                    /* the PRNG's: every run picks the same connections */
#define FLOOD_BUFFERED (1 << 20)   /* bytes queued in the peer before a flood waits */
#define FLOOD_WRITE 8              /* flood events per write, whatever the spread */
#define FLOOD_BATCH 4096           /* events made between two looks at the epoll */
#define MAX_LINE (64 << 10)        /* a longer command line closes the connection */

static const char GREETING[] =
  "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "
  "\"package\": \"Debian 1:7.2+dfsg-7+deb12u6\"}, \"capabilities\": [\"oob\"]}}\r\n";

enum kind { LISTENER, CONTROL_LISTENER, MONITOR, CONTROL, TIMER };

typedef struct Conn {
  enum kind kind;
  int fd;                  /* -1 once closed */
  int negotiated;
  int watching_out;        /* registered for EPOLLOUT too */
  int unflushed;           /* flood events queued since the last write */
  char *in; size_t in_len, in_cap;     /* bytes read, not yet a whole line */
  char *out; size_t out_off, out_len, out_cap;  /* bytes not yet written */
} Conn;

static int epfd;
static Conn **monitors;    /* negotiated connections, in order; closed ones stay (fd -1) */
static size_t n_monitors, monitors_cap;
static Conn *control;      /* the control connection, NULL before it comes */
static Conn timer = { .kind = TIMER, .fd = -1 };
static size_t buffered;    /* bytes in every monitor's out buffer */
static const char **paths; /* the socket files bound, removed at exit */
static int n_paths;

static enum { IDLE, PACED, FLOOD } job = IDLE;
static long job_left, job_sent;           /* events still to make; made so far */
static size_t job_first, job_count;       /* the connections of the job */
static long long pace_ns, pace_next;      /* paced: the gap, the next event's due time */

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("fleet_peer: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  for (int i = 0; i < n_paths; i++) unlink(paths[i]);
  exit(1);
}

static void *grow(void *p, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return p;
  size_t cap2 = *cap ? *cap : 16;
  while (cap2 < need) cap2 *= 2;
  p = realloc(p, cap2 * size);
  if (p == NULL) die("out of memory");
  *cap = cap2;
  return p;
}

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* xorshift64*: fast, and the same sequence on every machine. */
static uint64_t rng_state = SEED * 0x9E3779B97F4A7C15ULL;
static uint64_t rng_next(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1DULL;
}

static void watch(Conn *c, uint32_t events, int op) {
  struct epoll_event ev = { .events = events, .data.ptr = c };
  if (epoll_ctl(epfd, op, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
}

/* Close a connection; its struct stays, for the epoll events already
** fetched and for the numbering of the negotiated ones. */
static void drop(Conn *c) {
  if (c->fd < 0) return;
  close(c->fd);
  c->fd = -1;
  if (c->kind == MONITOR) buffered -= c->out_len - c->out_off;
  free(c->in); free(c->out);
  c->in = c->out = NULL;
  c->in_len = c->in_cap = c->out_off = c->out_len = c->out_cap = 0;
  if (c == control) {  /* the driver is gone: so is the peer */
    for (int i = 0; i < n_paths; i++) unlink(paths[i]);
    exit(0);
  }
}

/* Write what the out buffer holds; watch for writability while some stays. */
static void flush(Conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) { drop(c); return; }  /* EPIPE, ECONNRESET: the client went away */
    c->out_off += (size_t)n;
    if (c->kind == MONITOR) buffered -= (size_t)n;
  }
  int rest = c->out_off < c->out_len;
  if (!rest) c->out_off = c->out_len = 0;
  if (rest != c->watching_out) {
    c->watching_out = rest;
    watch(c, rest ? EPOLLIN | EPOLLOUT : EPOLLIN, EPOLL_CTL_MOD);
  }
}

/* Queue text for c, to be written by flush(). */
static void queue(Conn *c, const char *text, size_t len) {
  c->out = grow(c->out, &c->out_cap, c->out_len + len, 1);
  memcpy(c->out + c->out_len, text, len);
  c->out_len += len;
  if (c->kind == MONITOR) buffered += len;
}

/* Queue text for c and write as much as the socket takes now. */
static void say(Conn *c, const char *text, size_t len) {
  if (c->fd < 0) return;
  int was_waiting = c->out_len > 0;
  queue(c, text, len);
  if (!was_waiting) flush(c);  /* else EPOLLOUT flushes it, in order */
}

static void reply(Conn *c, const char *fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  say(c, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* {==================== monitors */

/* The raw JSON value of the "id" member of a command line, or NULL:
** *len gets its length.  A string is taken with its escapes as they are. */
static const char *find_id(const char *line, size_t *len) {
  const char *p = strstr(line, "\"id\"");
  if (p == NULL) return NULL;
  p += 4;
  while (*p == ' ' || *p == '\t') p++;
  if (*p++ != ':') return NULL;
  while (*p == ' ' || *p == '\t') p++;
  const char *start = p;
  if (*p == '"') {
    for (p++; *p && *p != '"'; p++) if (*p == '\\' && p[1]) p++;
    if (*p != '"') return NULL;
    p++;
  } else {
    while (*p && *p != ',' && *p != '}' && *p != ' ') p++;
  }
  *len = (size_t)(p - start);
  return *len > 0 && *len < 200 ? start : NULL;
}

/* One command line: answer it; qmp_capabilities makes the connection negotiated. */
static void command(Conn *c, const char *line) {
  if (strstr(line, "\"execute\"") == NULL && strstr(line, "\"exec-oob\"") == NULL) return;
  if (!c->negotiated && strstr(line, "\"qmp_capabilities\"") != NULL) {
    c->negotiated = 1;
    monitors = grow(monitors, &monitors_cap, n_monitors + 1, sizeof *monitors);
    monitors[n_monitors++] = c;
  }
  size_t len;
  const char *id = find_id(line, &len);
  if (id != NULL) reply(c, "{\"return\": {}, \"id\": %.*s}\r\n", (int)len, id);
  else reply(c, "{\"return\": {}}\r\n");
}

static void control_line(char *line);

/* Read what is there and handle each whole line (commands are one line each). */
static void readable(Conn *c) {
  for (;;) {
    c->in = grow(c->in, &c->in_cap, c->in_len + 4096, 1);
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) { drop(c); return; }
    c->in_len += (size_t)n;
    size_t start = 0;
    for (size_t i = c->in_len - (size_t)n; i < c->in_len; i++) {
      if (c->in[i] != '\n') continue;
      c->in[i] = '\0';
      if (i > start && c->in[i - 1] == '\r') c->in[i - 1] = '\0';
      if (c->kind == CONTROL) control_line(c->in + start);
      else command(c, c->in + start);
      if (c->fd < 0) return;
      start = i + 1;
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    if (c->in_len > MAX_LINE) { drop(c); return; }
  }
}

static void accept_all(Conn *l) {
  for (;;) {
    int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      die("accept: %s (raise ulimit -n?)", strerror(errno));
    }
    Conn *c = calloc(1, sizeof *c);
    if (c == NULL) die("out of memory");
    c->fd = fd;
    if (l->kind == CONTROL_LISTENER) {
      if (control != NULL) { close(fd); free(c); continue; }  /* one driver at a time */
      c->kind = CONTROL;
      control = c;
      watch(c, EPOLLIN, EPOLL_CTL_ADD);
    } else {
      c->kind = MONITOR;
      watch(c, EPOLLIN, EPOLL_CTL_ADD);
      say(c, GREETING, sizeof GREETING - 1);
    }
  }
}

/* }==================== monitors */

/* {==================== jobs */

/* A negotiated, open connection of the job's range; NULL if it has none. */
static Conn *pick(size_t k) {
  for (size_t tries = 0; tries < job_count; tries++) {
    Conn *c = monitors[job_first + (k + tries) % job_count];
    if (c->fd >= 0) return c;
  }
  return NULL;
}

static void finish(void) {
  job = IDLE;
  reply(control, "done %ld\n", job_sent);
}

/* One event for c, stamped with the time it is made: written at once
** (paced), or queued for the flush at the end of a flood's batch. */
static void event(Conn *c, long seq, int kind, int now) {
  char line[512];
  long long t = now_ns();
  long long s = t / 1000000000LL, us = t % 1000000000LL / 1000;
  int n;
  switch (kind) {
    case 0:
      n = snprintf(line, sizeof line, "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %lld}, "
                   "\"event\": \"RTC_CHANGE\", \"data\": {\"offset\": %ld, "
                   "\"qom-path\": \"/machine/unattached/device[%ld]\"}}\r\n", s, us, seq % 7200, seq % 32);
      break;
    case 1:
      n = snprintf(line, sizeof line, "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %lld}, "
                   "\"event\": \"BLOCK_IO_ERROR\", \"data\": {\"device\": \"drive-virtio-disk%ld\", "
                   "\"nospace\": false, \"node-name\": \"#block%ld\", \"reason\": \"Input/output error\", "
                   "\"operation\": \"write\", \"action\": \"report\"}}\r\n", s, us, seq % 4, 100 + seq % 400);
      break;
    case 2:
      n = snprintf(line, sizeof line, "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %lld}, "
                   "\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": %lld}}\r\n",
                   s, us, (1LL << 30) - (seq % 256) * (1LL << 20));
      break;
    default:
      n = snprintf(line, sizeof line, "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %lld}, "
                   "\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"%s\", \"id\": \"backup%ld\"}}\r\n",
                   s, us, seq % 2 ? "running" : "ready", seq % 16);
      break;
  }
  if (now) say(c, line, (size_t)n);
  else queue(c, line, (size_t)n);
}

static void arm_timer(long long due) {
  struct itimerspec its = { .it_value = { .tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL } };
  if (timerfd_settime(timer.fd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime: %s", strerror(errno));
}

/* The timer fired: one paced event, and the next one's time (never in a burst to catch up). */
static void paced_tick(void) {
  uint64_t expirations;
  while (read(timer.fd, &expirations, sizeof expirations) < 0 && errno == EINTR) {}
  if (job != PACED) return;
  Conn *c = pick((size_t)(rng_next() % job_count));
  if (c == NULL) { reply(control, "error no connection left\n"); job = IDLE; return; }
  event(c, job_sent++, 0, 1);
  if (--job_left == 0) { finish(); return; }
  long long t = now_ns();
  pace_next += pace_ns;
  if (pace_next < t) pace_next = t;
  arm_timer(pace_next);
}

/* Make a batch of flood events while the peer's buffers have room.  A
** connection's events are written FLOOD_WRITE at a time, however many
** connections share the flood: one client and 500 then get the same writes
** (the kernel's cost per write is not the loop's to measure), and the peer
** still outruns the client (in a flood, the client is the bottleneck).
** What a full socket holds back goes when it drains.  The job is done once
** every event is made and written. */
static void flood_more(void) {
  static Conn **touched;
  static size_t touched_cap;
  size_t n_touched = 0;
  for (int made = 0; job_left > 0 && made < FLOOD_BATCH && buffered < FLOOD_BUFFERED; made++) {
    Conn *c = pick((size_t)job_sent % job_count);
    if (c == NULL) { reply(control, "error no connection left\n"); job = IDLE; return; }
    if (c->out_len == 0) {  /* not waiting for EPOLLOUT: flushed below */
      touched = grow(touched, &touched_cap, n_touched + 1, sizeof *touched);
      touched[n_touched++] = c;
    }
    event(c, job_sent, (int)(job_sent % 4), 0);
    if (++c->unflushed == FLOOD_WRITE) {
      c->unflushed = 0;
      if (!c->watching_out) flush(c);
    }
    job_sent++;
    job_left--;
  }
  for (size_t i = 0; i < n_touched; i++) if (touched[i]->fd >= 0) flush(touched[i]);
  if (job_left == 0 && buffered == 0) finish();
}

/* A range FIRST COUNT of the negotiated connections, checked. */
static int set_range(long first, long count) {
  if (first < 0 || count < 1 || (size_t)first + (size_t)count > n_monitors) {
    reply(control, "error connections %ld..%ld asked, %zu negotiated\n", first, first + count - 1, n_monitors);
    return 0;
  }
  job_first = (size_t)first;
  job_count = (size_t)count;
  return 1;
}

static void control_line(char *line) {
  long n, a, b = -1, c = -1;
  if (job != IDLE) { reply(control, "error busy\n"); return; }
  if (strcmp(line, "count") == 0) {
    reply(control, "%zu\n", n_monitors);
  } else if (sscanf(line, "paced %ld %ld %ld %ld", &n, &a, &b, &c) >= 2 && n > 0 && a >= 0) {
    if (!set_range(b < 0 ? 0 : b, c < 0 ? (long)n_monitors - (b < 0 ? 0 : b) : c)) return;
    job = PACED; job_left = n; job_sent = 0;
    pace_ns = a * 1000LL;
    pace_next = now_ns();
    arm_timer(pace_next);
  } else if (sscanf(line, "flood %ld %ld %ld", &n, &a, &b) >= 2 && n > 0) {
    if (!set_range(b < 0 ? 0 : b, a)) return;
    job = FLOOD; job_left = n; job_sent = 0;
    flood_more();
  } else {
    reply(control, "error unknown order: %.100s\n", line);
  }
}

/* }==================== jobs */

static int listen_on(const char *path) {
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof sa.sun_path) die("socket path too long: %s", path);
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind %s: %s", path, strerror(errno));
  paths[n_paths++] = path;
  if (listen(fd, BACKLOG) < 0) die("listen %s: %s", path, strerror(errno));
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fleet_peer CONTROL SOCKET [SOCKET ...]\n");
    return 64;
  }
  alarm(WATCHDOG);
  /* As many fds as allowed: one per monitor. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1: %s", strerror(errno));
  timer.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer.fd < 0) die("timerfd_create: %s", strerror(errno));
  watch(&timer, EPOLLIN, EPOLL_CTL_ADD);

  paths = calloc((size_t)argc, sizeof *paths);
  if (paths == NULL) die("out of memory");
  for (int i = 2; i < argc; i++) {
    Conn *l = calloc(1, sizeof *l);
    if (l == NULL) die("out of memory");
    l->kind = LISTENER;
    l->fd = listen_on(argv[i]);
    watch(l, EPOLLIN, EPOLL_CTL_ADD);
  }
  static Conn control_listener = { .kind = CONTROL_LISTENER, .fd = -1 };
  control_listener.fd = listen_on(argv[1]);
  watch(&control_listener, EPOLLIN, EPOLL_CTL_ADD);

  struct epoll_event ready[256];
  for (;;) {
    int timeout = job == FLOOD && job_left > 0 && buffered < FLOOD_BUFFERED ? 0 : -1;
    int n = epoll_wait(epfd, ready, 256, timeout);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
      Conn *c = ready[i].data.ptr;
      uint32_t ev = ready[i].events;
      if (c->kind == TIMER) { paced_tick(); continue; }
      if (c->kind == LISTENER || c->kind == CONTROL_LISTENER) { accept_all(c); continue; }
      if (c->fd < 0) continue;  /* closed earlier in this batch */
      if (ev & EPOLLOUT) flush(c);
      if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) readable(c);
    }
    if (job == FLOOD) flood_more();
  }
}
