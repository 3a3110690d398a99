/*
** spawn.c: child processes (QEMU) started with chosen fds, and their end.
**
** core.spawn(path, argv, fds [, opts]) forks and execs path (searched in
** PATH, in the parent, when it has no slash) with argv and this process's
** environment.  The child gets the qmp.Fd objects of fds at the numbers
** they are keyed by (0 to 31; 0, 1 and 2 when not given are /dev/null), in
** blocking mode, and nothing else this process had open.  Between fork and
** exec it calls only async-signal-safe functions: it puts itself in a
** process group of its own (a Ctrl-C at the terminal then reaches only the
** caller, which shuts QEMU down in order), asks to be killed when the
** thread that forked it ends (PR_SET_PDEATHSIG: a caller that dies leaves
** no QEMU behind), and resets every signal disposition and the signal
** mask.  A failure in the child (exec's included) comes back as an errno
** through a close-on-exec pipe that the parent reads until EOF (the exec
** succeeded) or a report (the child is reaped, spawn returns nil, err).
**
** The qmp.Process it returns owns the child: proc:pidfd() is readable once
** the child has exited (pidfd_open; -1 where the kernel has none), for a
** loop to poll; proc:poll() reaps it without waiting and proc:wait(timeout)
** with a bounded wait; the exit is kept once reaped, and a reaped pid is
** never signalled (its number may be someone else's by now).  proc:close()
** and __gc kill and reap a child still running.  No SIGCHLD handler is
** installed.
**
** World events return fail + { kind, message }: "launch" (the program is
** not found or cannot run, or the child's setup failed), "io" (no fd or
** process left).  Misuse raises.
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qmp.h"

#define QMP_PROCESS_MT "qmp.Process"

#if !defined(QMP_MAX_ARGS)
#define QMP_MAX_ARGS 65536        /* words in one argv */
#endif
#define MAX_TARGET 31             /* the highest fd number a child is given */
#define CLOSE_LOOP_MAX (1 << 20)  /* fds closed one by one where close_range is missing */
#define WAIT_STEP_MS 10           /* between looks at a child without a pidfd */
#define DEFAULT_PATH "/bin:/usr/bin"  /* execvp's, when PATH is unset */

enum {
  RUNNING,   /* not reaped (it may have exited: a zombie until reaped) */
  EXITED,    /* reaped; code is its exit status */
  SIGNALED,  /* reaped; code is the signal that killed it */
  LOST,      /* gone, reaped by someone else (SIGCHLD ignored, a wait(-1)) */
  UNBORN     /* never forked */
};

typedef struct Process {
  pid_t pid;     /* -1 until forked */
  int pidfd;     /* -1: none (no pidfd_open, or closed) */
  int state;     /* RUNNING, EXITED, ... */
  int code;      /* the exit status or the signal, once reaped */
  int core;      /* SIGNALED: it dumped core */
} Process;

/* Where the child's setup failed, as it reports it. */
enum { ST_EXEC, ST_SETPGID, ST_PDEATHSIG, ST_NULL, ST_DUP, ST_BLOCKING };
static const char *const STAGES[] = {
  "exec", "setpgid", "prctl", "open /dev/null", "dup", "fcntl"
};

typedef struct Report {
  int stage;     /* ST_* */
  int err;       /* errno */
} Report;

/* Everything the child needs, made before fork: it may not allocate. */
typedef struct Plan {
  const char *path;           /* the program */
  char **argv;                /* Lua-owned, NULL-terminated */
  int src[MAX_TARGET + 1];    /* the fd each child fd is copied from; -1 none */
  int top;                    /* the highest child fd given: 2 at least */
  pid_t parent;               /* getpid() before fork, for the PDEATHSIG check */
  int report;                 /* the report pipe's write end */
  int close_max;              /* the close loop's bound without close_range */
} Plan;

/* {====================================================== */
/* The child, between fork and exec: async-signal-safe calls only */

__attribute__((noreturn)) static void child_fail(int report, int stage) {
  Report r;
  r.stage = stage;
  r.err = errno;
  (void)!write(report, &r, sizeof r);  /* 8 bytes: atomic on a pipe */
  _exit(127);
}

/* Give signo its default disposition.  The raw system call, because the C
** library refuses the signals it keeps for itself (glibc's 32 and 33),
** whose being ignored would otherwise pass to the program; an all-zero
** kernel sigaction is SIG_DFL, no flags, empty mask on every architecture. */
static void default_disposition(int signo) {
#if defined(SYS_rt_sigaction)
  static const unsigned long zero[8];  /* more than any kernel sigaction */
  syscall(SYS_rt_sigaction, signo, zero, NULL, (size_t)(NSIG / 8));
#else
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(signo, &dfl, NULL);
#endif
}

/* Close fds lo..hi (hi ~0U: all above lo). */
static void close_fds(unsigned lo, unsigned hi, int max) {
  unsigned fd;
#if defined(SYS_close_range)
  if (syscall(SYS_close_range, lo, hi, 0) == 0) return;
#endif
  for (fd = lo; fd <= hi && fd < (unsigned)max; fd++) close((int)fd);
}

__attribute__((noreturn)) static void run_child(const Plan *p) {
  sigset_t none;
  int moved[MAX_TARGET + 1], report = p->report, null = -1, t, fl;
  /* The parent blocked every signal around fork: none of its handlers can
  ** run here before the dispositions are back to default. */
  for (t = 1; t < NSIG; t++) default_disposition(t);  /* KILL, STOP: EINVAL, harmless */
  if (setpgid(0, 0) < 0) child_fail(report, ST_SETPGID);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) child_fail(report, ST_PDEATHSIG);
  if (getppid() != p->parent) _exit(127);  /* it died before prctl: nobody to tell */
  /* Every fd to copy moves above the targets first, so that no dup2 can
  ** overwrite one that a later dup2 copies from. */
  if ((report = fcntl(report, F_DUPFD_CLOEXEC, p->top + 1)) < 0)
    child_fail(p->report, ST_DUP);
  for (t = 0; t <= p->top; t++)
    if (p->src[t] >= 0 && (moved[t] = fcntl(p->src[t], F_DUPFD_CLOEXEC, p->top + 1)) < 0)
      child_fail(report, ST_DUP);
  if (p->src[0] < 0 || p->src[1] < 0 || p->src[2] < 0) {
    if ((null = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0) child_fail(report, ST_NULL);
    if ((null = fcntl(null, F_DUPFD_CLOEXEC, p->top + 1)) < 0) child_fail(report, ST_DUP);
  }
  for (t = 0; t <= p->top; t++) {
    if (p->src[t] >= 0) {
      if (dup2(moved[t], t) < 0) child_fail(report, ST_DUP);  /* clears close-on-exec */
      /* The program expects blocking fds; the file description is shared,
      ** so the parent's copy (which it closes after spawn) blocks too. */
      if ((fl = fcntl(t, F_GETFL)) < 0 || fcntl(t, F_SETFL, fl & ~O_NONBLOCK) < 0)
        child_fail(report, ST_BLOCKING);
    } else if (t <= 2) {
      if (dup2(null, t) < 0) child_fail(report, ST_DUP);
    } else {
      close(t);
    }
  }
  /* Nothing else this process had open goes to the program (an fd without
  ** close-on-exec would): all above the targets but the report pipe close. */
  if (report > p->top + 1) close_fds((unsigned)p->top + 1, (unsigned)report - 1, p->close_max);
  close_fds((unsigned)report + 1, ~0U, p->close_max);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  execve(p->path, p->argv, environ);
  child_fail(report, ST_EXEC);
}

/* }====================================================== */

/* {====================================================== */
/* The parent's checks and preparations: all before fork */

static const char *check_program(lua_State *L, int idx) {
  size_t len;
  const char *name = luaL_checklstring(L, idx, &len);
  luaL_argcheck(L, len > 0, idx, "the program name is empty");
  luaL_argcheck(L, strlen(name) == len, idx, "the program name holds a NUL byte");
  return name;
}

/* Push a NULL-terminated copy of the list of strings at idx, as a userdata
** whose pointers go into the strings the list holds (alive while it is on
** the stack).  Raises on anything but a list of strings without NULs. */
static char **check_argv(lua_State *L, int idx) {
  lua_Unsigned n, i;
  char **argv;
  luaL_checktype(L, idx, LUA_TTABLE);
  n = lua_rawlen(L, idx);
  luaL_argcheck(L, n >= 1, idx, "argv must hold at least argv[1], the program's name");
  luaL_argcheck(L, n <= QMP_MAX_ARGS, idx, "too many arguments");
  argv = (char **)lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *argv, 0);
  for (i = 0; i < n; i++) {
    size_t len;
    if (lua_rawgeti(L, idx, (lua_Integer)i + 1) != LUA_TSTRING)
      luaL_argerror(L, idx, lua_pushfstring(L, "argv[%I] is not a string", (lua_Integer)i + 1));
    argv[i] = (char *)lua_tolstring(L, -1, &len);
    if (strlen(argv[i]) != len)
      luaL_argerror(L, idx, lua_pushfstring(L, "argv[%I] holds a NUL byte", (lua_Integer)i + 1));
    lua_pop(L, 1);
  }
  argv[n] = NULL;
  return argv;
}

/* Fill src from the table at idx, child fd number -> open qmp.Fd; returns
** the highest child fd to set up (2 at least: 0, 1, 2 always are).  Raises
** on a key that is no fd number 0..MAX_TARGET or a value no open qmp.Fd. */
static int check_fds(lua_State *L, int idx, int *src) {
  int t, top = 2;
  for (t = 0; t <= MAX_TARGET; t++) src[t] = -1;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {   /* key, value */
    lua_Integer k = lua_tointeger(L, -2);
    int fd;
    if (!lua_isinteger(L, -2) || k < 0 || k > MAX_TARGET)
      luaL_argerror(L, idx, "keys must be child fd numbers, 0 to 31");
    fd = qmp_fd_get(L, -1);
    if (fd == -2)
      luaL_argerror(L, idx, lua_pushfstring(L, "fds[%I] is not a qmp.Fd", k));
    if (fd < 0)
      luaL_argerror(L, idx, lua_pushfstring(L, "fds[%I] is closed", k));
    src[k] = fd;
    if (k > top) top = (int)k;
    lua_pop(L, 1);
  }
  return top;
}

/* No option is known yet: any key raises. */
static void check_opts(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  if (lua_next(L, idx) != 0)
    luaL_argerror(L, idx, lua_pushfstring(L, "unknown option %s", luaL_tolstring(L, -2, NULL)));
}

/* Look name up in PATH as execvp would (an empty entry is the current
** directory), into found (PATH_MAX bytes): 0, or ENOENT (nowhere) or
** EACCES (found, but not executable). */
static int search_path(const char *name, char *found) {
  const char *dirs = getenv("PATH"), *d, *end, *dir;
  size_t nlen = strlen(name), dlen;
  struct stat st;
  int err = ENOENT;
  if (dirs == NULL) dirs = DEFAULT_PATH;
  for (d = dirs; ; d = end + 1) {
    end = strchr(d, ':');
    if (end == NULL) end = d + strlen(d);
    dir = d;
    dlen = (size_t)(end - d);
    if (dlen == 0) {
      dir = ".";
      dlen = 1;
    }
    if (dlen + 1 + nlen < PATH_MAX) {
      memcpy(found, dir, dlen);
      found[dlen] = '/';
      memcpy(found + dlen + 1, name, nlen + 1);
      if (stat(found, &st) == 0 && S_ISREG(st.st_mode)) {
        if (access(found, X_OK) == 0) return 0;
        err = EACCES;
      }
    }
    if (*end == '\0') return err;
  }
}

/* How far the child's close loop goes where close_range is missing. */
static int close_bound(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY
      || rl.rlim_cur > CLOSE_LOOP_MAX)
    return CLOSE_LOOP_MAX;
  return (int)rl.rlim_cur;
}

static int open_pidfd(pid_t pid) {
#if defined(SYS_pidfd_open)
  long fd = syscall(SYS_pidfd_open, pid, 0);  /* close-on-exec, always */
  return fd < 0 ? -1 : (int)fd;
#else
  (void)pid;
  return -1;
#endif
}

/* }====================================================== */

/* {====================================================== */
/* qmp.Process */

static Process *toprocess(lua_State *L) {
  return (Process *)luaL_checkudata(L, 1, QMP_PROCESS_MT);
}

/* Push a new process that was never started (harmless first). */
static Process *process_new(lua_State *L) {
  Process *p = (Process *)lua_newuserdatauv(L, sizeof(Process), 0);
  p->pid = -1;
  p->pidfd = -1;
  p->state = UNBORN;
  p->code = p->core = 0;
  luaL_setmetatable(L, QMP_PROCESS_MT);
  return p;
}

/* Reap the child if it has exited (flags WNOHANG) or once it does (0):
** 1 when it is reaped (now or before), 0 while it runs.  Only once. */
static int reap(Process *p, int flags) {
  int st = 0;
  pid_t r;
  if (p->state != RUNNING) return 1;
  while ((r = waitpid(p->pid, &st, flags)) < 0 && errno == EINTR) {}
  if (r == 0) return 0;
  if (r < 0) {
    p->state = LOST;  /* ECHILD: reaped elsewhere, and gone */
  } else if (WIFEXITED(st)) {
    p->state = EXITED;
    p->code = WEXITSTATUS(st);
  } else if (WIFSIGNALED(st)) {
    p->state = SIGNALED;
    p->code = WTERMSIG(st);
    p->core = WCOREDUMP(st) != 0;
  } else {
    return 0;  /* stopped or continued: only reported to WUNTRACED waits */
  }
  return 1;
}

/* Push how the reaped child ended: { status = n }, { signal = n, core = b },
** or { lost = true } (someone else reaped it). */
static int push_exit(lua_State *L, const Process *p) {
  lua_createtable(L, 0, 2);
  if (p->state == EXITED) {
    lua_pushinteger(L, p->code);
    lua_setfield(L, -2, "status");
  } else if (p->state == SIGNALED) {
    lua_pushinteger(L, p->code);
    lua_setfield(L, -2, "signal");
    lua_pushboolean(L, p->core);
    lua_setfield(L, -2, "core");
  } else {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "lost");
  }
  return 1;
}

/* Kill and reap the child if it still runs (it dies at once: SIGKILL),
** then close the pidfd.  Idempotent. */
static void process_destroy(Process *p) {
  if (p->state == RUNNING) {
    kill(p->pid, SIGKILL);
    reap(p, 0);
  }
  if (p->pidfd >= 0) {
    close(p->pidfd);
    p->pidfd = -1;
  }
}

/* The signal named at idx ("TERM" or "SIGTERM", KILL, INT, HUP) or numbered. */
static int check_signal(lua_State *L, int idx) {
  static const struct { const char *name; int signo; } names[] = {
    {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT}, {"HUP", SIGHUP}, {NULL, 0}
  };
  const char *name;
  int i;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, idx);
    luaL_argcheck(L, n >= 0 && n < NSIG, idx, "not a signal number");
    return (int)n;
  }
  name = luaL_checkstring(L, idx);
  if (strncmp(name, "SIG", 3) == 0) name += 3;
  for (i = 0; names[i].name != NULL; i++)
    if (strcmp(names[i].name, name) == 0) return names[i].signo;
  return luaL_argerror(L, idx, lua_pushfstring(L, "no signal named %s "
                                              "(TERM, KILL, INT, HUP or a number)", name));
}

/* proc:pid() -> the child's pid */
static int process_pid(lua_State *L) {
  lua_pushinteger(L, toprocess(L)->pid);
  return 1;
}

/* proc:pidfd() -> an fd readable once the child has exited, owned by proc
** (open until proc:close()); -1 where the kernel has no pidfd, or closed. */
static int process_pidfd(lua_State *L) {
  lua_pushinteger(L, toprocess(L)->pidfd);
  return 1;
}

/* proc:poll() -> nil while the child runs, else how it ended (push_exit).
** Never waits. */
static int process_poll(lua_State *L) {
  Process *p = toprocess(L);
  if (!reap(p, WNOHANG)) return 0;
  return push_exit(L, p);
}

/*
** proc:wait([timeout]) -> how it ended | nil (the timeout passed) | nil, err.
** timeout: seconds, nil forever, 0 just look.  Waits on the pidfd, or in
** steps of WAIT_STEP_MS without one; as every wait of the core, against a
** CLOCK_MONOTONIC deadline, and a signal caught with core.catch_signals
** ends it with an "interrupted" error (signal.c).
*/
static int process_wait(lua_State *L) {
  Process *p = toprocess(L);
  double t = luaL_optnumber(L, 2, -1), deadline;
  struct pollfd fds[2];  /* the pidfd, the signal pipe */
  int r, ms, stepping = 0;  /* stepping: the pidfd cannot tell (said ready too early) */
  luaL_argcheck(L, !isnan(t), 2, "timeout must be a number");
  deadline = t < 0 ? HUGE_VAL : qmp_monotime() + t;
  for (;;) {
    if ((r = qmp_signal_interrupted(L))) return r;
    if (reap(p, WNOHANG)) return push_exit(L, p);
    if ((ms = qmp_poll_ms(deadline)) == 0) {
      lua_pushnil(L);
      return 1;
    }
    fds[0].fd = stepping ? -1 : p->pidfd;
    fds[0].events = POLLIN;
    fds[0].revents = 0;
    fds[1].fd = qmp_signal_fd();
    fds[1].events = POLLIN;
    fds[1].revents = 0;
    if (fds[0].fd < 0 && (ms < 0 || ms > WAIT_STEP_MS)) ms = WAIT_STEP_MS;
    r = poll(fds, 2, ms);
    if (r < 0 && errno != EINTR) return qmp_fail(L, "io", "poll: %s", strerror(errno));
    if (r > 0 && fds[1].revents != 0) qmp_signal_drain();
    if (r > 0 && fds[0].revents != 0 && !reap(p, WNOHANG)) stepping = 1;
  }
}

/* proc:kill(signal) -> true | false (already reaped: the pid may be
** someone else's by now) | nil, err.  signal: "TERM", "KILL", "INT", "HUP"
** or a number. */
static int process_kill(lua_State *L) {
  Process *p = toprocess(L);
  int signo = check_signal(L, 2);
  if (p->state != RUNNING) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (kill(p->pid, signo) < 0)
    return qmp_fail(L, "io", "kill %d: %s", (int)p->pid, strerror(errno));
  lua_pushboolean(L, 1);
  return 1;
}

/* proc:close(), __gc and __close: kill and reap the child if it still
** runs, close the pidfd.  Idempotent; poll and wait still tell the end. */
static int process_close(lua_State *L) {
  process_destroy(toprocess(L));
  return 0;
}

static int process_tostring(lua_State *L) {
  Process *p = toprocess(L);
  switch (p->state) {
    case RUNNING:
      lua_pushfstring(L, "qmp.Process (pid %d, running)", (int)p->pid);
      break;
    case EXITED:
      lua_pushfstring(L, "qmp.Process (pid %d, exited status %d)", (int)p->pid, p->code);
      break;
    case SIGNALED:
      lua_pushfstring(L, "qmp.Process (pid %d, killed by signal %d)", (int)p->pid, p->code);
      break;
    case LOST:
      lua_pushfstring(L, "qmp.Process (pid %d, reaped elsewhere)", (int)p->pid);
      break;
    default:
      lua_pushliteral(L, "qmp.Process (not started)");
  }
  return 1;
}

/* }====================================================== */

/*
** core.spawn(path, argv, fds [, opts]) -> proc | nil, err.  See the top of
** the file.  Every Lua value (the argv copy, the Process) is made before
** anything that needs undoing: nothing after the report pipe can raise.
*/
static int core_spawn(lua_State *L) {
  const char *name = check_program(L, 1);
  char found[PATH_MAX];
  Plan plan;
  Process *proc;
  sigset_t all, old;
  Report rep;
  ssize_t n;
  int pipefd[2], err;
  pid_t pid;
  lua_settop(L, 4);  /* what is pushed below goes above the arguments */
  plan.argv = check_argv(L, 2);
  plan.top = check_fds(L, 3, plan.src);
  check_opts(L, 4);
  proc = process_new(L);
  plan.path = name;
  if (strchr(name, '/') == NULL) {
    if ((err = search_path(name, found)) != 0)
      return qmp_fail(L, "launch", "cannot run %s: %s", name, strerror(err));
    plan.path = found;
  }
  plan.parent = getpid();
  plan.close_max = close_bound();
  if (pipe2(pipefd, O_CLOEXEC) < 0)
    return qmp_fail(L, "io", "cannot run %s: pipe: %s", name, strerror(errno));
  plan.report = pipefd[1];
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  pid = fork();
  if (pid == 0) run_child(&plan);
  err = errno;
  sigprocmask(SIG_SETMASK, &old, NULL);
  close(pipefd[1]);
  if (pid < 0) {
    close(pipefd[0]);
    return qmp_fail(L, "io", "cannot run %s: fork: %s", name, strerror(err));
  }
  proc->pid = pid;
  proc->state = RUNNING;
  while ((n = read(pipefd[0], &rep, sizeof rep)) < 0 && errno == EINTR) {}
  err = errno;
  close(pipefd[0]);
  if (n == 0) {  /* EOF: the exec closed the pipe */
    proc->pidfd = open_pidfd(pid);
    return 1;
  }
  if (n != (ssize_t)sizeof rep) {  /* cannot happen: end it all the same */
    process_destroy(proc);
    return qmp_fail(L, "io", "cannot run %s: reading the child's report: %s", name,
                    n < 0 ? strerror(err) : "short read");
  }
  reap(proc, 0);  /* it exits right after the report */
  if (rep.stage == ST_EXEC)
    return qmp_fail(L, "launch", "cannot run %s: %s", name, strerror(rep.err));
  return qmp_fail(L, "launch", "cannot run %s: %s: %s", name,
                  STAGES[rep.stage >= 0 && rep.stage <= ST_BLOCKING ? rep.stage : ST_EXEC],
                  strerror(rep.err));
}

void qmp_spawn_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"pid", process_pid},
    {"pidfd", process_pidfd},
    {"poll", process_poll},
    {"wait", process_wait},
    {"kill", process_kill},
    {"close", process_close},
    {NULL, NULL}
  };
  if (luaL_newmetatable(L, QMP_PROCESS_MT)) {
    lua_pushcfunction(L, process_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, process_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, process_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, core_spawn);
  lua_setfield(L, -2, "spawn");
}
