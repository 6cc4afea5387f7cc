/*
 * sluice-backend: a small, fast plaintext HTTP/1.1 responder.
 *
 * The demo backend of ./quickstart and the backend of bench/run. One thread, one epoll
 * loop, nonblocking sockets, bounded buffers. It parses just enough HTTP: the request
 * line, Content-Length (the body is read and discarded), Connection, Expect and
 * Transfer-Encoding (refused). Every request gets the same answer, except that a request
 * for /bytes/N gets an N-byte body (for the benchmark's body-size sweeps and bulk runs);
 * pipelined requests are answered in order; the connection stays open unless the request
 * says "Connection: close" or is HTTP/1.0.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* accept4, memmem, signalfd */
#endif

#include <err.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PROG "sluice-backend"
#define DEFAULT_BODY "hello from sluice demo backend\n"
#define INBUF_SIZE 16384    /* largest request head accepted */
#define MAX_QUEUED 128      /* responses queued per connection (pipelining) */
#define MAX_IOV 64          /* iovecs per writev */
#define ACCEPT_BATCH 64     /* accepts per wake-up of the listener */
#define ACCEPT_PAUSE_MS 100 /* pause after EMFILE/ENFILE or at the connection cap */
#define MAX_EVENTS 256
#define LINGER_MS 2000            /* after a closing response, read and discard this long at most */
#define MAX_BODY_SIZE (1ul << 30) /* -s and /bytes/N upper bound */
#define BLOCK_SIZE 65536          /* a /bytes/N body is this block, written repeatedly */
#define SIZED_HEAD_MAX 128        /* a /bytes/N response head, formatted when written */
#define MAX_SIZED_HEADS 16        /* /bytes/N responses per writev */

#define OK_FMT "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %lu\r\n%s\r\n"
#define CLOSE_HEADER "Connection: close\r\n"

enum resp_kind {
    RESP_OK_KEEP,
    RESP_OK_CLOSE,
    RESP_HEAD_KEEP,
    RESP_HEAD_CLOSE,
    RESP_CONTINUE,
    RESP_BAD_REQUEST,
    RESP_TOO_LARGE,
    RESP_NOT_IMPLEMENTED,
    RESP_NKINDS
};

/* A queued response: a prepared one, or (sized) a 200 whose body is bytes long. */
struct qent {
    uint32_t bytes; /* body length of a sized response (at most MAX_BODY_SIZE) */
    uint8_t kind;   /* enum resp_kind */
    bool sized;     /* a /bytes/N answer: the head is formatted, the body is the block */
};

struct resp {
    char *head;
    size_t head_len;
    bool body;  /* the shared body follows the head */
    bool close; /* the connection closes once this response is written */
};

struct conn {
    struct conn *prev, *next;   /* all connections, for the exit */
    struct conn *lprev, *lnext; /* lingering connections, oldest first */
    struct timespec linger_end;
    bool lingering;
    int fd;
    uint32_t events;         /* what epoll watches now */
    size_t in_start, in_end; /* unparsed bytes are in[in_start..in_end) */
    uint64_t body_left;      /* request body bytes still to discard */
    struct qent body_resp;   /* response to queue once the body is discarded */
    bool in_body;
    bool peer_eof;
    bool closing; /* a closing response is queued: read and parse no more */
    struct qent queue[MAX_QUEUED];
    unsigned q_head, q_len;
    size_t q_off; /* bytes of queue[q_head] already written */
    char in[INBUF_SIZE];
};

struct server {
    int epfd;
    int lfd;
    int sigfd;
    bool accept_on;         /* the listener is in the epoll set */
    struct timespec resume; /* when accepting resumes after a pause */
    bool accept_paused;
    time_t accept_warned; /* last EMFILE warning */
    struct conn *conns;
    struct conn *linger_head, *linger_tail;
    unsigned nconns, max_conns;
    struct resp resp[RESP_NKINDS];
    char *body;
    size_t body_len;
    char *block;           /* BLOCK_SIZE bytes: the bodies of /bytes/N */
    const char *unix_path; /* removed at exit if still our socket */
    dev_t unix_dev;
    ino_t unix_ino;
};

/* Tags for the epoll data of the listener and the signalfd; connections use pointers. */
static char listener_tag, signal_tag;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: " PROG " (-u PATH | -l HOST:PORT) [-s BYTES] [-c MAXCONN] [-h]\n"
            "\n"
            "A small plaintext HTTP/1.1 responder: the demo backend of sluice's quickstart\n"
            "and the backend of its benchmark. Every request gets \"200 OK\" and the same body,\n"
            "except a request for /bytes/N (N decimal, 0..%lu): an N-byte body.\n"
            "\n"
            "  -u PATH       listen on a Unix socket (a stale socket file is replaced)\n"
            "  -l HOST:PORT  listen on TCP, e.g. 127.0.0.1:8080, [::1]:8080, *:8080\n"
            "  -s BYTES      body size (default: the %zu-byte line \"%.*s\\n\")\n"
            "  -c MAXCONN    connections at once (default 10000)\n"
            "  -h            this help\n"
            "\n"
            "Keep-alive unless the request says \"Connection: close\" or is HTTP/1.0;\n"
            "pipelined requests are answered in order; request bodies (Content-Length)\n"
            "are discarded; chunked request bodies are refused (501); a /bytes/ path with\n"
            "anything but a number in range after it gets 400. SIGTERM or SIGINT stops it\n"
            "and removes its socket file.\n",
            MAX_BODY_SIZE, strlen(DEFAULT_BODY), (int)strlen(DEFAULT_BODY) - 1, DEFAULT_BODY);
}

static bool parse_size(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;

    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return false;
    *out = v;
    return true;
}

/* ---------------------------------------------------------------- responses */

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    int n;
    char *p;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || (p = malloc((size_t)n + 1)) == NULL) {
        warnx("out of memory");
        exit(1);
    }
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

static void resp_set(struct resp *r, bool body, bool close, char *head)
{
    r->head = head;
    r->head_len = strlen(head);
    r->body = body;
    r->close = close;
}

static const char pattern[] = "0123456789abcdefghijklmnopqrstuvwxyz"
                              "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxy\n";

/* Fills p[0..size) with lines of the pattern. */
static void fill_pattern(char *p, size_t size)
{
    for (size_t i = 0; i < size; i++)
        p[i] = pattern[i % (sizeof(pattern) - 1)];
}

static void responses_init(struct server *srv, bool default_body, unsigned long size)
{
#define ERROR_FMT "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    if (default_body)
        size = strlen(DEFAULT_BODY);
    srv->body_len = size;
    srv->body = malloc(size > 0 ? size : 1);
    srv->block = malloc(BLOCK_SIZE);
    if (srv->body == NULL || srv->block == NULL) {
        warnx("out of memory for a %lu-byte body", size);
        exit(1);
    }
    fill_pattern(srv->block, BLOCK_SIZE);
    if (default_body) {
        memcpy(srv->body, DEFAULT_BODY, size);
    } else {
        fill_pattern(srv->body, size);
        if (size > 0)
            srv->body[size - 1] = '\n';
    }
    resp_set(&srv->resp[RESP_OK_KEEP], true, false, xasprintf(OK_FMT, size, ""));
    resp_set(&srv->resp[RESP_OK_CLOSE], true, true, xasprintf(OK_FMT, size, CLOSE_HEADER));
    resp_set(&srv->resp[RESP_HEAD_KEEP], false, false, xasprintf(OK_FMT, size, ""));
    resp_set(&srv->resp[RESP_HEAD_CLOSE], false, true, xasprintf(OK_FMT, size, CLOSE_HEADER));
    resp_set(&srv->resp[RESP_CONTINUE], false, false, xasprintf("HTTP/1.1 100 Continue\r\n\r\n"));
    resp_set(&srv->resp[RESP_BAD_REQUEST], false, true, xasprintf(ERROR_FMT, "400 Bad Request"));
    resp_set(&srv->resp[RESP_TOO_LARGE], false, true,
             xasprintf(ERROR_FMT, "431 Request Header Fields Too Large"));
    resp_set(&srv->resp[RESP_NOT_IMPLEMENTED], false, true,
             xasprintf(ERROR_FMT, "501 Not Implemented"));
#undef ERROR_FMT
}

static void responses_free(struct server *srv)
{
    for (int i = 0; i < RESP_NKINDS; i++)
        free(srv->resp[i].head);
    free(srv->body);
    free(srv->block);
}

/* ---------------------------------------------------------------- request parsing */

struct request {
    bool head_method;
    bool http10;
    bool conn_close;
    bool expect_continue;
    bool chunked;
    bool bad;
    bool sized;     /* the path is /bytes/N */
    uint32_t bytes; /* N */
    uint64_t content_length;
    bool has_content_length;
};

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Does the comma-separated list v[0..len) hold token (case-insensitive)? */
static bool list_has_token(const char *v, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;

    while (i < len) {
        size_t start, end;

        while (i < len && (ows(v[i]) || v[i] == ','))
            i++;
        start = i;
        while (i < len && v[i] != ',')
            i++;
        end = i;
        while (end > start && ows(v[end - 1]))
            end--;
        if (end - start == tlen && strncasecmp(v + start, token, tlen) == 0)
            return true;
    }
    return false;
}

static bool header_is(const char *name, size_t nlen, const char *want)
{
    return nlen == strlen(want) && strncasecmp(name, want, nlen) == 0;
}

static void parse_header(struct request *req, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    const char *v;
    size_t nlen, vlen;

    if (colon == NULL || colon == line) {
        req->bad = true;
        return;
    }
    nlen = (size_t)(colon - line);
    v = colon + 1;
    vlen = len - nlen - 1;
    while (vlen > 0 && ows(*v)) {
        v++;
        vlen--;
    }
    while (vlen > 0 && ows(v[vlen - 1]))
        vlen--;

    if (header_is(line, nlen, "Content-Length")) {
        uint64_t n = 0;

        if (vlen == 0)
            req->bad = true;
        for (size_t i = 0; i < vlen; i++) {
            if (v[i] < '0' || v[i] > '9' || n > (UINT64_MAX - 9) / 10) {
                req->bad = true;
                return;
            }
            n = n * 10 + (uint64_t)(v[i] - '0');
        }
        if (req->has_content_length && req->content_length != n)
            req->bad = true;
        req->has_content_length = true;
        req->content_length = n;
    } else if (header_is(line, nlen, "Connection")) {
        if (list_has_token(v, vlen, "close"))
            req->conn_close = true;
    } else if (header_is(line, nlen, "Expect")) {
        if (vlen == 12 && strncasecmp(v, "100-continue", 12) == 0)
            req->expect_continue = true;
    } else if (header_is(line, nlen, "Transfer-Encoding")) {
        req->chunked = true;
    }
}

/* A target "/bytes/N" asks for an N-byte body; other targets get the usual body. */
static void parse_target(struct request *req, const char *t, size_t len)
{
    static const char prefix[] = "/bytes/";
    const size_t plen = sizeof(prefix) - 1;
    uint64_t n = 0;

    if (len < plen || memcmp(t, prefix, plen) != 0)
        return;
    if (len == plen) {
        req->bad = true;
        return;
    }
    for (size_t i = plen; i < len; i++) {
        if (t[i] < '0' || t[i] > '9') {
            req->bad = true;
            return;
        }
        n = n * 10 + (uint64_t)(t[i] - '0');
        if (n > MAX_BODY_SIZE) {
            req->bad = true;
            return;
        }
    }
    req->sized = true;
    req->bytes = (uint32_t)n;
}

static void parse_request_line(struct request *req, const char *line, size_t len)
{
    const char *sp1 = memchr(line, ' ', len);
    const char *sp2;

    if (sp1 == NULL || sp1 == line) {
        req->bad = true;
        return;
    }
    sp2 = memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line));
    if (sp2 == NULL || sp2 == sp1 + 1) {
        req->bad = true;
        return;
    }
    req->head_method = (size_t)(sp1 - line) == 4 && memcmp(line, "HEAD", 4) == 0;
    parse_target(req, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    const char *ver = sp2 + 1;
    size_t vlen = len - (size_t)(ver - line);
    if (vlen == 8 && memcmp(ver, "HTTP/1.1", 8) == 0)
        req->http10 = false;
    else if (vlen == 8 && memcmp(ver, "HTTP/1.0", 8) == 0)
        req->http10 = true;
    else
        req->bad = true;
}

/* Parses the request head in p[0..len), which ends with "\r\n\r\n". */
static void parse_head(struct request *req, const char *p, size_t len)
{
    size_t pos = 0;
    bool first = true;

    memset(req, 0, sizeof(*req));
    while (pos < len) {
        const char *line = p + pos;
        const char *eol = memchr(line, '\n', len - pos);
        size_t llen;

        if (eol == NULL)
            break;
        llen = (size_t)(eol - line);
        pos += llen + 1;
        if (llen > 0 && line[llen - 1] == '\r')
            llen--;
        if (llen == 0) {
            if (first) /* tolerate empty lines before the request line */
                continue;
            break;
        }
        if (first) {
            parse_request_line(req, line, llen);
            first = false;
        } else {
            parse_header(req, line, llen);
        }
    }
    if (first)
        req->bad = true;
}

/* ---------------------------------------------------------------- connections */

static void monotonic(struct timespec *ts)
{
    if (clock_gettime(CLOCK_MONOTONIC, ts) == -1) {
        warn("clock_gettime");
        exit(1);
    }
}

/* Returns now + ms. */
static struct timespec deadline_in(long ms)
{
    struct timespec ts;

    monotonic(&ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Milliseconds from now until ts, rounded up, at least 0. */
static int ms_until(const struct timespec *ts)
{
    struct timespec now;
    long long ms;

    monotonic(&now);
    ms = (long long)(ts->tv_sec - now.tv_sec) * 1000 +
         (ts->tv_nsec - now.tv_nsec + 999999) / 1000000;
    return ms < 0 ? 0 : ms > INT_MAX ? INT_MAX : (int)ms;
}

static void conn_push_entry(struct conn *c, struct qent e, const struct server *srv)
{
    c->queue[(c->q_head + c->q_len) % MAX_QUEUED] = e;
    c->q_len++;
    if (srv->resp[e.kind].close)
        c->closing = true;
}

static void conn_push(struct conn *c, enum resp_kind kind, const struct server *srv)
{
    conn_push_entry(c, (struct qent){.kind = (uint8_t)kind}, srv);
}

static struct qent final_response(const struct request *req)
{
    bool close = req->conn_close || req->http10;
    struct qent e = {.sized = req->sized, .bytes = req->bytes};

    if (req->head_method)
        e.kind = close ? RESP_HEAD_CLOSE : RESP_HEAD_KEEP;
    else
        e.kind = close ? RESP_OK_CLOSE : RESP_OK_KEEP;
    return e;
}

/* Discards body bytes from the input buffer; queues the response once the body is done. */
static void conn_eat_body(struct conn *c, const struct server *srv)
{
    size_t avail = c->in_end - c->in_start;
    size_t n = c->body_left < avail ? (size_t)c->body_left : avail;

    c->in_start += n;
    c->body_left -= n;
    if (c->body_left == 0) {
        c->in_body = false;
        conn_push_entry(c, c->body_resp, srv);
    }
}

/* Parses as many complete requests as the buffer and the response queue allow. */
static void conn_parse(struct conn *c, const struct server *srv)
{
    /* Room for a "100 Continue" and a final response. */
    while (!c->closing && c->q_len + 2 <= MAX_QUEUED) {
        if (c->in_body) {
            conn_eat_body(c, srv);
            if (c->in_body)
                break;
            continue;
        }
        char *start = c->in + c->in_start;
        size_t avail = c->in_end - c->in_start;
        char *end = avail >= 4 ? memmem(start, avail, "\r\n\r\n", 4) : NULL;
        struct request req;

        if (end == NULL) {
            if (avail == sizeof(c->in))
                conn_push(c, RESP_TOO_LARGE, srv);
            break;
        }
        size_t hlen = (size_t)(end - start) + 4;
        parse_head(&req, start, hlen);
        c->in_start += hlen;
        if (req.bad) {
            conn_push(c, RESP_BAD_REQUEST, srv);
            break;
        }
        if (req.chunked) {
            conn_push(c, RESP_NOT_IMPLEMENTED, srv);
            break;
        }
        if (req.content_length > 0) {
            if (req.expect_continue && !req.http10)
                conn_push(c, RESP_CONTINUE, srv);
            c->in_body = true;
            c->body_left = req.content_length;
            c->body_resp = final_response(&req);
            continue;
        }
        conn_push_entry(c, final_response(&req), srv);
    }
    if (c->in_start == c->in_end) {
        c->in_start = c->in_end = 0;
    } else if (c->in_start > 0 && c->in_end == sizeof(c->in)) {
        memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
        c->in_end -= c->in_start;
        c->in_start = 0;
    }
}

/* Reads until EAGAIN, EOF or a full buffer. Returns false if the connection failed. */
static bool conn_read(struct conn *c, const struct server *srv)
{
    while (!c->peer_eof && !c->closing) {
        if (c->in_body && c->in_start == c->in_end)
            c->in_start = c->in_end = 0;
        size_t room = sizeof(c->in) - c->in_end;
        if (room == 0)
            break;
        ssize_t n = read(c->fd, c->in + c->in_end, room);
        if (n > 0) {
            c->in_end += (size_t)n;
            conn_parse(c, srv);
            if (c->q_len + 2 > MAX_QUEUED)
                break; /* backpressure: write first */
            continue;
        }
        if (n == 0) {
            c->peer_eof = true;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno != ECONNRESET)
            warn("read");
        return false;
    }
    return true;
}

/* The head of queued response e: the prepared one, or a /bytes/N one formatted into buf. */
static char *entry_head(const struct server *srv, const struct qent *e, char buf[SIZED_HEAD_MAX],
                        size_t *len)
{
    const struct resp *r = &srv->resp[e->kind];

    if (!e->sized) {
        *len = r->head_len;
        return r->head;
    }
    /* At most ~90 bytes: Content-Length has 10 digits at most. */
    *len = (size_t)snprintf(buf, SIZED_HEAD_MAX, OK_FMT, (unsigned long)e->bytes,
                            r->close ? CLOSE_HEADER : "");
    return buf;
}

static size_t entry_body_len(const struct server *srv, const struct qent *e)
{
    if (!srv->resp[e->kind].body)
        return 0;
    return e->sized ? e->bytes : srv->body_len;
}

/*
 * Adds at most room iovecs for body bytes [skip, end) of e: the body, or for /bytes/N the
 * block as often as it takes. Sets *complete when they reach the end of the body.
 */
static int entry_body_iov(const struct server *srv, const struct qent *e, size_t skip,
                          struct iovec *iov, int room, bool *complete)
{
    size_t len = entry_body_len(srv, e);
    int n = 0;

    while (skip < len && n < room) {
        size_t off = e->sized ? skip % BLOCK_SIZE : skip;
        size_t chunk = e->sized ? BLOCK_SIZE - off : len - skip;

        if (chunk > len - skip)
            chunk = len - skip;
        iov[n].iov_base = (e->sized ? srv->block : srv->body) + off;
        iov[n].iov_len = chunk;
        n++;
        skip += chunk;
    }
    *complete = skip >= len;
    return n;
}

/* Fills iov with queued responses from c->q_off on, in order; returns the iovec count. */
static int conn_gather(const struct conn *c, const struct server *srv, struct iovec *iov,
                       char heads[MAX_SIZED_HEADS][SIZED_HEAD_MAX])
{
    int niov = 0, nheads = 0;
    size_t skip = c->q_off;

    for (unsigned i = 0; i < c->q_len && niov + 2 <= MAX_IOV; i++) {
        const struct qent *e = &c->queue[(c->q_head + i) % MAX_QUEUED];
        size_t head_len;
        bool complete;

        if (e->sized && nheads == MAX_SIZED_HEADS)
            break;
        char *head = entry_head(srv, e, heads[nheads], &head_len);
        if (e->sized)
            nheads++;
        if (skip < head_len) {
            iov[niov].iov_base = head + skip;
            iov[niov].iov_len = head_len - skip;
            niov++;
            skip = 0;
        } else {
            skip -= head_len;
        }
        niov += entry_body_iov(srv, e, skip, iov + niov, MAX_IOV - niov, &complete);
        skip = 0;
        if (!complete || srv->resp[e->kind].close)
            break;
    }
    return niov;
}

/* Drops the responses that n written bytes completed; keeps the offset into the next. */
static void conn_consume(struct conn *c, const struct server *srv, size_t n)
{
    while (n > 0 && c->q_len > 0) {
        const struct qent *e = &c->queue[c->q_head];
        char scratch[SIZED_HEAD_MAX];
        size_t head_len;

        entry_head(srv, e, scratch, &head_len);
        size_t rest = head_len + entry_body_len(srv, e) - c->q_off;
        if (n < rest) {
            c->q_off += n;
            return;
        }
        n -= rest;
        c->q_off = 0;
        c->q_head = (c->q_head + 1) % MAX_QUEUED;
        c->q_len--;
    }
}

/* Writes queued responses until EAGAIN or an empty queue. Returns false on failure. */
static bool conn_write(struct conn *c, const struct server *srv)
{
    while (c->q_len > 0) {
        struct iovec iov[MAX_IOV];
        char heads[MAX_SIZED_HEADS][SIZED_HEAD_MAX];
        int niov = conn_gather(c, srv, iov, heads);
        ssize_t n = writev(c->fd, iov, niov);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            if (errno != EPIPE && errno != ECONNRESET)
                warn("writev");
            return false;
        }
        conn_consume(c, srv, (size_t)n);
    }
    return true;
}

static void conn_close(struct server *srv, struct conn *c)
{
    if (close(c->fd) == -1 && errno != EINTR)
        warn("close");
    if (c->lingering) {
        if (c->lprev != NULL)
            c->lprev->lnext = c->lnext;
        else
            srv->linger_head = c->lnext;
        if (c->lnext != NULL)
            c->lnext->lprev = c->lprev;
        else
            srv->linger_tail = c->lprev;
    }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    free(c);
    srv->nconns--;
}

/* Brings the epoll interest in line with the state; returns false when the connection is done. */
static bool conn_update(struct server *srv, struct conn *c)
{
    uint32_t want = 0;

    if (c->q_len > 0)
        want |= EPOLLOUT;
    else if (c->closing || c->peer_eof)
        return false; /* all written, nothing more will come */
    if (!c->peer_eof && !c->closing && c->q_len + 2 <= MAX_QUEUED && c->in_end < sizeof(c->in))
        want |= EPOLLIN;
    if (want == c->events)
        return true;

    struct epoll_event ev = {.events = want, .data.ptr = c};
    if (epoll_ctl(srv->epfd, EPOLL_CTL_MOD, c->fd, &ev) == -1) {
        warn("epoll_ctl");
        return false;
    }
    c->events = want;
    return true;
}

/*
 * After a closing response: shut down our side and read until the client's EOF (or for
 * LINGER_MS at most), so unread request bytes do not turn our close into a reset that
 * could destroy the response in flight (the "lingering close" of Apache and nginx).
 */
static void conn_linger(struct server *srv, struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};

    if (c->peer_eof || shutdown(c->fd, SHUT_WR) == -1 ||
        epoll_ctl(srv->epfd, EPOLL_CTL_MOD, c->fd, &ev) == -1) {
        conn_close(srv, c);
        return;
    }
    c->events = EPOLLIN;
    c->lingering = true;
    c->linger_end = deadline_in(LINGER_MS);
    c->lnext = NULL;
    c->lprev = srv->linger_tail;
    if (srv->linger_tail != NULL)
        srv->linger_tail->lnext = c;
    else
        srv->linger_head = c;
    srv->linger_tail = c;
}

/* Discards input of a lingering connection; closes it at EOF or on an error. */
static void conn_linger_read(struct server *srv, struct conn *c)
{
    for (;;) {
        ssize_t n = read(c->fd, c->in, sizeof(c->in));

        if (n > 0)
            continue;
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_close(srv, c);
        return;
    }
}

/* Closes lingering connections whose time is up; returns ms until the next one, or -1. */
static int linger_expire(struct server *srv)
{
    while (srv->linger_head != NULL) {
        int ms = ms_until(&srv->linger_head->linger_end);

        if (ms > 0)
            return ms;
        conn_close(srv, srv->linger_head);
    }
    return -1;
}

static void conn_event(struct server *srv, struct conn *c, uint32_t events)
{
    bool ok = true;

    if (c->lingering) {
        conn_linger_read(srv, c);
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        ok = conn_read(c, srv);
    /* Write, then parse the requests a full queue held back, until the socket blocks. */
    while (ok) {
        if (!c->closing)
            conn_parse(c, srv);
        if (c->q_len == 0)
            break;
        ok = conn_write(c, srv);
        if (c->q_len > 0)
            break; /* EAGAIN: wait for EPOLLOUT */
    }
    if (ok && (events & EPOLLERR) && c->q_len == 0)
        ok = false;
    if (!ok)
        conn_close(srv, c);
    else if (!conn_update(srv, c))
        c->closing ? conn_linger(srv, c) : conn_close(srv, c);
}

/* ---------------------------------------------------------------- listener */

static void accept_set(struct server *srv, bool on)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_tag};

    if (srv->accept_on == on)
        return;
    if (epoll_ctl(srv->epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, srv->lfd, &ev) == -1) {
        warn("epoll_ctl (listener)");
        exit(1);
    }
    srv->accept_on = on;
}

static void accept_pause(struct server *srv)
{
    srv->resume = deadline_in(ACCEPT_PAUSE_MS);
    srv->accept_paused = true;
    accept_set(srv, false);
}

/* Milliseconds until a paused listener resumes (resuming it when due), or -1. */
static int accept_timeout(struct server *srv)
{
    int ms;

    if (!srv->accept_paused)
        return -1;
    ms = ms_until(&srv->resume);
    if (ms > 0)
        return ms;
    if (srv->nconns >= srv->max_conns) {
        accept_pause(srv);
        return ACCEPT_PAUSE_MS;
    }
    srv->accept_paused = false;
    accept_set(srv, true);
    return -1;
}

static void accept_batch(struct server *srv, bool is_tcp)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (srv->nconns >= srv->max_conns) {
            accept_pause(srv);
            return;
        }
        /* cppcheck-suppress nullPointer ; gnu.cfg wrongly wants addrlen even with no addr */
        int fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                time_t now = time(NULL);
                if (now - srv->accept_warned >= 10) {
                    warn("accept (pausing %d ms)", ACCEPT_PAUSE_MS);
                    srv->accept_warned = now;
                }
                accept_pause(srv);
                return;
            }
            warn("accept");
            return;
        }
        if (is_tcp) {
            int one = 1;
            if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
                warn("setsockopt TCP_NODELAY");
        }
        struct conn *c = malloc(sizeof(*c));
        if (c == NULL) {
            warnx("out of memory: dropping a connection");
            close(fd);
            accept_pause(srv);
            return;
        }
        memset(c, 0, offsetof(struct conn, in));
        c->fd = fd;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
            warn("epoll_ctl (connection)");
            close(fd);
            free(c);
            continue;
        }
        c->next = srv->conns;
        if (c->next != NULL)
            c->next->prev = c;
        srv->conns = c;
        srv->nconns++;
    }
}

/* Fails if something answers on path, removes it if it is a stale socket. */
static void unix_remove_stale(const char *path, const struct sockaddr_un *sun)
{
    struct stat st;

    if (lstat(path, &st) == -1) {
        if (errno == ENOENT)
            return;
        warn("%s", path);
        exit(1);
    }
    if (!S_ISSOCK(st.st_mode)) {
        warnx("%s exists and is not a socket: not removing it", path);
        exit(1);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        warn("socket");
        exit(1);
    }
    if (connect(fd, (const struct sockaddr *)sun, sizeof(*sun)) == 0) {
        warnx("%s: another process is listening on it", path);
        exit(1);
    }
    close(fd);
    if (unlink(path) == -1 && errno != ENOENT) {
        warn("unlink %s", path);
        exit(1);
    }
}

static int listen_unix(struct server *srv, const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        warnx("%s: path too long for a Unix socket (max %zu bytes)", path,
              sizeof(sun.sun_path) - 1);
        exit(1);
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    unix_remove_stale(path, &sun);

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        warn("socket");
        exit(1);
    }
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
        warn("bind %s", path);
        exit(1);
    }
    if (stat(path, &st) == -1) {
        warn("stat %s", path);
        exit(1);
    }
    srv->unix_path = path;
    srv->unix_dev = st.st_dev;
    srv->unix_ino = st.st_ino;
    if (listen(fd, SOMAXCONN) == -1) {
        warn("listen %s", path);
        unlink(path);
        exit(1);
    }
    return fd;
}

static int listen_tcp(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    const char *port;
    size_t hlen;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    int err, fd = -1;

    if (colon == NULL || colon[1] == '\0') {
        warnx("%s: expected HOST:PORT", spec);
        exit(1);
    }
    port = colon + 1;
    hlen = (size_t)(colon - spec);
    if (hlen >= 2 && spec[0] == '[' && spec[hlen - 1] == ']') {
        spec++;
        hlen -= 2;
    }
    if (hlen >= sizeof(host)) {
        warnx("%s: host name too long", spec);
        exit(1);
    }
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    bool any = hlen == 0 || strcmp(host, "*") == 0;
    if (any)
        hints.ai_family = AF_INET6; /* dual-stack any, falls back to IPv4 below */
    err = getaddrinfo(any ? NULL : host, port, &hints, &res);
    if (err != 0 && any) {
        hints.ai_family = AF_INET;
        err = getaddrinfo(NULL, port, &hints, &res);
    }
    if (err != 0) {
        warnx("%s: %s", spec, gai_strerror(err));
        exit(1);
    }
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int one = 1, zero = 0;

        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd == -1)
            continue;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1)
            warn("setsockopt SO_REUSEADDR");
        if (any && ai->ai_family == AF_INET6 &&
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) == -1)
            warn("setsockopt IPV6_V6ONLY");
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        warn("bind/listen %s", spec);
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd == -1) {
        warnx("cannot listen on %s", spec);
        exit(1);
    }
    return fd;
}

static int signals_init(void)
{
    sigset_t set;
    struct sigaction sa = {.sa_handler = SIG_IGN};
    int fd;

    if (sigemptyset(&sa.sa_mask) == -1 || sigaction(SIGPIPE, &sa, NULL) == -1) {
        warn("sigaction SIGPIPE");
        exit(1);
    }
    /* An inherited SIG_IGN (bash does that to INT for background jobs) would discard
     * the signal before signalfd could see it. */
    sa.sa_handler = SIG_DFL;
    if (sigaction(SIGTERM, &sa, NULL) == -1 || sigaction(SIGINT, &sa, NULL) == -1) {
        warn("sigaction");
        exit(1);
    }
    if (sigemptyset(&set) == -1 || sigaddset(&set, SIGTERM) == -1 ||
        sigaddset(&set, SIGINT) == -1 || sigprocmask(SIG_BLOCK, &set, NULL) == -1) {
        warn("sigprocmask");
        exit(1);
    }
    fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd == -1) {
        warn("signalfd");
        exit(1);
    }
    return fd;
}

/* Closes the listener and removes the socket file if it is still the one we bound. */
static void server_shutdown(struct server *srv)
{
    struct stat st;

    close(srv->lfd);
    if (srv->unix_path != NULL && stat(srv->unix_path, &st) == 0 && st.st_dev == srv->unix_dev &&
        st.st_ino == srv->unix_ino && unlink(srv->unix_path) == -1)
        warn("unlink %s", srv->unix_path);
}

int main(int argc, char **argv)
{
    struct server srv = {.max_conns = 10000};
    const char *unix_path = NULL, *tcp_spec = NULL;
    unsigned long body_size = 0, max_conns;
    bool default_body = true;
    int opt;

    while ((opt = getopt(argc, argv, "u:l:s:c:h")) != -1) {
        switch (opt) {
        case 'u':
            unix_path = optarg;
            break;
        case 'l':
            tcp_spec = optarg;
            break;
        case 's':
            if (!parse_size(optarg, MAX_BODY_SIZE, &body_size)) {
                warnx("-s %s: expected a size in bytes, 0..%lu", optarg, MAX_BODY_SIZE);
                return 1;
            }
            default_body = false;
            break;
        case 'c':
            if (!parse_size(optarg, 1000000, &max_conns) || max_conns == 0) {
                warnx("-c %s: expected 1..1000000", optarg);
                return 1;
            }
            srv.max_conns = (unsigned)max_conns;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc || (unix_path == NULL) == (tcp_spec == NULL)) {
        if (optind != argc)
            warnx("unexpected argument: %s", argv[optind]);
        else
            warnx("give exactly one of -u PATH and -l HOST:PORT");
        usage(stderr);
        return 1;
    }

    responses_init(&srv, default_body, body_size);
    srv.sigfd = signals_init();
    srv.lfd = unix_path != NULL ? listen_unix(&srv, unix_path) : listen_tcp(tcp_spec);
    srv.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (srv.epfd == -1) {
        warn("epoll_create1");
        server_shutdown(&srv);
        responses_free(&srv);
        return 1;
    }
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &signal_tag};
    if (epoll_ctl(srv.epfd, EPOLL_CTL_ADD, srv.sigfd, &sev) == -1) {
        warn("epoll_ctl (signalfd)");
        server_shutdown(&srv);
        responses_free(&srv);
        return 1;
    }
    accept_set(&srv, true);
    fprintf(stderr, PROG ": listening on %s%s, %zu-byte body\n", unix_path ? "unix:" : "",
            unix_path ? unix_path : tcp_spec, srv.body_len);

    bool running = true;
    while (running) {
        struct epoll_event events[MAX_EVENTS];
        int t1 = accept_timeout(&srv), t2 = linger_expire(&srv);
        int timeout = t1 < 0 ? t2 : t2 < 0 ? t1 : t1 < t2 ? t1 : t2;
        int n = epoll_wait(srv.epfd, events, MAX_EVENTS, timeout);

        if (n == -1) {
            if (errno == EINTR)
                continue;
            warn("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;

            if (p == &signal_tag) {
                struct signalfd_siginfo si;
                ssize_t r = read(srv.sigfd, &si, sizeof(si));
                if (r == (ssize_t)sizeof(si))
                    running = false;
                else if (r == -1 && errno != EAGAIN && errno != EINTR)
                    warn("read signalfd");
            } else if (p == &listener_tag) {
                accept_batch(&srv, tcp_spec != NULL);
            } else {
                conn_event(&srv, p, events[i].events);
            }
        }
    }

    server_shutdown(&srv);
    while (srv.conns != NULL)
        conn_close(&srv, srv.conns);
    close(srv.epfd);
    close(srv.sigfd);
    responses_free(&srv);
    return 0;
}
