/*
** mux_peer SOCKET: the QMP peer of the mux flood benchmark (mux.lua), the
** upstream of a `qmp-lua mux`.
**
** It listens on SOCKET and serves one connection: greets as QEMU 7.2 does
** (offering oob) and answers every command line with {"return": {}} and
** the command's id.  The command x-flood, arguments {"rate": R, "seconds":
** S}, starts a flood once answered: R events a second for S seconds, made
** as the clock says they are due (checked every millisecond) and each
** written on its own, as QEMU writes an event.  An event is an RTC_CHANGE
** whose "offset" numbers it (1, 2, ...) and whose timestamp is the time it
** is made (CLOCK_REALTIME, as QEMU stamps events), so a client can tell
** what it missed and how late it came.  What the socket does not take is
** kept and written when it takes more: the peer never drops an event, and
** says at the end how far behind the reader let it fall.
** The peer exits when its connection closes (or after WATCHDOG seconds).
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

#define WATCHDOG 300          /* seconds: no peer outlives a stuck benchmark */
#define MAX_LINE (64 << 10)   /* a longer command line ends the connection */

static const char GREETING[] =
  "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "
  "\"package\": \"Debian 1:7.2+dfsg-7+deb12u6\"}, \"capabilities\": [\"oob\"]}}\r\n";

static const char *path;
static int fd = -1, epfd, watching_out;
static char in[MAX_LINE + 4096];
static size_t in_len;
static char *out;                       /* bytes the socket did not take yet */
static size_t out_off, out_len, out_cap, max_backlog;
static long rate, total, sent;          /* the flood: events a second, in all, made so far */
static double started;

static void die(const char *what) {
  fprintf(stderr, "mux_peer: %s: %s\n", what, strerror(errno));
  unlink(path);
  exit(1);
}

static double now(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void watch_out(int on) {
  struct epoll_event ev = { .events = EPOLLIN | (on ? EPOLLOUT : 0) };
  if (on == watching_out) return;
  watching_out = on;
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) < 0) die("epoll_ctl");
}

/* Write what is kept; 0 once the connection is gone. */
static int flush(void) {
  while (out_off < out_len) {
    ssize_t n = send(fd, out + out_off, out_len - out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) return 0;
    out_off += (size_t)n;
  }
  if (out_off == out_len) out_off = out_len = 0;
  watch_out(out_len > 0);
  return 1;
}

/* Write text now, as QEMU does one message a write; keep what the socket
** does not take (and everything after it, in order). */
static int say(const char *text, size_t len) {
  if (out_len == 0) {
    ssize_t n;
    while ((n = send(fd, text, len, MSG_NOSIGNAL | MSG_DONTWAIT)) < 0 && errno == EINTR) {}
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return 0;
    if (n > 0) { text += n; len -= (size_t)n; }
    if (len == 0) return 1;
  }
  if (out_len + len > out_cap) {
    out_cap = (out_len + len) * 2;
    out = realloc(out, out_cap);
    if (out == NULL) die("realloc");
  }
  memcpy(out + out_len, text, len);
  out_len += len;
  if (out_len - out_off > max_backlog) max_backlog = out_len - out_off;
  watch_out(1);
  return 1;
}

/* The number after "name": in line, or def. */
static long member(const char *line, const char *name, long def) {
  const char *p = strstr(line, name);
  if (p == NULL) return def;
  p = strchr(p + strlen(name), ':');
  return p ? strtol(p + 1, NULL, 10) : def;
}

/* One command line: answered with its id; x-flood starts the flood. */
static int command(const char *line) {
  char reply[512];
  const char *id = strstr(line, "\"id\"");
  int n;
  if (id != NULL) {
    const char *v = strchr(id + 4, ':') + 1, *end = v;
    while (*v == ' ') v++;
    if (*v == '"') { for (end = v + 1; *end && *end != '"'; end++) if (*end == '\\' && end[1]) end++; end++; }
    else for (end = v; *end && *end != ',' && *end != '}'; end++) {}
    n = snprintf(reply, sizeof reply, "{\"return\": {}, \"id\": %.*s}\r\n", (int)(end - v), v);
  } else {
    n = snprintf(reply, sizeof reply, "{\"return\": {}}\r\n");
  }
  if (!say(reply, (size_t)n)) return 0;
  if (strstr(line, "\"x-flood\"") != NULL) {
    rate = member(line, "\"rate\"", 50000);
    total = rate * member(line, "\"seconds\"", 10);
    sent = 0;
    started = now(CLOCK_MONOTONIC);
  }
  return 1;
}

/* Read and answer whole lines; 0 once the connection is gone. */
static int readable(void) {
  for (;;) {
    ssize_t n = recv(fd, in + in_len, sizeof in - in_len - 1, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 1;
    if (n <= 0) return 0;
    in_len += (size_t)n;
    size_t start = 0;
    for (size_t i = in_len - (size_t)n; i < in_len; i++) {
      if (in[i] != '\n') continue;
      in[i] = '\0';
      if (!command(in + start)) return 0;
      start = i + 1;
    }
    memmove(in, in + start, in_len - start);
    in_len -= start;
    if (in_len > MAX_LINE) return 0;
  }
}

/* The events due by now; 0 once the connection is gone. */
static int flood(void) {
  long due = (long)((now(CLOCK_MONOTONIC) - started) * (double)rate);
  if (due > total) due = total;
  while (sent < due) {
    char line[256];
    double t = now(CLOCK_REALTIME);
    long long s = (long long)t, us = (long long)((t - (double)s) * 1e6);
    int n = snprintf(line, sizeof line, "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %lld}, "
                     "\"event\": \"RTC_CHANGE\", \"data\": {\"offset\": %ld, "
                     "\"qom-path\": \"/machine/unattached/device[0]\"}}\r\n", s, us, ++sent);
    if (!say(line, (size_t)n)) return 0;
  }
  if (sent == total && total > 0) {
    fprintf(stderr, "mux_peer: flood: %ld events in %.3f s; the reader let it fall %zu bytes behind at most\n",
            sent, now(CLOCK_MONOTONIC) - started, max_backlog);
    total = 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct epoll_event ev = { .events = EPOLLIN };
  int lfd;
  if (argc != 2 || strlen(argv[1]) >= sizeof sa.sun_path) {
    fprintf(stderr, "usage: mux_peer SOCKET\n");
    return 64;
  }
  path = argv[1];
  alarm(WATCHDOG);
  strcpy(sa.sun_path, path);
  if ((lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) die("socket");
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
  if (listen(lfd, 1) < 0) die("listen");
  if ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) < 0) die("accept");
  close(lfd);
  unlink(path);
  if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
  if (!say(GREETING, sizeof GREETING - 1)) return 0;
  for (;;) {
    struct epoll_event ready;
    int n = epoll_wait(epfd, &ready, 1, total > 0 ? 1 : -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait");
    if (n == 1 && (ready.events & EPOLLOUT) && !flush()) break;
    if (n == 1 && (ready.events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !readable()) break;
    if (total > 0 && !flood()) break;
  }
  return 0;
}
