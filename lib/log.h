#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum log_level {
    LOG_LEVEL_ERROR,
    LOG_LEVEL_WARNING,
    LOG_LEVEL_INFO,
    LOG_LEVEL_DEBUG,
};

#define LOG_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

void log_set_level(enum log_level level);
/* When stderr is a pipe or socket (journald, a supervisor), never let it block us. */
void log_stderr_nonblocking(void);
int log_level_enabled(enum log_level level);
const char *log_level_name(enum log_level level);
int log_level_parse(const char *name, enum log_level *level);
/* Lines some enabled target could not take right away (each such line counts once). */
unsigned long log_dropped_lines(void);

/*
 * Targets: every line goes to each enabled one. stderr is on by default; a daemon turns
 * it off once it has detached.
 */
void log_use_stderr(bool on);
/*
 * Also send lines to /dev/log (RFC 3164 style, facility as in <syslog.h>, e.g.
 * LOG_DAEMON), never blocking: a full syslog drops the line. -1 with the reason in err
 * when /dev/log cannot be reached now; the target stays on regardless, dropping and
 * counting lines while retrying the connection at most once a second. Calling it again
 * changes the facility and reconnects.
 */
int log_open_syslog(int facility, char *err, size_t errsize);
void log_close_syslog(void);
/*
 * Append lines to path (created 0640). On success the previous log file is closed; on
 * failure it stays in use and err holds "PATH: reason". For start-up and SIGUSR1.
 */
int log_open_file(const char *path, char *err, size_t errsize);
/* The log file's fd (-1 if none). */
int log_file_fd(void);
/* Log to fd from now on (-1: no file), closing the previous one: a worker takes the fd
 * its master reopened. */
void log_adopt_file_fd(int fd);

void log_msg(enum log_level level, const char *fmt, ...) LOG_PRINTF(2, 3);
void log_vmsg(enum log_level level, const char *fmt, va_list ap) LOG_PRINTF(2, 0);
/* A record the operator asked for (the connection log): written whatever log-level says. */
void log_record(enum log_level level, const char *fmt, ...) LOG_PRINTF(2, 3);
/* The *_errno variants append ": strerror(errno)", like warn(3). */
void log_errno(enum log_level level, const char *fmt, ...) LOG_PRINTF(2, 3);
/* Appends OpenSSL's error queue (and empties it), like nginx's ngx_ssl_error. */
void log_ssl(enum log_level level, const char *fmt, ...) LOG_PRINTF(2, 3);
/* Empties OpenSSL's error queue into buf as "reason: reason"; returns buf. */
const char *log_ssl_reasons(char *buf, unsigned long size);

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_level_enabled(LOG_LEVEL_DEBUG))                                                    \
            log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                                                 \
    } while (0)

#endif
