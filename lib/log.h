#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdarg.h>

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
unsigned long log_dropped_lines(void);

void log_msg(enum log_level level, const char *fmt, ...) LOG_PRINTF(2, 3);
void log_vmsg(enum log_level level, const char *fmt, va_list ap) LOG_PRINTF(2, 0);
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
