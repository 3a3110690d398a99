/*
** mux_clients SOCKET N RATE SECONDS: the downstream clients of the mux
** flood benchmark (mux.lua), N QMP connections to a mux in one process.
**
** Each connection reads its greeting and negotiates; then the first one
** sends x-flood (mux_peer.c: RATE events a second for SECONDS), which the
** mux forwards upstream.  Every connection reads everything, as fast as it
** comes, counting the events (RTC_CHANGE, "offset" numbering them 1, 2,
** ...): one that comes out of turn is a gap (lost or reordered).  It ends
** once every connection has RATE * SECONDS events, one is cut, or SECONDS
** + 20 seconds pass, and prints, for the benchmark to read:
**   client K EVENTS GAPS          one line per connection
**   elapsed S                     from x-flood's reply to the last event
**   lag MEDIAN P99 MAX            seconds from an event's timestamp to its
**                                 reading (CLOCK_REALTIME), every event
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>

#define MAX_CLIENTS 64
#define BUF (1 << 20)
#define LAG_BUCKETS 100000    /* 10 µs each: up to 1 s; later ones go in the last */

typedef struct Client {
  int fd, open, negotiated;
  long events, gaps, next;    /* events read, out of turn, the offset expected */
  char *buf;
  size_t len;
} Client;

static Client clients[MAX_CLIENTS];
static long lag_count[LAG_BUCKETS];
static double lag_max;

static double now(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void send_all(int fd, const char *text) {
  size_t n = strlen(text), off = 0;
  while (off < n) {
    ssize_t w = send(fd, text + off, n - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) { perror("mux_clients: send"); exit(1); }
    off += (size_t)w;
  }
}

/* The number after "name": in line, or -1. */
static double member(const char *line, const char *name) {
  const char *p = strstr(line, name);
  if (p == NULL) return -1;
  p = strchr(p + strlen(name), ':');
  return p ? strtod(p + 1, NULL) : -1;
}

static double flood_started;

/* One line of client c. */
static void line(Client *c, int k, const char *text, double wall) {
  if (strstr(text, "\"event\"") != NULL) {
    long offset = (long)member(text, "\"offset\"");
    double stamp = member(text, "\"seconds\"") + member(text, "\"microseconds\"") / 1e6;
    double lag = wall - stamp;
    long b = lag < 0 ? 0 : (long)(lag * 1e5);
    if (b >= LAG_BUCKETS) b = LAG_BUCKETS - 1;
    lag_count[b]++;
    if (lag > lag_max) lag_max = lag;
    if (offset != c->next) c->gaps++;
    c->next = offset + 1;
    c->events++;
  } else if (strstr(text, "\"QMP\"") != NULL) {
    send_all(c->fd, "{\"execute\": \"qmp_capabilities\", \"id\": \"cap\"}\n");
  } else if (strstr(text, "\"cap\"") != NULL && strstr(text, "\"return\"") != NULL) {
    c->negotiated = 1;
  } else if (strstr(text, "\"flood\"") != NULL && strstr(text, "\"return\"") != NULL) {
    flood_started = now(CLOCK_MONOTONIC);
  } else {
    fprintf(stderr, "mux_clients: client %d: unexpected %s\n", k, text);
    exit(1);
  }
}

/* Read what is there; split it into lines. */
static void readable(Client *c, int k) {
  for (;;) {
    ssize_t n = recv(c->fd, c->buf + c->len, BUF - c->len - 1, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) { c->open = 0; close(c->fd); return; }
    double wall = now(CLOCK_REALTIME);
    c->len += (size_t)n;
    size_t start = 0;
    for (size_t i = c->len - (size_t)n; i < c->len; i++) {
      if (c->buf[i] != '\n') continue;
      c->buf[i] = '\0';
      line(c, k, c->buf + start, wall);
      start = i + 1;
    }
    memmove(c->buf, c->buf + start, c->len - start);
    c->len -= start;
    if (c->len >= BUF - 1) { fprintf(stderr, "mux_clients: line too long\n"); exit(1); }
  }
}

/* The lag below which share of the events came. */
static double lag_quantile(double share, long total) {
  long want = (long)(share * (double)total), seen = 0;
  for (long b = 0; b < LAG_BUCKETS; b++) {
    seen += lag_count[b];
    if (seen > want) return (double)(b + 1) / 1e5;
  }
  return lag_max;
}

int main(int argc, char **argv) {
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int n, epfd, asked = 0;
  long rate, seconds, want;
  double deadline, last = 0;
  if (argc != 5 || (n = atoi(argv[2])) < 1 || n > MAX_CLIENTS || strlen(argv[1]) >= sizeof sa.sun_path) {
    fprintf(stderr, "usage: mux_clients SOCKET N RATE SECONDS (N <= %d)\n", MAX_CLIENTS);
    return 64;
  }
  rate = atol(argv[3]);
  seconds = atol(argv[4]);
  want = rate * seconds;
  strcpy(sa.sun_path, argv[1]);
  if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) { perror("mux_clients: epoll_create1"); return 1; }
  for (int k = 0; k < n; k++) {
    Client *c = &clients[k];
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (unsigned)k };
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
      perror("mux_clients: connect");
      return 1;
    }
    c->open = 1;
    c->next = 1;
    c->buf = malloc(BUF);
    if (c->buf == NULL || epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) { perror("mux_clients"); return 1; }
  }
  deadline = now(CLOCK_MONOTONIC) + (double)seconds + 20;
  for (;;) {
    struct epoll_event ready[MAX_CLIENTS];
    int finished = 1, cut = 0, negotiated = 1;
    for (int k = 0; k < n; k++) {
      if (clients[k].events < want) finished = 0;
      if (!clients[k].open) cut = 1;   /* the mux cut it: the run is over */
      if (!clients[k].negotiated) negotiated = 0;
    }
    if (cut || (finished && asked)) break;
    if (negotiated && !asked) {
      char cmd[128];
      snprintf(cmd, sizeof cmd, "{\"execute\": \"x-flood\", \"arguments\": {\"rate\": %ld, \"seconds\": %ld}, "
               "\"id\": \"flood\"}\n", rate, seconds);
      send_all(clients[0].fd, cmd);
      asked = 1;
    }
    if (now(CLOCK_MONOTONIC) > deadline) { fprintf(stderr, "mux_clients: time is up\n"); break; }
    int m = epoll_wait(epfd, ready, MAX_CLIENTS, 1000);
    if (m < 0 && errno == EINTR) continue;
    if (m < 0) { perror("mux_clients: epoll_wait"); return 1; }
    for (int i = 0; i < m; i++) {
      Client *c = &clients[ready[i].data.u32];
      if (c->open) readable(c, (int)ready[i].data.u32);
    }
    if (m > 0) last = now(CLOCK_MONOTONIC);
  }
  long total = 0;
  for (int k = 0; k < n; k++) {
    printf("client %d %ld %ld\n", k + 1, clients[k].events, clients[k].gaps);
    total += clients[k].events;
  }
  printf("elapsed %.6f\n", flood_started > 0 ? last - flood_started : 0.0);
  printf("lag %.6f %.6f %.6f\n", lag_quantile(0.5, total), lag_quantile(0.99, total), lag_max);
  return 0;
}
