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

/* Appends "key=" and the value; the pair is dropped whole if it does not fit. */
static void logfmt_put(struct logfmt *f, const char *key, const char *value, size_t len)
{
    const unsigned char *v = (const unsigned char *)value;
    size_t start = f->len, used = f->len;
    bool bare = logfmt_bare(v, len);
    char piece[5];

    if (f->cut)
        return;
    int n =
        snprintf(f->buf + used, f->size - used, "%s%s=%s", used ? " " : "", key, bare ? "" : "\"");
    if (n < 0 || (size_t)n >= f->size - used)
        goto cut;
    used += (size_t)n;
    for (size_t i = 0; i < len; i++) {
        size_t plen = bare ? (piece[0] = (char)v[i], 1) : logfmt_escape(v[i], piece);
        if (plen + 2 > f->size - used) /* room for the closing quote and the NUL */
            goto cut;
        memcpy(f->buf + used, piece, plen);
        used += plen;
    }
    if (!bare)
        f->buf[used++] = '"';
    f->buf[used] = '\0';
    f->len = used;
    return;
cut:
    f->buf[start] = '\0';
    f->len = start;
    f->cut = true;
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
