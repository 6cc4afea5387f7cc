/*
 * Detaching with a readiness handshake, so that an init script's "start" fails when
 * sluice fails: the foreground process waits on a channel until the daemon says it
 * serves ('R'), and sees EOF instead when the daemon dies first. Errors found before
 * that still reach the terminal, because the daemon keeps stderr until it is ready.
 */
#include "config.h"

#include "master/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"

#define DAEMON_EXIT_FAILED 2
/* How long the foreground process waits to reap a daemon that closed the channel. */
#define DAEMON_REAP_TRIES 100
#define DAEMON_REAP_STEP_NS 10000000L

/* Set in the daemon; workers inherit them. */
static int daemon_fd = -1;
static pid_t daemon_pid;
static bool daemon_detached;
/* A new master of a binary upgrade: the stderr it gives back once ready, else -1. */
static int daemon_stderr_fd = -1;

int daemon_pipe_fd(void)
{
    return daemon_fd;
}

bool daemon_is_detached(void)
{
    return daemon_detached;
}

/*
 * The daemon closed the channel without 'R'. An exit with an error status has already
 * been explained on stderr; a signal or a clean exit has not, so say it.
 */
static void daemon_explain_death(pid_t child)
{
    const struct timespec step = {0, DAEMON_REAP_STEP_NS};
    int status;

    for (int i = 0; i < DAEMON_REAP_TRIES; i++) {
        pid_t pid = waitpid(child, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            return;
        if (pid == child && WIFSIGNALED(status))
            fprintf(stderr,
                    "sluice: daemon (pid %ld) killed by signal %d (%s) before it was ready\n",
                    (long)child, WTERMSIG(status), strsignal(WTERMSIG(status)));
        if (pid == child && WIFEXITED(status) && WEXITSTATUS(status) == 0)
            fprintf(stderr, "sluice: daemon (pid %ld) exited before it was ready\n", (long)child);
        if (pid == child)
            return;
        nanosleep(&step, NULL);
    }
}

/* The foreground process: exit with what the daemon reports. _exit: the daemon owns
 * everything the two share (atexit handlers, stdio buffers already flushed). */
__attribute__((noreturn)) static void daemon_wait_ready(int fd, pid_t child)
{
    char c = 0;
    ssize_t n;

    do
        n = read(fd, &c, 1);
    while (n < 0 && errno == EINTR);
    if (n == 1 && c == 'R')
        _exit(0);
    if (n < 0)
        fprintf(stderr, "sluice: waiting for the daemon to be ready: %s\n", strerror(errno));
    else
        daemon_explain_death(child);
    _exit(DAEMON_EXIT_FAILED);
}

static int daemon_redirect(int from, int to)
{
    int rc;

    do
        rc = dup2(from, to);
    while (rc < 0 && errno == EINTR);
    return rc;
}

static int daemon_setup_child(char *err, size_t errsize)
{
    int fd;

    if (setsid() < 0) {
        snprintf(err, errsize, "setsid: %s", strerror(errno));
        return -1;
    }
    if (chdir("/") < 0) {
        snprintf(err, errsize, "chdir /: %s", strerror(errno));
        return -1;
    }
    umask(027);
    do
        fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        snprintf(err, errsize, "/dev/null: %s", strerror(errno));
        return -1;
    }
    /* dup2 clears close-on-exec on the copy, as a standard stream should be. */
    if (fd != STDIN_FILENO && daemon_redirect(fd, STDIN_FILENO) < 0) {
        snprintf(err, errsize, "dup2 /dev/null: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (fd != STDIN_FILENO)
        close(fd);
    return 0;
}

int daemon_detach(char *err, size_t errsize)
{
    int sv[2];

    /* A socket rather than a pipe: send(MSG_NOSIGNAL) survives a caller killed by ^C. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(err, errsize, "socketpair: %s", strerror(errno));
        return -1;
    }
    /* Or the daemon writes out again what the foreground process had buffered. */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errsize, "fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid > 0) {
        close(sv[1]);
        daemon_wait_ready(sv[0], pid);
    }
    close(sv[0]);
    daemon_fd = sv[1];
    daemon_pid = getpid();
    daemon_detached = true;
    return daemon_setup_child(err, errsize);
}

void daemon_adopt_channel(int ready_fd, int stderr_fd, bool detached)
{
    daemon_fd = ready_fd;
    daemon_pid = getpid();
    daemon_stderr_fd = stderr_fd;
    daemon_detached = detached;
}

/* The previous master's stderr replaces the channel to it (a pipe it stops reading). */
static void daemon_restore_stderr(void)
{
    fflush(stderr);
    if (daemon_redirect(daemon_stderr_fd, STDERR_FILENO) < 0)
        log_errno(LOG_LEVEL_WARNING, "cannot restore standard error");
    close(daemon_stderr_fd);
    daemon_stderr_fd = -1;
}

void daemon_quiet(void)
{
    if (daemon_stderr_fd >= 0)
        daemon_restore_stderr();
    if (!daemon_detached)
        return;
    log_use_stderr(false);
    fflush(stdout);
    fflush(stderr);
    if (daemon_redirect(STDIN_FILENO, STDOUT_FILENO) < 0 ||
        daemon_redirect(STDIN_FILENO, STDERR_FILENO) < 0)
        log_errno(LOG_LEVEL_WARNING, "cannot redirect standard output to /dev/null");
}

void daemon_ready(void)
{
    ssize_t n;

    if (daemon_fd < 0 || getpid() != daemon_pid)
        return;
    do
        n = send(daemon_fd, "R", 1, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    /* The foreground process may be gone (killed by ^C): we serve regardless. */
    if (n != 1)
        log_errno(LOG_LEVEL_WARNING, "cannot tell the starting process that we are ready");
    close(daemon_fd);
    daemon_fd = -1;
    daemon_quiet();
}
