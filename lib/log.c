/*
 * Logging to stderr, a log file and syslog. Each line is one write(2) or send(2) per
 * target, so lines from concurrent writers (the master and its workers) never
 * interleave. A line that a target cannot take right now is dropped and counted: a slow
 * log consumer must never stall the event loop. That is also why syslog(3) is not used:
 * it may block on a full /dev/log.
 */
#include "config.h"

#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048
/* Room in front of "sluice[PID]: level: message" for the longest per-target header. */
#define LOG_HEAD_MAX 64
#define LOG_SYSLOG_PATH "/dev/log"
#define LOG_SYSLOG_RETRY_MS 1000

static enum log_level log_threshold = LOG_LEVEL_INFO;
static unsigned long log_dropped;

/* Logging is process-wide by nature (any function may log); its state lives here. */
static struct {
    bool use_stderr;
    int file_fd;
    bool syslog_on;
    int syslog_fd;
    int syslog_facility;
    int64_t syslog_attempt_ms;
} log_targets = {.use_stderr = true, .file_fd = -1, .syslog_fd = -1};

static const char *const log_level_names[] = {
    [LOG_LEVEL_ERROR] = "error",
    [LOG_LEVEL_WARNING] = "warning",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_DEBUG] = "debug",
};

void log_set_level(enum log_level level)
{
    log_threshold = level;
}

void log_stderr_nonblocking(void)
{
    struct stat st;
    int flags;

    /* A terminal or file is shared with whoever started us: leave its flags alone. */
    if (fstat(STDERR_FILENO, &st) < 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
        return;
    flags = fcntl(STDERR_FILENO, F_GETFL);
    if (flags >= 0 && !(flags & O_NONBLOCK) &&
        fcntl(STDERR_FILENO, F_SETFL, flags | O_NONBLOCK) < 0)
        log_errno(LOG_LEVEL_WARNING, "cannot make standard error nonblocking");
}

int log_level_enabled(enum log_level level)
{
    return level <= log_threshold;
}

const char *log_level_name(enum log_level level)
{
    return log_level_names[level];
}

int log_level_parse(const char *name, enum log_level *level)
{
    for (size_t i = 0; i < sizeof(log_level_names) / sizeof(log_level_names[0]); i++) {
        if (strcmp(name, log_level_names[i]) == 0) {
            *level = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

unsigned long log_dropped_lines(void)
{
    return log_dropped;
}

void log_use_stderr(bool on)
{
    log_targets.use_stderr = on;
}

int log_file_fd(void)
{
    return log_targets.file_fd;
}

void log_adopt_file_fd(int fd)
{
    /* close(2) may report EINTR or EIO, but the fd is gone either way: nothing to retry. */
    if (log_targets.file_fd >= 0 && log_targets.file_fd != fd)
        close(log_targets.file_fd);
    log_targets.file_fd = fd;
}

int log_open_file(const char *path, char *err, size_t errsize)
{
    int fd;

    /* O_NONBLOCK changes nothing for a regular file, but a FIFO must not stall us. */
    do
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0640);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        return -1;
    }
    log_adopt_file_fd(fd);
    return 0;
}

static int64_t log_now_ms(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* (Re)connect the syslog socket; connecting a datagram socket again just re-targets it. */
static int log_syslog_connect(void)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int rc;

    log_targets.syslog_attempt_ms = log_now_ms();
    if (log_targets.syslog_fd < 0) {
        log_targets.syslog_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (log_targets.syslog_fd < 0)
            return -1;
    }
    memcpy(sun.sun_path, LOG_SYSLOG_PATH, sizeof(LOG_SYSLOG_PATH));
    do
        rc = connect(log_targets.syslog_fd, (struct sockaddr *)&sun, sizeof(sun));
    while (rc < 0 && errno == EINTR);
    return rc;
}

int log_open_syslog(int facility, char *err, size_t errsize)
{
    log_targets.syslog_on = true;
    log_targets.syslog_facility = facility & LOG_FACMASK;
    /* Load the time zone now: a chrooted worker could not read it later. */
    tzset();
    if (log_syslog_connect() < 0) {
        snprintf(err, errsize, "%s: %s", LOG_SYSLOG_PATH, strerror(errno));
        return -1;
    }
    return 0;
}

void log_close_syslog(void)
{
    log_targets.syslog_on = false;
    if (log_targets.syslog_fd >= 0)
        close(log_targets.syslog_fd);
    log_targets.syslog_fd = -1;
}

/*
 * A restarted syslog daemon leaves our socket pointing at its dead predecessor
 * (ECONNREFUSED, then ENOTCONN): reconnect, but at most once a second, so a syslog that
 * stays away costs one connect(2) a second, not one per line.
 */
static bool log_syslog_reconnect(void)
{
    if (log_now_ms() - log_targets.syslog_attempt_ms < LOG_SYSLOG_RETRY_MS)
        return false;
    return log_syslog_connect() == 0;
}

static bool log_send_syslog(const char *msg, size_t len)
{
    for (;;) {
        if (log_targets.syslog_fd >= 0) {
            ssize_t n = send(log_targets.syslog_fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n == (ssize_t)len)
                return true;
            if (n >= 0)
                return false; /* a datagram is never sent in part; be safe anyway */
            if (errno == EINTR)
                continue;
            /* EAGAIN, ENOBUFS: syslog is behind, and we do not wait for it. */
            if (errno != ECONNREFUSED && errno != ENOTCONN)
                return false;
        }
        if (!log_syslog_reconnect())
            return false;
    }
}

static bool log_write_fd(int fd, const char *line, size_t len)
{
    for (;;) {
        ssize_t n = write(fd, line, len);
        if (n == (ssize_t)len)
            return true;
        if (n < 0 && errno == EINTR)
            continue;
        return false;
    }
}

static size_t log_clamp(int n, size_t size)
{
    return n < 0 ? 0 : (size_t)n >= size ? size - 1 : (size_t)n;
}

/*
 * Copies a target's header (at most LOG_HEAD_MAX bytes) right in front of the tag, so
 * each target's line is one contiguous buffer; returns where the line starts.
 */
static char *log_put_head(char *tag, const char *head, size_t len)
{
    memcpy(tag - len, head, len);
    return tag - len;
}

/* "2024-05-01T12:00:00.123Z ", UTC, for stderr and the log file. */
static char *log_file_head(char *tag, const struct timeval *tv)
{
    char head[LOG_HEAD_MAX], stamp[32];
    struct tm tm;

    gmtime_r(&tv->tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    int n = snprintf(head, sizeof(head), "%s.%03ldZ ", stamp, (long)tv->tv_usec / 1000);
    return log_put_head(tag, head, log_clamp(n, sizeof(head)));
}

/* "<PRI>May  1 14:00:00 ", local time, as RFC 3164 and every syslog daemon expect. */
static char *log_syslog_head(char *tag, const struct timeval *tv, enum log_level level)
{
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static const int severities[] = {
        [LOG_LEVEL_ERROR] = LOG_ERR,
        [LOG_LEVEL_WARNING] = LOG_WARNING,
        [LOG_LEVEL_INFO] = LOG_INFO,
        [LOG_LEVEL_DEBUG] = LOG_DEBUG,
    };
    char head[LOG_HEAD_MAX];
    struct tm tm;

    localtime_r(&tv->tv_sec, &tm);
    int n = snprintf(head, sizeof(head), "<%d>%s %2d %02d:%02d:%02d ",
                     log_targets.syslog_facility | severities[level], months[tm.tm_mon % 12],
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return log_put_head(tag, head, log_clamp(n, sizeof(head)));
}

/*
 * Formats "sluice[PID]: level: message" at tag; returns its length, newline excluded.
 * The pid is read for every line: workers are forked.
 */
static size_t log_format_tag(char *tag, size_t size, enum log_level level, const char *fmt,
                             va_list ap) LOG_PRINTF(4, 0);
static size_t log_format_tag(char *tag, size_t size, enum log_level level, const char *fmt,
                             va_list ap)
{
    size_t len = log_clamp(
        snprintf(tag, size, "sluice[%ld]: %s: ", (long)getpid(), log_level_names[level]), size);
    len += log_clamp(vsnprintf(tag + len, size - len, fmt, ap), size - len);
    return len;
}

static void log_emit(enum log_level level, const char *fmt, va_list ap) LOG_PRINTF(2, 0);
static void log_emit(enum log_level level, const char *fmt, va_list ap)
{
    char line[LOG_HEAD_MAX + LOG_LINE_MAX];
    char *tag = line + LOG_HEAD_MAX;
    struct timeval tv;
    bool all_sent = true;
    int saved = errno; /* callers may log between a failure and their use of errno */

    gettimeofday(&tv, NULL);
    /* One byte short of the buffer: room for the newline. */
    size_t len = log_format_tag(tag, LOG_LINE_MAX - 1, level, fmt, ap);
    tag[len] = '\n';
    if (log_targets.use_stderr || log_targets.file_fd >= 0) {
        char *head = log_file_head(tag, &tv);
        size_t total = (size_t)(tag - head) + len + 1;
        if (log_targets.use_stderr)
            all_sent &= log_write_fd(STDERR_FILENO, head, total);
        if (log_targets.file_fd >= 0)
            all_sent &= log_write_fd(log_targets.file_fd, head, total);
    }
    if (log_targets.syslog_on) {
        char *head = log_syslog_head(tag, &tv, level);
        all_sent &= log_send_syslog(head, (size_t)(tag - head) + len); /* no newline */
    }
    if (!all_sent)
        log_dropped++;
    errno = saved;
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    if (log_level_enabled(level))
        log_emit(level, fmt, ap);
}

void log_record(enum log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_emit(level, fmt, ap);
    va_end(ap);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

void log_errno(enum log_level level, const char *fmt, ...)
{
    char msg[LOG_LINE_MAX];
    int saved = errno;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_msg(level, "%s: %s", msg, strerror(saved));
    errno = saved;
}

const char *log_ssl_reasons(char *buf, unsigned long size)
{
    unsigned long code;
    const char *data;
    int flags;
    size_t used = 0;

    buf[0] = '\0';
    while ((code = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        const char *reason = ERR_reason_error_string(code);
        char fallback[32];

        if (reason == NULL) {
            snprintf(fallback, sizeof(fallback), "error %#lx", code);
            reason = fallback;
        }
        if (used + 3 >= size)
            continue; /* keep draining: stale errors would confuse the next caller */
        /* The detail a caller attached, such as the file or name it was about. */
        bool detail = (flags & ERR_TXT_STRING) && data != NULL && data[0] != '\0';
        int n = snprintf(buf + used, size - used, "%s%s%s%s%s", used ? ": " : "", reason,
                         detail ? " (" : "", detail ? data : "", detail ? ")" : "");
        if (n > 0)
            used = (size_t)n >= size - used ? size - 1 : used + (size_t)n;
    }
    if (used == 0)
        snprintf(buf, size, "%s", "no OpenSSL error reported");
    return buf;
}

void log_ssl(enum log_level level, const char *fmt, ...)
{
    char msg[LOG_LINE_MAX], reasons[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_msg(level, "%s: %s", msg, log_ssl_reasons(reasons, sizeof(reasons)));
}
