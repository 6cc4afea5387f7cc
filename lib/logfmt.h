#ifndef SLUICE_LOGFMT_H
#define SLUICE_LOGFMT_H

/*
 * One logfmt record (key=value pairs separated by spaces) built into a caller's buffer.
 * Values come from clients (SNI, ALPN) and from OpenSSL: anything but plain printable
 * ASCII is quoted and escaped, so a hostile value can neither forge a key nor break
 * the line. A value is cut to LOGFMT_VALUE_MAX characters (ending in "...") so the
 * record's later keys keep their place; a record that still does not fit ends before
 * the first pair that did not.
 */
#include <stdbool.h>
#include <stddef.h>

#define LOGFMT_VALUE_MAX 260 /* a DNS name of 253 printable bytes fits whole */

struct logfmt {
    char *buf;
    size_t size, len;
    bool cut;
};

void logfmt_init(struct logfmt *f, char *buf, size_t size);
/* NULL or empty values are written as "-", the usual "none" of access logs. */
void logfmt_str(struct logfmt *f, const char *key, const char *value);
/* A value of len bytes that need not end in NUL (ALPN, as OpenSSL hands it over). */
void logfmt_mem(struct logfmt *f, const char *key, const char *value, size_t len);
void logfmt_uint(struct logfmt *f, const char *key, unsigned long long value);
void logfmt_millis(struct logfmt *f, const char *key, double ms);
void logfmt_bool(struct logfmt *f, const char *key, int value);

#endif
