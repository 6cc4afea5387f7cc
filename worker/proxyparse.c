/*
 * The PROXY protocol header a load balancer sends before the client's bytes, parsed from
 * what has arrived so far. The reader must never take a byte past the header (the TLS
 * ClientHello follows in the same segment), so every answer says how far it may read:
 * a v2 header's length is known from its 16th byte, a v1 line ends at its CRLF.
 * Everything is checked as strictly as proxy-protocol.txt words it; the first
 * violation ends the parse with a message naming it.
 */
#include "config.h"

#include "worker/proxyparse.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define V1_PREFIX "PROXY "
#define V1_PREFIX_LEN (sizeof(V1_PREFIX) - 1)
#define V1_FIELD_MAX 48 /* longer than any address or port; also what an error quotes */

#define V2_VERSION 2
#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_FAM_UNSPEC 0x00
#define V2_FAM_TCP4 0x11
#define V2_FAM_TCP6 0x21
#define V2_FAM_UNIX_STREAM 0x31
#define V2_ADDRS_TCP4 12  /* two IPv4 addresses and two ports */
#define V2_ADDRS_TCP6 36  /* two IPv6 addresses and two ports */
#define V2_ADDRS_UNIX 216 /* two 108-byte paths */
#define V2_TLV_HEADER 3   /* type, 16-bit length */

static const unsigned char v2_signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                               0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static void fail(struct proxyparse_result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(struct proxyparse_result *r, const char *fmt, ...)
{
    va_list ap;

    r->status = PROXYPARSE_ERROR;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof(r->error), fmt, ap);
    va_end(ap);
}

static void need_more(struct proxyparse_result *r, size_t more, size_t certain)
{
    r->status = PROXYPARSE_NEED_MORE;
    r->more = more;
    r->certain = certain;
}

static void done(struct proxyparse_result *r, size_t len)
{
    r->status = PROXYPARSE_DONE;
    r->len = len;
}

/* "starts with 16 03 01 02": what a header that is none looks like, for the log. */
static void fail_not_proxy(struct proxyparse_result *r, const unsigned char *p, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    char hex[4 * 3] = "";
    size_t n = len < 4 ? len : 4;

    /* cppcheck-suppress knownConditionTrueFalse ; 2.10 wrongly takes len as 0 here */
    for (size_t i = 0; i < n; i++) {
        hex[3 * i] = digits[p[i] >> 4];
        hex[3 * i + 1] = digits[p[i] & 0x0f];
        /* cppcheck-suppress knownConditionTrueFalse ; as above */
        hex[3 * i + 2] = i + 1 < n ? ' ' : '\0';
    }
    fail(r, "not a PROXY header: starts with %s", hex);
}

/* --- version 1: "PROXY TCP4 192.0.2.1 198.51.100.1 51234 443\r\n" ------------------- */

/* A field as the error quotes it: printable ASCII, others as '?', cut to V1_FIELD_MAX. */
static void v1_quote(char *out, size_t size, const char *field, size_t len)
{
    size_t n = len < size - 1 ? len : size - 1;

    for (size_t i = 0; i < n; i++)
        out[i] = (char)(field[i] >= 0x20 && field[i] < 0x7f ? field[i] : '?');
    out[n] = '\0';
}

static void v1_fail_field(struct proxyparse_result *r, const char *what, const char *field,
                          size_t len)
{
    char quoted[V1_FIELD_MAX + 1];

    v1_quote(quoted, sizeof(quoted), field, len);
    fail(r, "PROXY v1: bad %s '%s'%s", what, quoted, len > V1_FIELD_MAX ? "..." : "");
}

/* Cut the next field off *pos: up to a space (taken too) or the end of the line. */
static size_t v1_field(const char **pos, const char *end, const char **field)
{
    const char *sp = memchr(*pos, ' ', (size_t)(end - *pos));
    size_t len = (size_t)((sp != NULL ? sp : end) - *pos);

    *field = *pos;
    *pos = sp != NULL ? sp + 1 : end;
    return len;
}

/* An address of family in its canonical form; inet_pton refuses leading zeroes in IPv4. */
static bool v1_addr(int family, const char *field, size_t len, struct sockaddr_storage *ss)
{
    char text[V1_FIELD_MAX + 1];

    if (len == 0 || len > V1_FIELD_MAX || memchr(field, '\0', len) != NULL)
        return false;
    memcpy(text, field, len);
    text[len] = '\0';
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        return inet_pton(AF_INET, text, &sin->sin_addr) == 1;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    return inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1;
}

/* A decimal 0..65535 without sign or leading zeroes. */
static bool v1_port(const char *field, size_t len, struct sockaddr_storage *ss)
{
    unsigned long v = 0;

    if (len == 0 || len > 5 || (len > 1 && field[0] == '0'))
        return false;
    for (size_t i = 0; i < len; i++) {
        if (field[i] < '0' || field[i] > '9')
            return false;
        v = v * 10 + (unsigned long)(field[i] - '0');
    }
    if (v > 65535)
        return false;
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)v);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)v);
    return true;
}

/* The line without its CRLF, known to start with "PROXY ". */
static void v1_line(const char *line, size_t len, struct proxyparse_result *r)
{
    const char *pos = line + V1_PREFIX_LEN, *end = line + len, *f;
    size_t flen = v1_field(&pos, end, &f);
    int family;

    if (flen == 7 && memcmp(f, "UNKNOWN", 7) == 0) {
        /* The spec: whatever follows UNKNOWN up to the CRLF is to be ignored. */
        r->local = true;
        done(r, len + 2);
        return;
    }
    if (flen == 4 && memcmp(f, "TCP4", 4) == 0) {
        family = AF_INET;
    } else if (flen == 4 && memcmp(f, "TCP6", 4) == 0) {
        family = AF_INET6;
    } else {
        v1_fail_field(r, "protocol", f, flen);
        return;
    }
    static const char *const what[] = {"source address", "destination address", "source port",
                                       "destination port"};
    for (int i = 0; i < 4; i++) {
        if (pos == end && (i == 0 || pos[-1] != ' ')) {
            fail(r, "PROXY v1: %s missing", what[i]);
            return;
        }
        flen = v1_field(&pos, end, &f);
        bool ok = i < 2 ? v1_addr(family, f, flen, i == 0 ? &r->src : &r->dst)
                        : v1_port(f, flen, i == 2 ? &r->src : &r->dst);
        if (!ok) {
            v1_fail_field(r, what[i], f, flen);
            return;
        }
        if (i == 3 && pos[-1] == ' ') {
            fail(r, "PROXY v1: bytes after the destination port");
            return;
        }
    }
    done(r, len + 2);
}

static void v1_parse(const unsigned char *p, size_t len, struct proxyparse_result *r)
{
    size_t prefix = len < V1_PREFIX_LEN ? len : V1_PREFIX_LEN;

    r->version = 1;
    if (memcmp(p, V1_PREFIX, prefix) != 0) {
        fail_not_proxy(r, p, len);
        return;
    }
    /* The CR may be at most at PROXYPARSE_V1_MAX - 2, its LF right after it. */
    size_t scan = len < PROXYPARSE_V1_MAX - 1 ? len : PROXYPARSE_V1_MAX - 1;
    size_t cr = 0;
    /* cppcheck-suppress knownConditionTrueFalse ; 2.10 wrongly takes len as 0 here */
    while (cr < scan && p[cr] != '\r') {
        if (p[cr] == '\n') {
            fail(r, "PROXY v1: line feed without carriage return");
            return;
        }
        cr++;
    }
    if (cr == scan) {
        if (len >= PROXYPARSE_V1_MAX - 1)
            fail(r, "PROXY v1: no CRLF within %d bytes", PROXYPARSE_V1_MAX);
        else
            need_more(r, PROXYPARSE_V1_MAX - len, 0);
        return;
    }
    if (cr + 1 == len) {
        need_more(r, 1, 1); /* the LF, and nothing after it */
        return;
    }
    if (p[cr + 1] != '\n') {
        fail(r, "PROXY v1: carriage return without line feed");
        return;
    }
    v1_line((const char *)p, cr, r);
}

/* --- version 2: signature, version and command, family, length, addresses, TLVs ----- */

static unsigned v2_length(const unsigned char *p)
{
    return (unsigned)p[14] << 8 | p[15];
}

static unsigned v2_port(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static void v2_inet(const unsigned char *a, struct proxyparse_result *r)
{
    struct sockaddr_in *src = (struct sockaddr_in *)&r->src, *dst = (struct sockaddr_in *)&r->dst;

    src->sin_family = dst->sin_family = AF_INET;
    memcpy(&src->sin_addr, a, 4);
    memcpy(&dst->sin_addr, a + 4, 4);
    src->sin_port = htons((uint16_t)v2_port(a + 8));
    dst->sin_port = htons((uint16_t)v2_port(a + 10));
}

static void v2_inet6(const unsigned char *a, struct proxyparse_result *r)
{
    struct sockaddr_in6 *src = (struct sockaddr_in6 *)&r->src;
    struct sockaddr_in6 *dst = (struct sockaddr_in6 *)&r->dst;

    src->sin6_family = dst->sin6_family = AF_INET6;
    memcpy(&src->sin6_addr, a, 16);
    memcpy(&dst->sin6_addr, a + 16, 16);
    src->sin6_port = htons((uint16_t)v2_port(a + 32));
    dst->sin6_port = htons((uint16_t)v2_port(a + 34));
}

/* The TLVs after the addresses are skipped, not trusted; they must fill the block exactly. */
static bool v2_tlvs(const unsigned char *p, size_t len, struct proxyparse_result *r)
{
    size_t at = 0;

    while (at < len) {
        if (len - at < V2_TLV_HEADER) {
            fail(r, "PROXY v2: %zu stray bytes after the last TLV", len - at);
            return false;
        }
        size_t vlen = (size_t)p[at + 1] << 8 | p[at + 2];
        if (vlen > len - at - V2_TLV_HEADER) {
            fail(r, "PROXY v2: TLV 0x%02x of %zu bytes runs past the header", p[at], vlen);
            return false;
        }
        at += V2_TLV_HEADER + vlen;
    }
    return true;
}

/* The whole header is in: p[16..16+len) holds the address block and the TLVs. */
static void v2_body(const unsigned char *p, size_t len, struct proxyparse_result *r)
{
    const unsigned char *a = p + PROXYPARSE_V2_FIXED;
    size_t need;

    /* LOCAL (a balancer's own health check): the spec says ignore the block, family too. */
    if ((p[12] & 0x0f) == V2_CMD_LOCAL || p[13] == V2_FAM_UNSPEC) {
        r->local = true;
        done(r, PROXYPARSE_V2_FIXED + len);
        return;
    }
    switch (p[13]) {
    case V2_FAM_TCP4:
        need = V2_ADDRS_TCP4;
        break;
    case V2_FAM_TCP6:
        need = V2_ADDRS_TCP6;
        break;
    default: /* V2_FAM_UNIX_STREAM, the only other family v2_fixed lets through */
        need = V2_ADDRS_UNIX;
        r->local = true;
        break;
    }
    if (len < need) {
        fail(r, "PROXY v2: %zu bytes cannot hold the addresses of family 0x%02x (%zu bytes)", len,
             p[13], need);
        return;
    }
    if (!v2_tlvs(a + need, len - need, r))
        return;
    if (p[13] == V2_FAM_TCP4)
        v2_inet(a, r);
    else if (p[13] == V2_FAM_TCP6)
        v2_inet6(a, r);
    done(r, PROXYPARSE_V2_FIXED + len);
}

/* Bytes 12..15, each checked as soon as it is in, so a bad header fails before its body. */
static bool v2_fixed(const unsigned char *p, size_t len, struct proxyparse_result *r)
{
    if (len > 12 && p[12] >> 4 != V2_VERSION) {
        fail(r, "PROXY v2: unsupported version %u", p[12] >> 4);
        return false;
    }
    if (len > 12 && (p[12] & 0x0f) > V2_CMD_PROXY) {
        fail(r, "PROXY v2: unsupported command %u", p[12] & 0x0f);
        return false;
    }
    bool proxy = len > 12 && (p[12] & 0x0f) == V2_CMD_PROXY;
    if (proxy && len > 13 && p[13] != V2_FAM_UNSPEC && p[13] != V2_FAM_TCP4 &&
        p[13] != V2_FAM_TCP6 && p[13] != V2_FAM_UNIX_STREAM) {
        fail(r, "PROXY v2: unsupported address family and transport 0x%02x (want a stream)", p[13]);
        return false;
    }
    if (len >= PROXYPARSE_V2_FIXED && v2_length(p) > PROXYPARSE_V2_MAX_DATA) {
        fail(r, "PROXY v2: length %u exceeds %d", v2_length(p), PROXYPARSE_V2_MAX_DATA);
        return false;
    }
    return true;
}

static void v2_parse(const unsigned char *p, size_t len, struct proxyparse_result *r)
{
    size_t sig = len < sizeof(v2_signature) ? len : sizeof(v2_signature);

    r->version = 2;
    if (memcmp(p, v2_signature, sig) != 0) {
        fail_not_proxy(r, p, len);
        return;
    }
    if (!v2_fixed(p, len, r))
        return;
    if (len < PROXYPARSE_V2_FIXED) {
        need_more(r, PROXYPARSE_MAX - len, PROXYPARSE_V2_FIXED - len);
        return;
    }
    size_t total = PROXYPARSE_V2_FIXED + v2_length(p);
    if (len < total) {
        need_more(r, total - len, total - len);
        return;
    }
    v2_body(p, total - PROXYPARSE_V2_FIXED, r);
}

void proxyparse(const void *data, size_t len, struct proxyparse_result *r)
{
    const unsigned char *p = data;

    memset(r, 0, sizeof(*r));
    if (len == 0)
        need_more(r, PROXYPARSE_MAX, 0);
    else if (p[0] == V1_PREFIX[0])
        v1_parse(p, len, r);
    else if (p[0] == v2_signature[0])
        v2_parse(p, len, r);
    else
        fail_not_proxy(r, p, len);
}
