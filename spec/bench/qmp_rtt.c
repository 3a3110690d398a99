/*
** qmp_rtt SOCKET N: the minimal C QMP client of the round-trip benchmark.
** Connects to a QMP unix socket, reads the greeting, negotiates, then runs
** N query-status round trips (write the command; block in read() until the
** reply's newline, skipping any event line) and prints the wall time of
** the N round trips in seconds (CLOCK_MONOTONIC).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static char buf[1 << 16];
static size_t have;  /* bytes in buf */

/* Read one line (through its '\n') into line; exits on EOF or error. */
static void read_line(int fd, char *line, size_t cap) {
  for (;;) {
    char *nl = memchr(buf, '\n', have);
    if (nl != NULL) {
      size_t n = (size_t)(nl - buf) + 1;
      size_t copy = n < cap - 1 ? n : cap - 1;
      memcpy(line, buf, copy);
      line[copy] = '\0';
      memmove(buf, buf + n, have - n);
      have -= n;
      return;
    }
    if (have == sizeof buf) { fprintf(stderr, "qmp_rtt: line too long\n"); exit(1); }
    ssize_t r = read(fd, buf + have, sizeof buf - have);
    if (r <= 0) { fprintf(stderr, "qmp_rtt: connection closed\n"); exit(1); }
    have += (size_t)r;
  }
}

/* Read lines until a reply (a line with "return" or "error"); events are skipped. */
static void read_reply(int fd) {
  char line[4096];
  for (;;) {
    read_line(fd, line, sizeof line);
    if (strstr(line, "\"return\"") != NULL) return;
    if (strstr(line, "\"error\"") != NULL) { fprintf(stderr, "qmp_rtt: %s", line); exit(1); }
  }
}

static void send_all(int fd, const char *text) {
  size_t n = strlen(text), off = 0;
  while (off < n) {
    ssize_t w = write(fd, text + off, n - off);
    if (w <= 0) { perror("qmp_rtt: write"); exit(1); }
    off += (size_t)w;
  }
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  struct sockaddr_un sa;
  char line[4096], cmd[128];
  int fd, i, n;
  double t0;
  if (argc != 3) { fprintf(stderr, "usage: qmp_rtt SOCKET N\n"); return 64; }
  n = atoi(argv[2]);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("qmp_rtt: connect"); return 1; }
  read_line(fd, line, sizeof line);  /* the greeting */
  send_all(fd, "{\"execute\": \"qmp_capabilities\"}\n");
  read_reply(fd);
  t0 = now();
  for (i = 1; i <= n; i++) {
    snprintf(cmd, sizeof cmd, "{\"execute\": \"query-status\", \"id\": %d}\n", i);
    send_all(fd, cmd);
    read_reply(fd);
  }
  printf("%.9f\n", now() - t0);
  close(fd);
  return 0;
}
