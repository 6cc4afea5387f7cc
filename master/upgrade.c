/*
 * USR2: the old master's side (start the new binary, watch it, hand over or report why
 * not) and the new master's side (take what the environment hands over).
 *
 * The environment variable holds descriptor numbers only, e.g.
 * "ready=5 stderr=7 pidfile=3 detached=1 listen=8/0,9/1" (listen: fd/slot).
 */
#include "config.h"

#include "master/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/log.h"
#include "master/daemon.h"
#include "master/master.h"
#include "master/supervise.h"

#define UPGRADE_ENV "SLUICE_UPGRADE"
/* Past its own start deadline the new master gives up by itself; this is the backstop. */
#define UPGRADE_DEADLINE_FACTOR 2
#define UPGRADE_DEADLINE_SLACK 10.0
#define UPGRADE_EXEC_FAILED 127

static char *upgrade_absolute(const char *path)
{
    char *abs = realpath(path, NULL);

    return abs != NULL ? abs : strdup(path);
}

int upgrade_init(struct upgrade *up, const char *config, const char *mode_flag, char *err,
                 size_t errsize)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

    *up = (struct upgrade){.ready_fd = -1, .output_fd = -1};
    if (n > 0) {
        exe[n] = '\0';
        up->exe = strdup(exe);
    }
    up->argv = calloc(5, sizeof(*up->argv));
    char *abs_config = upgrade_absolute(config);
    if (up->argv == NULL || abs_config == NULL || (n > 0 && up->exe == NULL)) {
        snprintf(err, errsize, "out of memory");
        free(abs_config);
        upgrade_free(up);
        return -1;
    }
    up->argv[0] = (char *)up->exe;
    up->argv[1] = (char *)"-f";
    up->argv[2] = abs_config;
    up->argv[3] = (char *)mode_flag;
    return 0;
}

void upgrade_free(struct upgrade *up)
{
    if (up->argv != NULL)
        free(up->argv[2]);
    free(up->argv);
    free((char *)up->exe);
    up->argv = NULL;
    up->exe = NULL;
}

const char *upgrade_config_path(const struct upgrade *up)
{
    return up->argv[2];
}

bool upgrade_running(const struct upgrade *up)
{
    return up->pid > 0;
}

/* --- the old master ----------------------------------------------------------------- */

/* Why USR2 cannot start an upgrade, or NULL. */
static const char *upgrade_refusal(const struct master *m, char *buf, size_t size)
{
    const struct upgrade *up = &m->upgrade;

    if (m->shutting_down)
        return "shutting down";
    if (up->pid > 0)
        snprintf(buf, size, "an upgrade is in progress (new master pid %ld)", (long)up->pid);
    else if (up->exe == NULL)
        snprintf(buf, size,
                 "the path of the running binary is unknown (/proc/self/exe was "
                 "unreadable at start)");
    else
        return NULL;
    return buf;
}

/* One generation must serve alone: a new master inherits one set of sockets. */
static bool upgrade_must_wait(struct master *m)
{
    if (m->old == NULL && m->current->announced)
        return false;
    if (!m->upgrade.pending)
        log_info("SIGUSR2: upgrade deferred until generation %u serves alone", m->current->id);
    m->upgrade.pending = true;
    return true;
}

void upgrade_run_pending(struct master *m)
{
    if (!m->upgrade.pending || m->shutting_down || m->old != NULL || !m->current->announced)
        return;
    m->upgrade.pending = false;
    upgrade_start(m);
}

static int upgrade_set_cloexec(int fd, bool on)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags < 0)
        return -1;
    return fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC);
}

/* "ready=R stderr=E pidfile=P detached=D listen=FD/SLOT,...": malloc'd, or NULL. */
static char *upgrade_env_value(const struct master *m, int ready_fd, int stderr_fd)
{
    size_t size = 96 + m->sockets.n * 24;
    char *env = malloc(size);

    if (env == NULL)
        return NULL;
    int len = snprintf(env, size, "ready=%d stderr=%d pidfile=%d detached=%d listen=", ready_fd,
                       stderr_fd, m->pidfile_fd, daemon_is_detached() ? 1 : 0);
    for (size_t i = 0; i < m->sockets.n && len > 0 && (size_t)len < size; i++)
        len += snprintf(env + len, size - (size_t)len, "%s%d/%u", i ? "," : "", m->sockets.v[i].fd,
                        m->sockets.v[i].slot);
    return env;
}

static const int upgrade_master_signals[] = {SIGHUP,  SIGTERM, SIGINT, SIGQUIT,
                                             SIGUSR1, SIGUSR2, SIGCHLD};

static void upgrade_default_signals(void)
{
    for (size_t i = 0; i < sizeof(upgrade_master_signals) / sizeof(upgrade_master_signals[0]); i++)
        if (signal(upgrade_master_signals[i], SIG_DFL) == SIG_ERR)
            _exit(UPGRADE_EXEC_FAILED);
}

/* The forked child: become the new binary with the descriptors it inherits. */
static void __attribute__((noreturn)) upgrade_exec(struct master *m, int ready_fd, int output_fd)
{
    const struct upgrade *up = &m->upgrade;
    sigset_t none;

    /*
     * The master's handlers would take a TERM meant for the new master and wake the old
     * master's loop with it: until exec, signals do what they do to any process. They
     * were blocked across the fork, so none slipped through to those handlers.
     */
    upgrade_default_signals();
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        dprintf(output_fd, "sluice: upgrade: sigprocmask: %s\n", strerror(errno));
    int stderr_fd = fcntl(STDERR_FILENO, F_DUPFD, 3); /* F_DUPFD: inherited by exec */
    char *env = upgrade_env_value(m, ready_fd, stderr_fd);
    bool handed = stderr_fd >= 0 && env != NULL && upgrade_set_cloexec(ready_fd, false) == 0 &&
                  (m->pidfile_fd < 0 || upgrade_set_cloexec(m->pidfile_fd, false) == 0) &&
                  setenv(UPGRADE_ENV, env, 1) == 0;
    for (size_t i = 0; handed && i < m->sockets.n; i++)
        handed = upgrade_set_cloexec(m->sockets.v[i].fd, false) == 0;
    if (handed && dup2(output_fd, STDERR_FILENO) == STDERR_FILENO)
        execv(up->exe, up->argv);
    /* stderr is the pipe the old master reads, unless dup2 failed: then it is the log's. */
    dprintf(STDERR_FILENO, "sluice: cannot execute %s: %s\n", up->exe, strerror(errno));
    _exit(UPGRADE_EXEC_FAILED);
}

static void upgrade_close(struct master *m)
{
    struct upgrade *up = &m->upgrade;

    ev_io_stop(m->loop, &up->ready_io);
    ev_io_stop(m->loop, &up->output_io);
    ev_timer_stop(m->loop, &up->deadline);
    if (up->ready_fd >= 0)
        close(up->ready_fd);
    if (up->output_fd >= 0)
        close(up->output_fd);
    up->ready_fd = up->output_fd = -1;
}

/* Keep the tail of what the new master printed: its error is the last thing it says. */
static void upgrade_read_output(struct upgrade *up)
{
    char buf[512];
    ssize_t n;

    while (up->output_fd >= 0) {
        n = read(up->output_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            close(up->output_fd);
            up->output_fd = -1;
            return;
        }
        size_t room = sizeof(up->output) - 1;
        size_t take = (size_t)n > room ? room : (size_t)n;
        if (up->output_len + take > room) {
            size_t drop = up->output_len + take - room;
            memmove(up->output, up->output + drop, up->output_len - drop);
            up->output_len -= drop;
        }
        memcpy(up->output + up->output_len, buf + (size_t)n - take, take);
        up->output_len += take;
    }
}

static void upgrade_output_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct master *m = io->data;

    (void)revents;
    upgrade_read_output(&m->upgrade);
    if (m->upgrade.output_fd < 0)
        ev_io_stop(loop, io);
}

/* The output as one log line: lines joined by "; ", control characters made visible. */
static const char *upgrade_output_line(struct upgrade *up)
{
    size_t len = up->output_len;

    while (len > 0 && (up->output[len - 1] == '\n' || up->output[len - 1] == '\r'))
        len--;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)up->output[i];
        if (c == '\n')
            up->output[i] = ';';
        else if (c < 0x20 || c == 0x7f)
            up->output[i] = '?';
    }
    up->output[len] = '\0';
    return up->output;
}

static void upgrade_report_failure(struct master *m, int status)
{
    struct upgrade *up = &m->upgrade;
    char how[96];

    upgrade_read_output(up); /* what it wrote just before it exited */
    if (WIFSIGNALED(status))
        snprintf(how, sizeof(how), "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(status));
    const char *said = upgrade_output_line(up);
    log_error("upgrade failed: %s (pid %ld) %s%s%s; this master (generation %u) keeps serving",
              up->exe, (long)up->pid, how, said[0] ? ": " : "", said, m->current->id);
}

static void upgrade_forget(struct master *m)
{
    upgrade_close(m);
    m->upgrade.pid = 0;
    m->upgrade.reaped = false;
    m->upgrade.output_len = 0;
}

/* The new master serves: its pidfile and stats file are published. Drain and go. */
static void upgrade_hand_over(struct master *m)
{
    log_info("upgrade: new master (pid %ld) serves; draining", (long)m->upgrade.pid);
    upgrade_forget(m);
    m->pidfile_owned = false;
    supervise_hand_over(m);
}

static void upgrade_ready_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct master *m = io->data;
    char c = 0;
    ssize_t n;

    (void)revents;
    do
        n = read(io->fd, &c, 1);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n == 1 && c == 'R') {
        upgrade_hand_over(m);
        return;
    }
    /* Closed without 'R': it is dying; its exit status says how (upgrade_reaped). */
    ev_io_stop(loop, io);
    close(m->upgrade.ready_fd);
    m->upgrade.ready_fd = -1;
}

static void upgrade_deadline_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct master *m = timer->data;

    (void)loop;
    (void)revents;
    log_error("upgrade: new master (pid %ld) does not serve within %.0fs: killing it",
              (long)m->upgrade.pid, m->upgrade.deadline_s);
    if (kill(m->upgrade.pid, SIGKILL) < 0 && errno != ESRCH)
        log_errno(LOG_LEVEL_ERROR, "kill %ld", (long)m->upgrade.pid);
}

static void upgrade_watch(struct master *m, int ready_fd, int output_fd)
{
    struct upgrade *up = &m->upgrade;

    up->deadline_s = UPGRADE_DEADLINE_FACTOR * supervise_start_deadline(m->current->conf) +
                     UPGRADE_DEADLINE_SLACK;
    up->ready_fd = ready_fd;
    up->output_fd = output_fd;
    if (fcntl(ready_fd, F_SETFL, O_NONBLOCK) < 0 || fcntl(output_fd, F_SETFL, O_NONBLOCK) < 0)
        log_errno(LOG_LEVEL_WARNING, "upgrade: cannot make the channel non-blocking");
    ev_io_init(&up->ready_io, upgrade_ready_cb, ready_fd, EV_READ);
    ev_io_init(&up->output_io, upgrade_output_cb, output_fd, EV_READ);
    ev_timer_init(&up->deadline, upgrade_deadline_cb, up->deadline_s, 0);
    up->ready_io.data = up->output_io.data = up->deadline.data = m;
    ev_io_start(m->loop, &up->ready_io);
    ev_io_start(m->loop, &up->output_io);
    ev_timer_start(m->loop, &up->deadline);
}

void upgrade_start(struct master *m)
{
    struct upgrade *up = &m->upgrade;
    char why[160];
    int channel[2], output[2];

    const char *refusal = upgrade_refusal(m, why, sizeof(why));
    if (refusal != NULL) {
        log_warning("SIGUSR2 ignored: %s", refusal);
        return;
    }
    if (upgrade_must_wait(m))
        return;
    log_info("SIGUSR2: upgrading to %s", up->exe);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel) < 0) {
        log_errno(LOG_LEVEL_ERROR, "upgrade failed: socketpair");
        return;
    }
    if (pipe2(output, O_CLOEXEC) < 0) {
        log_errno(LOG_LEVEL_ERROR, "upgrade failed: pipe");
        close(channel[0]);
        close(channel[1]);
        return;
    }
    fflush(stdout);
    fflush(stderr);
    sigset_t all, saved;
    sigfillset(&all);
    if (sigprocmask(SIG_BLOCK, &all, &saved) < 0)
        log_errno(LOG_LEVEL_WARNING, "upgrade: sigprocmask");
    pid_t pid = fork();
    if (pid == 0)
        upgrade_exec(m, channel[1], output[1]);
    if (sigprocmask(SIG_SETMASK, &saved, NULL) < 0)
        log_errno(LOG_LEVEL_WARNING, "upgrade: sigprocmask");
    close(channel[1]);
    close(output[1]);
    if (pid < 0) {
        log_errno(LOG_LEVEL_ERROR, "upgrade failed: fork");
        close(channel[0]);
        close(output[0]);
        return;
    }
    up->pid = pid;
    upgrade_watch(m, channel[0], output[0]);
}

bool upgrade_reaped(struct master *m, pid_t pid, int status)
{
    if (pid != m->upgrade.pid || pid <= 0)
        return false;
    if (m->shutting_down)
        log_info("upgrade: new master (pid %ld) stopped", (long)pid);
    else
        upgrade_report_failure(m, status);
    upgrade_forget(m);
    return true;
}

void upgrade_abort(struct master *m, int sig)
{
    pid_t pid = m->upgrade.pid;

    if (pid <= 0)
        return;
    log_info("upgrade abandoned: stopping the new master (pid %ld)", (long)pid);
    if (kill(pid, sig) < 0 && errno != ESRCH)
        log_errno(LOG_LEVEL_ERROR, "kill %ld", (long)pid);
}

void upgrade_close_in_child(struct upgrade *up)
{
    if (up->ready_fd >= 0)
        close(up->ready_fd);
    if (up->output_fd >= 0)
        close(up->output_fd);
    up->ready_fd = up->output_fd = -1;
}

/* --- the new master ----------------------------------------------------------------- */

/* A descriptor number from the environment that is open in this process. */
static int upgrade_parse_fd(const char *text, char **end)
{
    errno = 0;
    long fd = strtol(text, end, 10);
    if (errno != 0 || *end == text || fd < 0 || fd > INT_MAX || fcntl((int)fd, F_GETFD) < 0)
        return -1;
    /* Back to what every descriptor of ours is: not for our workers' exec. */
    if (upgrade_set_cloexec((int)fd, true) < 0)
        return -1;
    return (int)fd;
}

static int upgrade_parse_listeners(struct master *m, char *list, char *err, size_t errsize)
{
    char *end;

    while (*list != '\0') {
        int fd = upgrade_parse_fd(list, &end);
        if (fd < 0 || *end != '/') {
            snprintf(err, errsize, UPGRADE_ENV ": bad listener \"%s\"", list);
            return -1;
        }
        list = end + 1;
        errno = 0;
        unsigned long slot = strtoul(list, &end, 10);
        if (errno != 0 || end == list || slot > UINT_MAX || (*end != ',' && *end != '\0')) {
            snprintf(err, errsize, UPGRADE_ENV ": bad slot in \"%s\"", list);
            return -1;
        }
        if (listen_inherit(&m->sockets, fd, (unsigned)slot, err, errsize) < 0)
            return -1;
        list = *end == ',' ? end + 1 : end;
    }
    return 0;
}

static int upgrade_parse_item(struct master *m, struct upgrade_inheritance *in, char *item,
                              char *err, size_t errsize)
{
    char *value = strchr(item, '='), *end = NULL;
    int fd = -1;

    if (value == NULL) {
        snprintf(err, errsize, UPGRADE_ENV ": \"%s\" is not KEY=VALUE", item);
        return -1;
    }
    *value++ = '\0';
    if (strcmp(item, "listen") == 0)
        return upgrade_parse_listeners(m, value, err, errsize);
    if (strcmp(item, "detached") == 0) {
        in->detached = strcmp(value, "1") == 0;
        return 0;
    }
    bool none = strcmp(value, "-1") == 0; /* no pidfile */
    if (!none && ((fd = upgrade_parse_fd(value, &end)) < 0 || *end != '\0')) {
        snprintf(err, errsize, UPGRADE_ENV ": %s=%s is not an open descriptor", item, value);
        return -1;
    }
    if (strcmp(item, "ready") == 0)
        in->ready_fd = fd;
    else if (strcmp(item, "stderr") == 0)
        in->stderr_fd = fd;
    else if (strcmp(item, "pidfile") == 0)
        in->pidfile_fd = fd;
    else {
        snprintf(err, errsize, UPGRADE_ENV ": unknown key \"%s\"", item);
        return -1;
    }
    return 0;
}

int upgrade_inherit(struct master *m, struct upgrade_inheritance *in, char *err, size_t errsize)
{
    const char *env = getenv(UPGRADE_ENV);
    char *save = NULL;

    *in = (struct upgrade_inheritance){.ready_fd = -1, .stderr_fd = -1, .pidfile_fd = -1};
    if (env == NULL)
        return 0;
    char *copy = strdup(env);
    if (copy == NULL || unsetenv(UPGRADE_ENV) < 0) {
        snprintf(err, errsize, UPGRADE_ENV ": %s", strerror(errno));
        free(copy);
        return -1;
    }
    int rc = 0;
    for (char *item = strtok_r(copy, " ", &save); item != NULL && rc == 0;
         item = strtok_r(NULL, " ", &save))
        rc = upgrade_parse_item(m, in, item, err, errsize);
    free(copy);
    if (rc == 0 && (in->ready_fd < 0 || in->stderr_fd < 0)) {
        snprintf(err, errsize, UPGRADE_ENV ": no readiness channel or stderr");
        rc = -1;
    }
    in->active = rc == 0;
    return rc;
}
