/*
 * Logging to stderr, one line per write(2) so lines from concurrent writers never
 * interleave. A line that cannot be written right now is dropped and counted: a slow
 * log consumer must never stall the event loop.
 */
#include "config.h"

#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048

static enum log_level log_threshold = LOG_LEVEL_INFO;
static unsigned long log_dropped;

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

static size_t log_prefix(char *buf, size_t size, enum log_level level)
{
    struct timeval tv;
    struct tm tm;
    char stamp[32];

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    int n = snprintf(buf, size, "%s.%03ldZ sluice[%ld]: %s: ", stamp, (long)tv.tv_usec / 1000,
                     (long)getpid(), log_level_names[level]);
    return n < 0 ? 0 : (size_t)n >= size ? size - 1 : (size_t)n;
}

static void log_write_line(char *line, size_t len)
{
    if (len >= LOG_LINE_MAX - 1)
        len = LOG_LINE_MAX - 2;
    line[len++] = '\n';
    for (;;) {
        ssize_t n = write(STDERR_FILENO, line, len);
        if (n == (ssize_t)len)
            return;
        if (n < 0 && errno == EINTR)
            continue;
        log_dropped++;
        return;
    }
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];

    if (!log_level_enabled(level))
        return;
    size_t len = log_prefix(line, sizeof(line), level);
    int n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
    if (n > 0)
        len += (size_t)n;
    log_write_line(line, len);
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
    size_t used = 0;

    buf[0] = '\0';
    while ((code = ERR_get_error()) != 0) {
        const char *reason = ERR_reason_error_string(code);
        char fallback[32];

        if (reason == NULL) {
            snprintf(fallback, sizeof(fallback), "error %#lx", code);
            reason = fallback;
        }
        if (used + 3 >= size)
            continue; /* keep draining: stale errors would confuse the next caller */
        int n = snprintf(buf + used, size - used, "%s%s", used ? ": " : "", reason);
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
