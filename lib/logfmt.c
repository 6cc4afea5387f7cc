/*
 * logfmt records: keys are ours and plain; values are escaped as Go's logfmt and
 * Grafana Loki read them (quotes, backslash escapes, \xHH for other bytes).
 */
#include "config.h"

#include "lib/logfmt.h"

#include <stdio.h>
#include <string.h>

void logfmt_init(struct logfmt *f, char *buf, size_t size)
{
    f->buf = buf;
    f->size = size;
    f->len = 0;
    f->cut = size == 0;
    if (size > 0)
        buf[0] = '\0';
}

static bool logfmt_bare(const unsigned char *value, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (value[i] <= ' ' || value[i] >= 0x7f || value[i] == '"' || value[i] == '=' ||
            value[i] == '\\')
            return false;
    return len > 0;
}

/* The escaped form of one byte inside quotes; returns its length. */
static size_t logfmt_escape(unsigned char ch, char out[5])
{
    switch (ch) {
    case '"':
    case '\\':
        out[0] = '\\';
        out[1] = (char)ch;
        return 2;
    case '\n':
        memcpy(out, "\\n", 2);
        return 2;
    case '\r':
        memcpy(out, "\\r", 2);
        return 2;
    case '\t':
        memcpy(out, "\\t", 2);
        return 2;
    default:
        break;
    }
    if (ch < ' ' || ch >= 0x7f) {
        snprintf(out, 5, "\\x%02x", ch);
        return 4;
    }
    out[0] = (char)ch;
    return 1;
}

/* Escaped value bytes into dst (room for at most LOGFMT_VALUE_MAX + 1); its length. */
static size_t logfmt_value(char *dst, const unsigned char *v, size_t len, bool bare)
{
    size_t used = 0;
    char piece[5];

    for (size_t i = 0; i < len; i++) {
        size_t plen = bare ? (piece[0] = (char)v[i], 1) : logfmt_escape(v[i], piece);
        if (used + plen > LOGFMT_VALUE_MAX - 3) {
            memcpy(dst + used, "...", 3); /* cut, and saying so */
            return used + 3;
        }
        memcpy(dst + used, piece, plen);
        used += plen;
    }
    return used;
}

/*
 * Appends "key=" and the value, cut to LOGFMT_VALUE_MAX characters so that one long
 * value cannot crowd out the keys after it; a pair that still does not fit ends the
 * record.
 */
static void logfmt_put(struct logfmt *f, const char *key, const char *value, size_t len)
{
    const unsigned char *v = (const unsigned char *)value;
    bool bare = logfmt_bare(v, len);
    char escaped[LOGFMT_VALUE_MAX + 1];

    if (f->cut)
        return;
    size_t vlen = logfmt_value(escaped, v, len, bare);
    int n = snprintf(f->buf + f->len, f->size - f->len, "%s%s=%s%.*s%s", f->len ? " " : "", key,
                     bare ? "" : "\"", (int)vlen, escaped, bare ? "" : "\"");
    if (n < 0 || (size_t)n >= f->size - f->len) {
        f->buf[f->len] = '\0';
        f->cut = true;
        return;
    }
    f->len += (size_t)n;
}

void logfmt_mem(struct logfmt *f, const char *key, const char *value, size_t len)
{
    if (value == NULL || len == 0)
        logfmt_put(f, key, "-", 1);
    else
        logfmt_put(f, key, value, len);
}

void logfmt_str(struct logfmt *f, const char *key, const char *value)
{
    logfmt_mem(f, key, value, value != NULL ? strlen(value) : 0);
}

void logfmt_uint(struct logfmt *f, const char *key, unsigned long long value)
{
    char text[24];

    snprintf(text, sizeof(text), "%llu", value);
    logfmt_put(f, key, text, strlen(text));
}

void logfmt_millis(struct logfmt *f, const char *key, double ms)
{
    char text[32];

    snprintf(text, sizeof(text), "%.3f", ms);
    logfmt_put(f, key, text, strlen(text));
}

void logfmt_bool(struct logfmt *f, const char *key, int value)
{
    logfmt_str(f, key, value ? "true" : "false");
}
