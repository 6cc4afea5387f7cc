/*
 * sluice-load: a TLS load generator for benchmarking TLS-terminating proxies.
 *
 * One epoll loop per thread, nonblocking sockets, OpenSSL on the sockets directly. Each
 * thread drives its share of the connection slots through a small state machine
 * (connect, handshake, request, response, next). The modes measure what bench/run needs:
 * full and resumed handshakes (a new connection per request, sessions counted to prove
 * which), keep-alive requests, bulk transfer, idle connections held open, and stalled TCP
 * connections that never send a byte (slowloris). It prints one logfmt summary line.
 *
 * By default each slot starts its next connection or request as soon as the last one is
 * done (a closed loop: the rate is what the server and this client can do together).
 * --rate makes it an open loop, for latency at a given load: connections (full, resume)
 * or requests (keepalive) fall due at a fixed rate whatever the server does, and latency
 * counts from when each fell due, so a server's backlog shows in the figures instead of
 * slowing the load down (no coordinated omission).
 *
 * Counters a thread owns are plain or relaxed atomics (for the progress line); the main
 * thread only reads the rest after joining the threads.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* memmem, strcasestr */
#endif

#include <arpa/inet.h>
#include <err.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define PROG "sluice-load"
#define READ_BUF_SIZE 65536    /* one per thread; also OpenSSL's read-ahead buffer in bulk */
#define HEAD_MAX 1024          /* longest response head accepted */
#define BACKOFF_NS 10000000ull /* 10 ms pause of a slot after an error */
#define MAX_IN_FLIGHT 500      /* handshakes (stall: connects) in progress, all threads */
#define MAX_EVENTS 256
#define MAX_ERROR_REPORTS 5 /* error messages printed; the rest are only counted */
#define MAX_THREADS 256
#define MAX_CONNS 1000000
#define MAX_REQUEST_BODY (64u << 20)
#define MAX_SECONDS 86400.0
#define NS 1000000000ull

/* Latency histogram: 2^HIST_SUB_BITS buckets per power of two of nanoseconds (< 1.6% wide). */
#define HIST_SUB_BITS 7
#define HIST_HALF (1u << (HIST_SUB_BITS - 1))
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_HALF + HIST_HALF)

enum mode { MODE_FULL, MODE_RESUME, MODE_KEEPALIVE, MODE_BULK, MODE_IDLE, MODE_STALL, NMODES };

static const char *const mode_names[NMODES] = {"full", "resume", "keepalive",
                                               "bulk", "idle",   "stall"};

struct options {
    const char *addr_spec;
    enum mode mode;
    unsigned conns;
    double seconds;
    unsigned threads;
    const char *sni; /* also the Host header */
    int tls;         /* 0 (1.2 or 1.3), 12 or 13 */
    size_t body;     /* request body bytes (POST); 0 = GET */
    const char *path;
    const char *sigalgs, *groups, *ciphers;
    double hold; /* idle: seconds held once established; < 0: -d */
    double rate; /* --rate: connections or requests due per second, all threads; 0: none */
    bool quiet;
};

struct hist {
    uint64_t count, min, max;
    uint64_t buckets[HIST_BUCKETS];
};

enum state {
    ST_WAIT,       /* no socket: queued to start, or backing off */
    ST_CONNECTING, /* TCP connect in progress */
    ST_HANDSHAKE,
    ST_SEND,  /* writing the request */
    ST_RECV,  /* reading the response */
    ST_DRAIN, /* full/resume: response read, waiting for the server's close */
    ST_HOLD,  /* idle: established and silent */
    ST_STALL, /* stall: connected, silent, waiting for the server to give up */
    ST_PACED, /* keepalive --rate: waiting for the next request to fall due */
    ST_DONE   /* stall: closed by the server, never reconnects */
};

/* Incremental parser state of one HTTP/1.1 response. */
struct response {
    uint64_t body_left;
    int status;
    unsigned head_len;
    bool in_body;
    bool until_eof; /* no Content-Length: the body ends at the close */
    bool close;     /* "Connection: close" */
    char head[HEAD_MAX];
};

struct worker;

struct conn {
    struct worker *w;
    struct conn *next; /* in the start queue or the backoff list */
    enum state st;
    int fd;
    SSL *ssl;
    uint32_t events;  /* what epoll watches now */
    bool in_flight;   /* counted in w->in_flight */
    bool established; /* counted in shared->established */
    bool resumed;
    unsigned tickets;  /* sessions the server sent on this connection (full, resume) */
    uint64_t t_start;  /* connect started; --rate: the connection fell due */
    uint64_t t_next;   /* keepalive --rate: when the next request falls due; 0: not up yet,
                        * PACE_UNSCHEDULED: up, waiting for the thread's others */
    uint64_t t_req;    /* request started (--rate: fell due); stall: connected */
    uint64_t t_due;    /* end of the backoff */
    SSL_SESSION *sess; /* resume: the newest session this slot obtained */
    struct response rsp;
};

struct fifo {
    struct conn *head, *tail;
};

/* What all threads share: set up before they start, then read-only but for the atomics. */
struct shared {
    const struct options *opt;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char *request;
    size_t request_len;
    int stop_fd; /* eventfd, readable once the run ends */
    atomic_uint established;
    atomic_bool all_established;
    _Atomic uint64_t established_ns;
    atomic_uint reports;
};

/* A thread's share of --rate: arrival k falls due at t0 + k * gap_ns. */
struct pacing {
    int timer_fd; /* wakes the loop when the next arrival falls due; -1 without --rate */
    uint64_t t0;
    double gap_ns;
    uint64_t next;   /* full, resume: the next connection to start */
    unsigned not_up; /* keepalive: connections not yet up for the first time */
};

#define PACE_UNSCHEDULED UINT64_MAX

struct worker {
    struct shared *sh;
    struct pacing pace;
    pthread_t thread;
    int epfd;
    SSL_CTX *ctx;
    struct conn *conns;
    unsigned nconns;
    unsigned in_flight, max_in_flight;
    struct fifo startq, backoff;
    char *rbuf;
    bool stopping;
    /* Written by this thread only; relaxed atomics so the progress line can read them. */
    _Atomic uint64_t connections, requests, errors, bytes;
    uint64_t resumed, closed, tickets;
    struct hist lat; /* latencies; stall: lifetimes of the connections the server closed */
};

/* Epoll tags of the stop eventfd and the pacing timer; connections use their own pointers. */
static char stop_tag, pace_tag;

static void fatal_ssl(const char *what)
{
    warnx("%s failed", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

/* Adds n to a counter only the calling thread writes (no locked instruction needed). */
static void count_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static uint64_t count_get(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ---------------------------------------------------------------- histogram */

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_HALF)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - (HIST_SUB_BITS - 1);
    return shift * HIST_HALF + (unsigned)(v >> shift);
}

/* The middle of bucket i. */
static uint64_t hist_value(unsigned i)
{
    if (i < 2 * HIST_HALF)
        return i;
    unsigned shift = i / HIST_HALF - 1;
    uint64_t low = (uint64_t)(i - shift * HIST_HALF) << shift;
    return low + ((1ull << shift) >> 1);
}

static void hist_add(struct hist *h, uint64_t v)
{
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->buckets[hist_index(v)]++;
}

static void hist_merge(struct hist *into, const struct hist *h)
{
    if (h->count == 0)
        return;
    if (into->count == 0 || h->min < into->min)
        into->min = h->min;
    if (h->max > into->max)
        into->max = h->max;
    into->count += h->count;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->buckets[i] += h->buckets[i];
}

/* The p-quantile (0 < p <= 1), within the bucket's width, clamped to [min, max]. */
static uint64_t hist_quantile(const struct hist *h, double p)
{
    uint64_t rank = (uint64_t)(p * (double)h->count + 0.999999), seen = 0;

    if (h->count == 0)
        return 0;
    if (rank < 1)
        rank = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v < h->min ? h->min : v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* ---------------------------------------------------------------- queues */

static void fifo_push(struct fifo *q, struct conn *c)
{
    c->next = NULL;
    if (q->tail != NULL)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
}

static struct conn *fifo_pop(struct fifo *q)
{
    struct conn *c = q->head;

    if (c != NULL) {
        q->head = c->next;
        if (q->head == NULL)
            q->tail = NULL;
    }
    return c;
}

/* ---------------------------------------------------------------- errors */

/* Prints the first few errors of the run; every error is counted in any case. */
static void report_error(struct worker *w, const char *what, const char *detail)
{
    unsigned n = atomic_fetch_add(&w->sh->reports, 1);

    if (n < MAX_ERROR_REPORTS)
        warnx("error: %s: %s", what, detail);
    else if (n == MAX_ERROR_REPORTS)
        warnx("more errors: counted, not printed");
}

/* Describes a failed SSL call: the OpenSSL error queue, errno or the EOF. */
static const char *ssl_error_detail(int err, int saved_errno, char *buf, size_t len)
{
    unsigned long e = ERR_get_error();

    if (e != 0) {
        ERR_error_string_n(e, buf, len);
        ERR_clear_error();
        return buf;
    }
    if (err == SSL_ERROR_ZERO_RETURN)
        return "closed by the server";
    if (err == SSL_ERROR_SYSCALL)
        return saved_errno != 0 ? strerror(saved_errno) : "connection closed";
    snprintf(buf, len, "SSL error %d", err);
    return buf;
}

/* ---------------------------------------------------------------- connections */

static void conn_handshake(struct conn *c);
static void conn_send(struct conn *c);

static enum mode conn_mode(const struct conn *c)
{
    return c->w->sh->opt->mode;
}

static void in_flight_end(struct conn *c)
{
    if (c->in_flight) {
        c->in_flight = false;
        c->w->in_flight--;
    }
}

/* idle and stall: one more connection is up; the one that completes the set says so. */
static void established_add(struct conn *c)
{
    struct shared *sh = c->w->sh;
    unsigned n = atomic_fetch_add(&sh->established, 1) + 1;

    c->established = true;
    if (n == sh->opt->conns && !atomic_exchange(&sh->all_established, true)) {
        atomic_store(&sh->established_ns, now_ns());
        printf("established=%u\n", n);
        fflush(stdout);
    }
}

static void established_drop(struct conn *c)
{
    if (c->established) {
        c->established = false;
        atomic_fetch_sub(&c->w->sh->established, 1);
    }
}

/* Releases the socket and the TLS state; the slot keeps its session (resume). */
static void conn_close(struct conn *c)
{
    in_flight_end(c);
    established_drop(c);
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd != -1) {
        close(c->fd); /* also leaves the epoll set; nothing to retry on Linux */
        c->fd = -1;
    }
    c->events = 0;
    c->st = ST_WAIT;
}

/* Counts an error, closes, and restarts the slot after the backoff. */
static void conn_fail(struct conn *c, const char *what, const char *detail)
{
    struct worker *w = c->w;

    count_add(&w->errors, 1);
    report_error(w, what, detail);
    conn_close(c);
    c->t_due = now_ns() + BACKOFF_NS;
    fifo_push(&w->backoff, c);
}

static void conn_fail_errno(struct conn *c, const char *what, int err)
{
    conn_fail(c, what, strerror(err));
}

/* A connection ended normally: the slot starts its next one. */
static void conn_end(struct conn *c)
{
    /* Without this, SSL_free takes the close for a failure and marks the session (the one
     * the slot keeps, in TLS 1.3) not resumable. */
    if (c->ssl != NULL)
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    conn_close(c);
    fifo_push(&c->w->startq, c);
}

/* Brings epoll's interest in line with what the connection waits for. */
static bool conn_want(struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};

    if (events == c->events)
        return true;
    if (epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev) == -1) {
        conn_fail_errno(c, "epoll_ctl", errno);
        return false;
    }
    c->events = events;
    return true;
}

/* After an SSL call returned r <= 0: waits for what it wants, or fails the connection. */
static void conn_ssl_wait(struct conn *c, int r, const char *what)
{
    int saved = errno;
    int err = SSL_get_error(c->ssl, r);
    char buf[256];

    if (err == SSL_ERROR_WANT_READ)
        conn_want(c, EPOLLIN);
    else if (err == SSL_ERROR_WANT_WRITE)
        conn_want(c, EPOLLOUT);
    else
        conn_fail(c, what, ssl_error_detail(err, saved, buf, sizeof(buf)));
}

static void conn_start(struct conn *c, uint64_t due)
{
    struct worker *w = c->w;
    const struct shared *sh = w->sh;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    int one = 1;

    c->t_start = due;
    c->fd = socket(sh->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd == -1) {
        conn_fail_errno(c, "socket", errno);
        return;
    }
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1) {
        conn_fail_errno(c, "setsockopt TCP_NODELAY", errno);
        return;
    }
    if (connect(c->fd, (const struct sockaddr *)&sh->addr, sh->addr_len) == -1 &&
        errno != EINPROGRESS) {
        conn_fail_errno(c, "connect", errno);
        return;
    }
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) == -1) {
        conn_fail_errno(c, "epoll_ctl", errno);
        return;
    }
    c->events = EPOLLOUT;
    c->st = ST_CONNECTING;
    c->in_flight = true;
    w->in_flight++;
}

/*
 * resume: offers a copy of the slot's session, as OpenSSL's client marks the session it
 * resumes not resumable (openssl#1550), and servers send no new ticket after a resumption
 * unless they renew it.
 */
static bool offer_session(struct conn *c)
{
    SSL_SESSION *copy = SSL_SESSION_dup(c->sess);
    bool ok = copy != NULL && SSL_set_session(c->ssl, copy) == 1;

    SSL_SESSION_free(copy);
    return ok;
}

static void conn_connected(struct conn *c)
{
    const struct options *opt = c->w->sh->opt;
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
        err = errno;
    if (err != 0) {
        conn_fail_errno(c, "connect", err);
        return;
    }
    if (opt->mode == MODE_STALL) {
        in_flight_end(c);
        count_add(&c->w->connections, 1);
        c->t_req = now_ns();
        c->st = ST_STALL;
        if (conn_want(c, EPOLLIN | EPOLLRDHUP))
            established_add(c);
        return;
    }
    c->ssl = SSL_new(c->w->ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
        char buf[256];
        conn_fail(c, "SSL_new", ssl_error_detail(SSL_ERROR_SSL, 0, buf, sizeof(buf)));
        return;
    }
    SSL_set_connect_state(c->ssl);
    SSL_set_app_data(c->ssl, c);
    if (opt->sni != NULL && SSL_set_tlsext_host_name(c->ssl, opt->sni) != 1) {
        conn_fail(c, "SNI", "SSL_set_tlsext_host_name failed");
        return;
    }
    if (c->sess != NULL && !offer_session(c)) {
        conn_fail(c, "resume", "SSL_set_session failed");
        return;
    }
    c->st = ST_HANDSHAKE;
    conn_handshake(c);
}

static bool paced(const struct worker *w)
{
    return w->pace.timer_fd != -1;
}

static uint64_t pace_due(const struct worker *w, uint64_t k)
{
    return w->pace.t0 + (uint64_t)((double)k * w->pace.gap_ns);
}

/*
 * keepalive --rate: the schedule starts once all of the thread's connections are up, each
 * connection's first request one gap after the previous one's. Started any earlier, the
 * first requests would fall due while the server still does the other connections'
 * handshakes, and the set-up would count as latency at the offered rate.
 */
static void pace_connection_up(struct worker *w, struct conn *c, uint64_t now)
{
    c->t_next = PACE_UNSCHEDULED;
    if (--w->pace.not_up > 0)
        return;
    for (unsigned i = 0; i < w->nconns; i++)
        w->conns[i].t_next = now + (uint64_t)((double)i * w->pace.gap_ns);
}

static void request_start(struct conn *c)
{
    struct worker *w = c->w;
    uint64_t now = now_ns();

    memset(&c->rsp, 0, offsetof(struct response, head));
    c->t_req = now;
    if (paced(w) && conn_mode(c) == MODE_KEEPALIVE) {
        if (c->t_next == 0)
            pace_connection_up(w, c, now);
        if (c->t_next > now) {
            c->st = ST_PACED; /* send_due starts it; the timer wakes the loop for it */
            conn_want(c, 0);
            return;
        }
        /* Late or on time, its latency counts from when it fell due. */
        c->t_req = c->t_next;
        c->t_next += (uint64_t)(w->pace.gap_ns * w->nconns);
    }
    c->st = ST_SEND;
    conn_send(c);
}

static void conn_handshake(struct conn *c)
{
    struct worker *w = c->w;
    int r;

    ERR_clear_error();
    r = SSL_do_handshake(c->ssl);
    if (r != 1) {
        conn_ssl_wait(c, r, "handshake");
        return;
    }
    in_flight_end(c);
    c->resumed = SSL_session_reused(c->ssl) == 1;
    /* full and resume count a connection once its response is in. */
    if (conn_mode(c) != MODE_FULL && conn_mode(c) != MODE_RESUME) {
        count_add(&w->connections, 1);
        w->resumed += c->resumed;
    }
    request_start(c);
}

static void conn_send(struct conn *c)
{
    const struct shared *sh = c->w->sh;
    int r;

    ERR_clear_error();
    r = SSL_write(c->ssl, sh->request, (int)sh->request_len);
    if (r <= 0) {
        conn_ssl_wait(c, r, "write");
        return;
    }
    /* Without partial writes, SSL_write returns only once the whole request is out. */
    c->st = ST_RECV;
    conn_want(c, EPOLLIN);
}

/* New session from the server (TLS 1.3: a ticket after the handshake): keep the newest. */
static int session_new(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_app_data(ssl);

    if (c == NULL)
        return 0;
    c->tickets++;
    /* full: counted, never kept, so nothing is ever offered */
    if (conn_mode(c) != MODE_RESUME)
        return 0;
    if (c->sess != NULL)
        SSL_SESSION_free(c->sess);
    c->sess = sess;
    return 1; /* we keep the reference */
}

/* ---------------------------------------------------------------- responses */

enum feed { FEED_MORE, FEED_DONE, FEED_ERROR };

static bool header_is(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp(line, name, n) == 0;
}

/* Parses one header line (without CRLF); false if it makes the response unusable. */
static bool parse_header(struct response *r, const char *line, size_t len)
{
    if (header_is(line, len, "Content-Length")) {
        const char *v = line + sizeof("Content-Length");
        const char *end = line + len;
        uint64_t n = 0;

        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        if (v == end)
            return false;
        for (; v < end && *v >= '0' && *v <= '9'; v++) {
            if (n > (UINT64_MAX - 9) / 10)
                return false;
            n = n * 10 + (uint64_t)(*v - '0');
        }
        r->body_left = n;
        r->until_eof = false;
    } else if (header_is(line, len, "Connection")) {
        char value[64];
        size_t vlen = len - sizeof("Connection");
        if (vlen >= sizeof(value))
            vlen = sizeof(value) - 1;
        memcpy(value, line + sizeof("Connection"), vlen);
        value[vlen] = '\0';
        if (strcasestr(value, "close") != NULL)
            r->close = true;
    } else if (header_is(line, len, "Transfer-Encoding")) {
        return false; /* chunked bodies: not needed for the bench, not supported */
    }
    return true;
}

/* Parses the head in r->head[0..len), which ends with CRLF CRLF. */
static bool parse_head(struct response *r, size_t len)
{
    const char *p = r->head, *end = r->head + len;
    bool first = true;

    r->until_eof = true;
    r->body_left = 0;
    r->close = false;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t llen;

        if (eol == NULL)
            break;
        llen = (size_t)(eol - p);
        if (llen > 0 && p[llen - 1] == '\r')
            llen--;
        if (llen == 0)
            break;
        if (first) {
            if (llen < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
                return false;
            r->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
            first = false;
        } else if (!parse_header(r, p, llen)) {
            return false;
        }
        p = eol + 1;
    }
    if (r->status == 204 || r->status == 304)
        r->until_eof = false;
    return !first;
}

/*
 * Feeds n response bytes. Body bytes count as they arrive (bulk throughput stays exact even
 * when a long body is cut by the end of the run).
 */
static enum feed resp_feed(struct conn *c, const char *p, size_t n, const char **why)
{
    struct response *r = &c->rsp;

    while (n > 0) {
        if (!r->in_body) {
            size_t room = HEAD_MAX - r->head_len;
            size_t take = n < room ? n : room;
            size_t from = r->head_len > 3 ? r->head_len - 3 : 0;

            memcpy(r->head + r->head_len, p, take);
            r->head_len += (unsigned)take;
            char *end = memmem(r->head + from, r->head_len - from, "\r\n\r\n", 4);
            if (end == NULL) {
                *why = "response head too long";
                return r->head_len == HEAD_MAX ? FEED_ERROR : FEED_MORE;
            }
            size_t hlen = (size_t)(end + 4 - r->head);
            size_t used = take - (r->head_len - hlen);
            p += used;
            n -= used;
            if (!parse_head(r, hlen)) {
                *why = "malformed or chunked response head";
                return FEED_ERROR;
            }
            r->head_len = 0;
            if (r->status >= 100 && r->status < 200)
                continue; /* an interim response: the real one follows */
            r->in_body = true;
        } else if (r->until_eof) {
            count_add(&c->w->bytes, n);
            return FEED_MORE;
        } else {
            size_t take = n < r->body_left ? n : (size_t)r->body_left;
            count_add(&c->w->bytes, take);
            r->body_left -= take;
            p += take;
            n -= take;
        }
        if (r->in_body && !r->until_eof && r->body_left == 0) {
            *why = "data after the response";
            return n > 0 ? FEED_ERROR : FEED_DONE;
        }
    }
    return FEED_MORE;
}

static void conn_drain(struct conn *c);

/* The whole response is in (eof: the server has closed). */
static void response_done(struct conn *c, bool eof)
{
    struct worker *w = c->w;
    uint64_t now = now_ns();

    if (c->rsp.status < 200 || c->rsp.status > 299) {
        char buf[32];
        snprintf(buf, sizeof(buf), "status %d", c->rsp.status);
        conn_fail(c, "response", buf);
        return;
    }
    count_add(&w->requests, 1);
    switch (conn_mode(c)) {
    case MODE_FULL:
    case MODE_RESUME:
        hist_add(&w->lat, now - c->t_start);
        count_add(&w->connections, 1);
        w->resumed += c->resumed;
        w->tickets += c->tickets;
        c->tickets = 0;
        if (eof) {
            conn_end(c);
            return;
        }
        /* Let the server close first (Connection: close), as a browser would; the TIME_WAIT
         * is then the server's, and the client's ports are not used up. */
        c->st = ST_DRAIN;
        conn_drain(c);
        return;
    case MODE_IDLE:
        hist_add(&w->lat, now - c->t_req);
        if (eof) {
            conn_fail(c, "idle", "closed by the server after the response");
            return;
        }
        c->st = ST_HOLD;
        if (conn_want(c, EPOLLIN))
            established_add(c);
        return;
    default: /* keepalive, bulk */
        hist_add(&w->lat, now - c->t_req);
        if (eof || c->rsp.close)
            conn_end(c);
        else
            request_start(c);
        return;
    }
}

static void conn_recv(struct conn *c)
{
    struct worker *w = c->w;

    for (;;) {
        const char *why = NULL;
        int r, err, saved;

        ERR_clear_error();
        r = SSL_read(c->ssl, w->rbuf, READ_BUF_SIZE);
        if (r > 0) {
            enum feed f = resp_feed(c, w->rbuf, (size_t)r, &why);
            if (f == FEED_ERROR) {
                conn_fail(c, "response", why);
                return;
            }
            if (f == FEED_DONE) {
                response_done(c, false);
                return;
            }
            continue;
        }
        saved = errno;
        err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_ZERO_RETURN && c->rsp.in_body && c->rsp.until_eof) {
            response_done(c, true);
            return;
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            conn_fail(c, "read", "closed by the server before the response ended");
            return;
        }
        errno = saved;
        conn_ssl_wait(c, r, "read");
        return;
    }
}

/* Reads and ignores what comes after the response until the server closes. */
static void conn_drain(struct conn *c)
{
    for (;;) {
        int r, err;

        ERR_clear_error();
        r = SSL_read(c->ssl, c->w->rbuf, READ_BUF_SIZE);
        if (r > 0)
            continue;
        err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ) {
            conn_want(c, EPOLLIN);
            return;
        }
        if (err == SSL_ERROR_WANT_WRITE) {
            conn_want(c, EPOLLOUT);
            return;
        }
        /* The close, or a reset: either way the exchange is complete. */
        ERR_clear_error();
        conn_end(c);
        return;
    }
}

/* idle: the connection should stay silent; the server closing it is an error. */
static void conn_hold_read(struct conn *c)
{
    for (;;) {
        int r;

        ERR_clear_error();
        r = SSL_read(c->ssl, c->w->rbuf, READ_BUF_SIZE);
        if (r <= 0) {
            int saved = errno;
            int err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_ZERO_RETURN) {
                conn_fail(c, "idle", "closed by the server");
                return;
            }
            errno = saved;
            conn_ssl_wait(c, r, "idle read");
            return;
        }
    }
}

/* stall: waits for the server to give up on the connection; records how long it lived. */
static void conn_stall_read(struct conn *c)
{
    struct worker *w = c->w;

    for (;;) {
        ssize_t n = read(c->fd, w->rbuf, READ_BUF_SIZE);

        if (n > 0)
            continue; /* e.g. an alert: the close follows */
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        hist_add(&w->lat, now_ns() - c->t_req);
        w->closed++;
        conn_close(c);
        c->st = ST_DONE; /* the point of the mode: no reconnect */
        return;
    }
}

static void conn_event(struct conn *c)
{
    switch (c->st) {
    case ST_CONNECTING:
        conn_connected(c);
        break;
    case ST_HANDSHAKE:
        conn_handshake(c);
        break;
    case ST_SEND:
        conn_send(c);
        break;
    case ST_RECV:
        conn_recv(c);
        break;
    case ST_DRAIN:
        conn_drain(c);
        break;
    case ST_HOLD:
        conn_hold_read(c);
        break;
    case ST_STALL:
        conn_stall_read(c);
        break;
    case ST_PACED: /* only an error or a hang-up reaches a connection that waits */
        conn_fail(c, "keepalive", "closed by the server between requests");
        break;
    case ST_WAIT:
    case ST_DONE:
        break;
    }
}

/* ---------------------------------------------------------------- threads */

static void start_pending(struct worker *w)
{
    bool by_rate = paced(w) && (w->sh->opt->mode == MODE_FULL || w->sh->opt->mode == MODE_RESUME);
    uint64_t now = now_ns();

    while (w->in_flight < w->max_in_flight && w->startq.head != NULL) {
        if (!by_rate) {
            conn_start(fifo_pop(&w->startq), now);
            continue;
        }
        /* A connection that fell due while every slot was busy starts late, counted from due. */
        uint64_t due = pace_due(w, w->pace.next);
        if (due > now)
            break;
        w->pace.next++;
        conn_start(fifo_pop(&w->startq), due);
    }
}

/* keepalive --rate: connections whose next request has fallen due send it. */
static void send_due(struct worker *w)
{
    uint64_t now = now_ns();

    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->st == ST_PACED && c->t_next <= now)
            request_start(c);
    }
}

/* When the loop must wake for the next arrival, or 0 if none can start before an event. */
static uint64_t pace_next_wake(const struct worker *w)
{
    uint64_t next = 0;

    if (w->sh->opt->mode == MODE_KEEPALIVE) {
        for (unsigned i = 0; i < w->nconns; i++) {
            const struct conn *c = &w->conns[i];
            if (c->st == ST_PACED && c->t_next != PACE_UNSCHEDULED &&
                (next == 0 || c->t_next < next))
                next = c->t_next;
        }
        return next;
    }
    if (w->in_flight < w->max_in_flight && w->startq.head != NULL)
        next = pace_due(w, w->pace.next);
    return next;
}

static void pace_arm(struct worker *w)
{
    uint64_t at = pace_next_wake(w);
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(at / NS), .tv_nsec = (long)(at % NS)}};

    /* at == 0 disarms; a time already past fires at once. */
    if (timerfd_settime(w->pace.timer_fd, TFD_TIMER_ABSTIME, &its, NULL) == -1)
        warnx("timerfd_settime: %s", strerror(errno));
}

static void pace_start(struct worker *w)
{
    w->pace.t0 = now_ns();
}

/* Moves slots whose backoff is over to the start queue; returns ms to the next, or -1. */
static int backoff_expire(struct worker *w)
{
    uint64_t now = now_ns();

    while (w->backoff.head != NULL) {
        uint64_t due = w->backoff.head->t_due;
        if (due > now)
            return (int)((due - now + 999999) / 1000000);
        fifo_push(&w->startq, fifo_pop(&w->backoff));
    }
    return -1;
}

/* At the end: a close_notify where a session is up (a courtesy to the server), then close. */
static void worker_close_all(struct worker *w)
{
    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];

        if (c->ssl != NULL && SSL_is_init_finished(c->ssl)) {
            ERR_clear_error();
            SSL_shutdown(c->ssl);
            ERR_clear_error();
        }
        conn_close(c);
        if (c->sess != NULL) {
            SSL_SESSION_free(c->sess);
            c->sess = NULL;
        }
    }
}

static void pace_clear(struct worker *w)
{
    uint64_t expirations;

    /* EAGAIN: re-armed since it fired; the loop's checks run either way. */
    if (read(w->pace.timer_fd, &expirations, sizeof(expirations)) == -1 && errno != EAGAIN)
        warnx("read timerfd: %s", strerror(errno));
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event events[MAX_EVENTS];

    for (unsigned i = 0; i < w->nconns; i++)
        fifo_push(&w->startq, &w->conns[i]);
    if (paced(w))
        pace_start(w);
    while (!w->stopping) {
        int timeout = backoff_expire(w);
        start_pending(w);
        if (paced(w)) {
            send_due(w);
            pace_arm(w);
        }
        int n = epoll_wait(w->epfd, events, MAX_EVENTS, timeout);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            warnx("epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n && !w->stopping; i++) {
            if (events[i].data.ptr == &stop_tag)
                w->stopping = true; /* in-flight work is abandoned */
            else if (events[i].data.ptr == &pace_tag)
                pace_clear(w);
            else
                conn_event(events[i].data.ptr);
        }
    }
    worker_close_all(w);
    return NULL;
}

static SSL_CTX *ctx_new(const struct options *opt)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int min = opt->tls == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    int max = opt->tls == 12 ? TLS1_2_VERSION : TLS1_3_VERSION;

    if (ctx == NULL)
        fatal_ssl("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* a load tool; the handshake is real */
    if (SSL_CTX_set_min_proto_version(ctx, min) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, max) != 1)
        fatal_ssl("setting the TLS version");
    /* A close without close_notify reads as EOF (SSL_ERROR_ZERO_RETURN). */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* The callback sees every session (ticket) the server sends: counted in every mode. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, session_new);
    /* Never offer a session, never keep one: every handshake is a full one. */
    if (opt->mode != MODE_RESUME)
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (opt->mode == MODE_BULK) {
        /* Fewer read calls: OpenSSL reads up to 64 KB of records at a time. */
        SSL_CTX_set_read_ahead(ctx, 1);
        SSL_CTX_set_default_read_buffer_len(ctx, READ_BUF_SIZE);
    }
    if (opt->mode == MODE_IDLE)
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* thousands of silent connections */
    if (opt->sigalgs != NULL && SSL_CTX_set1_sigalgs_list(ctx, opt->sigalgs) != 1)
        fatal_ssl("--sigalgs");
    if (opt->groups != NULL && SSL_CTX_set1_groups_list(ctx, opt->groups) != 1)
        fatal_ssl("--groups");
    if (opt->ciphers != NULL) {
        int ok = opt->tls == 12 ? SSL_CTX_set_cipher_list(ctx, opt->ciphers)
                                : SSL_CTX_set_ciphersuites(ctx, opt->ciphers);
        if (ok != 1)
            fatal_ssl("--ciphers");
    }
    return ctx;
}

static void worker_init(struct worker *w, struct shared *sh, unsigned nconns,
                        unsigned max_in_flight)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stop_tag};

    w->sh = sh;
    w->nconns = nconns;
    w->max_in_flight = max_in_flight;
    w->ctx = sh->opt->mode == MODE_STALL ? NULL : ctx_new(sh->opt);
    w->conns = calloc(nconns, sizeof(*w->conns));
    w->rbuf = malloc(READ_BUF_SIZE);
    if (w->conns == NULL || w->rbuf == NULL) {
        warnx("out of memory for %u connections", nconns);
        exit(1);
    }
    for (unsigned i = 0; i < nconns; i++) {
        w->conns[i].w = w;
        w->conns[i].fd = -1;
    }
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd == -1 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, sh->stop_fd, &ev) == -1) {
        warnx("epoll: %s", strerror(errno));
        exit(1);
    }
    w->pace.timer_fd = -1;
    if (sh->opt->rate > 0) {
        struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &pace_tag};
        w->pace.gap_ns = (double)NS * sh->opt->threads / sh->opt->rate;
        w->pace.not_up = w->nconns;
        w->pace.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (w->pace.timer_fd == -1 ||
            epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->pace.timer_fd, &tev) == -1) {
            warnx("timerfd: %s", strerror(errno));
            exit(1);
        }
    }
}

static void worker_free(struct worker *w)
{
    close(w->epfd);
    if (w->pace.timer_fd != -1)
        close(w->pace.timer_fd);
    SSL_CTX_free(w->ctx);
    free(w->conns);
    free(w->rbuf);
}

/* ---------------------------------------------------------------- set-up */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: " PROG " -a HOST:PORT -m MODE [-c CONNS] [-d SECONDS] [-t THREADS] [-n SNI]\n"
            "          [--tls 1.2|1.3] [--body BYTES] [--path PATH] [--sigalgs LIST]\n"
            "          [--groups LIST] [--ciphers LIST] [--hold SECONDS] [-q]\n"
            "\n"
            "A TLS load generator for benchmarking TLS proxies (HTTP/1.1 inside). Each of\n"
            "CONNS connection slots runs the MODE's loop for SECONDS, then the run stops:\n"
            "work in progress is abandoned and not counted.\n"
            "\n"
            "Modes:\n"
            "  full       connect, full handshake, one request with \"Connection: close\",\n"
            "             read the response, wait for the server's close, next connection.\n"
            "             No session is ever offered or kept: resumed=0 proves it.\n"
            "  resume     as full, but each connection offers the newest session its slot\n"
            "             got (TLS 1.3: a ticket); the first one of a slot is full.\n"
            "  keepalive  CONNS connections, each sends a request, reads the response,\n"
            "             sends the next; latency = request sent to response read.\n"
            "  bulk       as keepalive, for large bodies, e.g. --path /bytes/104857600.\n"
            "  idle       CONNS connections each handshake and do one request, then stay\n"
            "             open and silent; at most %d handshakes at once. Prints\n"
            "             \"established=N\" when all are up, holds them --hold seconds\n"
            "             (default: -d), or until SIGTERM/SIGINT, then closes them.\n"
            "             The run ends after -d seconds if they are never all up.\n"
            "  stall      CONNS TCP connections that never send a byte (slowloris on the\n"
            "             handshake); prints \"established=N\" when all are connected; a\n"
            "             connection the server closes is not reopened. The latency fields\n"
            "             hold the lifetimes (connected to closed) of those the server\n"
            "             closed; closed= counts them.\n"
            "\n"
            "Options:\n"
            "  -a HOST:PORT      server address ([v6addr]:port for IPv6)\n"
            "  -m MODE           full, resume, keepalive, bulk, idle or stall\n"
            "  -c CONNS          connection slots (default 16)\n"
            "  -d SECONDS        run time (default 10; fractions allowed)\n"
            "  -t THREADS        threads, one epoll loop each; the slots are split between\n"
            "                    them (default 1; pin with taskset)\n"
            "  -n SNI            server name sent and Host header (default: HOST if a\n"
            "                    name, else localhost)\n"
            "  --tls 1.2|1.3     only this version (default: either, 1.3 preferred)\n"
            "  --body BYTES      request body: POST PATH with Content-Length BYTES\n"
            "                    (default 0: GET PATH)\n"
            "  --path PATH       request path (default /)\n"
            "  --sigalgs LIST    signature algorithms offered (SSL_CTX_set1_sigalgs_list)\n"
            "  --groups LIST     key-exchange groups offered (SSL_CTX_set1_groups_list)\n"
            "  --ciphers LIST    TLS 1.3 cipher suites, or the TLS 1.2 cipher list with\n"
            "                    --tls 1.2\n"
            "  --hold SECONDS    idle: how long to hold the connections once all are up\n"
            "  --rate N          open loop: N connections (full, resume) or requests\n"
            "                    (keepalive) fall due per second, evenly spaced, whatever\n"
            "                    the server does; latency counts from when each fell due.\n"
            "                    CONNS is then the most connections at once (full, resume),\n"
            "                    or the connections the requests are spread over\n"
            "                    (keepalive: the schedule starts once all are up)\n"
            "  -q                no progress lines on stderr\n"
            "  -h, --help        this help\n"
            "\n"
            "Errors (connect refused, reset, TLS failure, bad response) are counted; the slot\n"
            "pauses 10 ms and goes on. The first %d are printed on stderr. The certificate is\n"
            "not verified. RLIMIT_NOFILE is raised to its hard limit; TCP_NODELAY is on.\n"
            "\n"
            "Output: one logfmt line on stdout at the end:\n"
            "  mode= conns= threads= seconds= connections= requests= errors= resumed=\n"
            "  rate= p50_ms= p90_ms= p99_ms= max_ms= bytes= mbps= min_ms=\n"
            "  [tickets= (full, resume)] [established= (idle, stall)] [closed= (stall)]\n"
            "  [offered= (--rate)]\n"
            "tickets: sessions the server sent on completed connections (TLS 1.3 tickets; a\n"
            "TLS 1.2 ticket in resume mode); full mode counts them but never keeps one.\n"
            "connections: completed connections (full, resume), else handshakes (stall: TCP\n"
            "connects); rate: connections/s (full, resume), requests/s (keepalive, bulk,\n"
            "idle), connections/s (stall); latency: connect started to response read (full,\n"
            "resume), request sent to response read (keepalive, bulk, idle), with --rate\n"
            "from when the connection or request fell due, from a\n"
            "log-bucketed histogram (< 1.6%% wide); bytes: response body bytes received\n"
            "during the run; mbps: bytes / 10^6 / seconds.\n",
            MAX_IN_FLIGHT, MAX_ERROR_REPORTS);
}

static bool parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;

    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_seconds(const char *s, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0 && v <= MAX_SECONDS))
        return false;
    *out = v;
    return true;
}

static bool parse_mode(const char *s, enum mode *out)
{
    for (int i = 0; i < NMODES; i++) {
        if (strcmp(s, mode_names[i]) == 0) {
            *out = (enum mode)i;
            return true;
        }
    }
    return false;
}

enum {
    OPT_TLS = 256,
    OPT_BODY,
    OPT_PATH,
    OPT_SIGALGS,
    OPT_GROUPS,
    OPT_CIPHERS,
    OPT_HOLD,
    OPT_RATE
};

static void bad_option(const char *opt, const char *value, const char *expected)
{
    warnx("%s %s: expected %s", opt, value, expected);
    exit(2);
}

static void parse_options(int argc, char **argv, struct options *opt)
{
    static const struct option longopts[] = {
        {"tls", required_argument, NULL, OPT_TLS},
        {"body", required_argument, NULL, OPT_BODY},
        {"path", required_argument, NULL, OPT_PATH},
        {"sigalgs", required_argument, NULL, OPT_SIGALGS},
        {"groups", required_argument, NULL, OPT_GROUPS},
        {"ciphers", required_argument, NULL, OPT_CIPHERS},
        {"hold", required_argument, NULL, OPT_HOLD},
        {"rate", required_argument, NULL, OPT_RATE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool have_mode = false;
    unsigned long v;
    int c;

    while ((c = getopt_long(argc, argv, "a:m:c:d:t:n:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'a':
            opt->addr_spec = optarg;
            break;
        case 'm':
            if (!parse_mode(optarg, &opt->mode))
                bad_option("-m", optarg, "full, resume, keepalive, bulk, idle or stall");
            have_mode = true;
            break;
        case 'c':
            if (!parse_uint(optarg, 1, MAX_CONNS, &v))
                bad_option("-c", optarg, "1..1000000");
            opt->conns = (unsigned)v;
            break;
        case 'd':
            if (!parse_seconds(optarg, &opt->seconds) || opt->seconds <= 0)
                bad_option("-d", optarg, "seconds, > 0");
            break;
        case 't':
            if (!parse_uint(optarg, 1, MAX_THREADS, &v))
                bad_option("-t", optarg, "1..256");
            opt->threads = (unsigned)v;
            break;
        case 'n':
            opt->sni = optarg;
            break;
        case 'q':
            opt->quiet = true;
            break;
        case OPT_TLS:
            if (strcmp(optarg, "1.2") != 0 && strcmp(optarg, "1.3") != 0)
                bad_option("--tls", optarg, "1.2 or 1.3");
            opt->tls = optarg[2] == '2' ? 12 : 13;
            break;
        case OPT_BODY:
            if (!parse_uint(optarg, 0, MAX_REQUEST_BODY, &v))
                bad_option("--body", optarg, "a size in bytes, at most 64 MiB");
            opt->body = v;
            break;
        case OPT_PATH:
            if (optarg[0] != '/' || strpbrk(optarg, " \t\r\n") != NULL)
                bad_option("--path", optarg, "a path starting with /, no blanks");
            opt->path = optarg;
            break;
        case OPT_SIGALGS:
            opt->sigalgs = optarg;
            break;
        case OPT_GROUPS:
            opt->groups = optarg;
            break;
        case OPT_CIPHERS:
            opt->ciphers = optarg;
            break;
        case OPT_HOLD:
            if (!parse_seconds(optarg, &opt->hold))
                bad_option("--hold", optarg, "seconds, >= 0");
            break;
        case OPT_RATE:
            if (!parse_seconds(optarg, &opt->rate) || opt->rate < 1)
                bad_option("--rate", optarg, "a rate per second, 1..86400");
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc || opt->addr_spec == NULL || !have_mode) {
        warnx(optind != argc ? "unexpected argument" : "-a and -m are required");
        usage(stderr);
        exit(2);
    }
    if (opt->threads > opt->conns) {
        if (!opt->quiet)
            warnx("%u threads for %u connections: using %u", opt->threads, opt->conns, opt->conns);
        opt->threads = opt->conns;
    }
    if (opt->hold < 0)
        opt->hold = opt->seconds;
    if (opt->rate > 0 && opt->mode != MODE_FULL && opt->mode != MODE_RESUME &&
        opt->mode != MODE_KEEPALIVE) {
        warnx("--rate applies to full, resume and keepalive only");
        exit(2);
    }
}

/* Splits "host:port" or "[v6]:port"; host may be empty. Exits on a malformed spec. */
static void split_addr(const char *spec, char *host, size_t hsize, const char **port)
{
    const char *colon = strrchr(spec, ':');
    size_t hlen;

    if (colon == NULL || colon[1] == '\0') {
        warnx("-a %s: expected HOST:PORT", spec);
        exit(2);
    }
    *port = colon + 1;
    hlen = (size_t)(colon - spec);
    if (hlen >= 2 && spec[0] == '[' && spec[hlen - 1] == ']') {
        spec++;
        hlen -= 2;
    }
    if (hlen >= hsize) {
        warnx("-a: host name too long");
        exit(2);
    }
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
}

static bool is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* Resolves -a; picks the default SNI. The host string lives as long as the program. */
static void resolve(struct shared *sh, struct options *opt)
{
    static char host[256];
    const char *port;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int err;

    split_addr(opt->addr_spec, host, sizeof(host), &port);
    err = getaddrinfo(host[0] != '\0' ? host : NULL, port, &hints, &res);
    if (err != 0) {
        warnx("-a %s: %s", opt->addr_spec, gai_strerror(err));
        exit(2);
    }
    memcpy(&sh->addr, res->ai_addr, res->ai_addrlen);
    sh->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    if (opt->sni == NULL)
        opt->sni = host[0] != '\0' && !is_ip_literal(host) ? host : "localhost";
}

static void build_request(struct shared *sh, const struct options *opt)
{
    const char *conn =
        opt->mode == MODE_FULL || opt->mode == MODE_RESUME ? "Connection: close\r\n" : "";
    char head[1024];
    int n;

    if (opt->body > 0)
        n = snprintf(head, sizeof(head),
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     opt->path, opt->sni, opt->body, conn);
    else
        n = snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", opt->path,
                     opt->sni, conn);
    if (n < 0 || (size_t)n >= sizeof(head)) {
        warnx("--path or -n too long");
        exit(2);
    }
    sh->request_len = (size_t)n + opt->body;
    sh->request = malloc(sh->request_len);
    if (sh->request == NULL) {
        warnx("out of memory for the request");
        exit(1);
    }
    memcpy(sh->request, head, (size_t)n);
    memset(sh->request + n, 'x', opt->body);
}

/* Raises the open-file limit to the hard limit; warns if it is still too low. */
static void raise_nofile(const struct options *opt)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)opt->conns + 64 + 2 * opt->threads;

    if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
        warnx("getrlimit: %s", strerror(errno));
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
            warnx("setrlimit: %s", strerror(errno));
    }
    if (rl.rlim_cur < need)
        warnx("open-file limit %llu < %llu needed for %u connections: expect EMFILE errors",
              (unsigned long long)rl.rlim_cur, (unsigned long long)need, opt->conns);
}

/* Blocks SIGINT and SIGTERM (the threads inherit the mask; main waits for them). */
static void signals_init(sigset_t *set)
{
    struct sigaction sa = {.sa_handler = SIG_IGN};

    if (sigemptyset(&sa.sa_mask) == -1 || sigaction(SIGPIPE, &sa, NULL) == -1 ||
        sigemptyset(set) == -1 || sigaddset(set, SIGINT) == -1 || sigaddset(set, SIGTERM) == -1 ||
        pthread_sigmask(SIG_BLOCK, set, NULL) != 0) {
        warnx("signal set-up: %s", strerror(errno));
        exit(1);
    }
}

/* ---------------------------------------------------------------- the run */

struct totals {
    uint64_t connections, requests, errors, bytes;
};

static struct totals totals_now(struct worker *ws, unsigned n)
{
    struct totals t = {0};

    for (unsigned i = 0; i < n; i++) {
        t.connections += count_get(&ws[i].connections);
        t.requests += count_get(&ws[i].requests);
        t.errors += count_get(&ws[i].errors);
        t.bytes += count_get(&ws[i].bytes);
    }
    return t;
}

static void progress(const struct options *opt, struct worker *ws, struct totals *last, uint64_t t0,
                     uint64_t now, uint64_t dt)
{
    struct totals t = totals_now(ws, opt->threads);
    double s = (double)dt / NS;

    fprintf(stderr, PROG ": %.0f s: %.0f connections/s, %.0f requests/s, %.1f MB/s, %llu errors\n",
            (double)(now - t0) / NS, (double)(t.connections - last->connections) / s,
            (double)(t.requests - last->requests) / s, (double)(t.bytes - last->bytes) / 1e6 / s,
            (unsigned long long)t.errors);
    *last = t;
}

/*
 * Waits until the run is over: -d seconds, or for idle --hold seconds after all are up,
 * or SIGINT/SIGTERM. Prints a progress line every second unless -q.
 */
static void run_wait(const struct options *opt, struct shared *sh, struct worker *ws, uint64_t t0,
                     const sigset_t *set)
{
    uint64_t deadline = t0 + (uint64_t)(opt->seconds * NS);
    uint64_t next_tick = t0 + NS, last_tick = t0;
    bool hold_set = false;
    struct totals last = {0};

    for (;;) {
        uint64_t now = now_ns(), wait;
        struct timespec ts;

        if (opt->mode == MODE_IDLE && !hold_set && atomic_load(&sh->all_established)) {
            deadline = atomic_load(&sh->established_ns) + (uint64_t)(opt->hold * NS);
            hold_set = true;
        }
        if (now >= deadline)
            return;
        if (!opt->quiet && now >= next_tick) {
            progress(opt, ws, &last, t0, now, now - last_tick);
            last_tick = now;
            next_tick += NS;
            continue;
        }
        wait = deadline - now;
        if (!opt->quiet && next_tick - now < wait)
            wait = next_tick - now;
        if (opt->mode == MODE_IDLE && !hold_set && wait > NS / 20)
            wait = NS / 20; /* notice "all established" soon */
        ts.tv_sec = (time_t)(wait / NS);
        ts.tv_nsec = (long)(wait % NS);
        if (sigtimedwait(set, NULL, &ts) > 0)
            return;
        if (errno != EAGAIN && errno != EINTR) {
            warnx("sigtimedwait: %s", strerror(errno));
            return;
        }
    }
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void summary(const struct options *opt, unsigned established, struct worker *ws,
                    double seconds)
{
    static struct hist lat; /* large: not on the stack */
    struct totals t = totals_now(ws, opt->threads);
    uint64_t resumed = 0, closed = 0, tickets = 0;
    double rate;

    for (unsigned i = 0; i < opt->threads; i++) {
        hist_merge(&lat, &ws[i].lat);
        resumed += ws[i].resumed;
        closed += ws[i].closed;
        tickets += ws[i].tickets;
    }
    if (opt->mode == MODE_KEEPALIVE || opt->mode == MODE_BULK || opt->mode == MODE_IDLE)
        rate = (double)t.requests / seconds;
    else
        rate = (double)t.connections / seconds;
    printf("mode=%s conns=%u threads=%u seconds=%.3f connections=%llu requests=%llu errors=%llu "
           "resumed=%llu rate=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f bytes=%llu "
           "mbps=%.2f min_ms=%.3f",
           mode_names[opt->mode], opt->conns, opt->threads, seconds,
           (unsigned long long)t.connections, (unsigned long long)t.requests,
           (unsigned long long)t.errors, (unsigned long long)resumed, rate,
           ms(hist_quantile(&lat, 0.50)), ms(hist_quantile(&lat, 0.90)),
           ms(hist_quantile(&lat, 0.99)), ms(lat.max), (unsigned long long)t.bytes,
           (double)t.bytes / 1e6 / seconds, ms(lat.min));
    if (opt->mode == MODE_FULL || opt->mode == MODE_RESUME)
        printf(" tickets=%llu", (unsigned long long)tickets);
    if (opt->mode == MODE_IDLE || opt->mode == MODE_STALL)
        printf(" established=%u", established);
    if (opt->mode == MODE_STALL)
        printf(" closed=%llu", (unsigned long long)closed);
    if (opt->rate > 0)
        printf(" offered=%.1f", opt->rate);
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct options opt = {.conns = 16, .seconds = 10, .threads = 1, .path = "/", .hold = -1};
    struct shared sh = {.opt = &opt};
    struct worker *ws;
    sigset_t set;
    uint64_t t0, t1, one = 1;

    parse_options(argc, argv, &opt);
    resolve(&sh, &opt);
    build_request(&sh, &opt);
    raise_nofile(&opt);
    signals_init(&set);
    sh.stop_fd = eventfd(0, EFD_CLOEXEC);
    ws = calloc(opt.threads, sizeof(*ws));
    if (sh.stop_fd == -1 || ws == NULL) {
        warnx("set-up: %s", strerror(errno));
        free(ws);
        free(sh.request);
        return 1;
    }
    unsigned per_thread_in_flight = (MAX_IN_FLIGHT + opt.threads - 1) / opt.threads;
    for (unsigned i = 0; i < opt.threads; i++)
        worker_init(&ws[i], &sh, opt.conns / opt.threads + (i < opt.conns % opt.threads),
                    per_thread_in_flight);
    if (!opt.quiet)
        warnx("%s: %u connections, %u thread(s), %.1f s, to %s (SNI %s)", mode_names[opt.mode],
              opt.conns, opt.threads, opt.seconds, opt.addr_spec, opt.sni);

    t0 = now_ns();
    for (unsigned i = 0; i < opt.threads; i++) {
        int err = pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
        if (err != 0) {
            warnx("pthread_create: %s", strerror(err));
            return 1;
        }
    }
    run_wait(&opt, &sh, ws, t0, &set);
    t1 = now_ns();
    unsigned established = atomic_load(&sh.established); /* before the threads close them */
    if (write(sh.stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one)) {
        warnx("write eventfd: %s", strerror(errno));
        return 1;
    }
    for (unsigned i = 0; i < opt.threads; i++)
        pthread_join(ws[i].thread, NULL);

    summary(&opt, established, ws, (double)(t1 - t0) / NS);
    for (unsigned i = 0; i < opt.threads; i++)
        worker_free(&ws[i]);
    free(ws);
    free(sh.request);
    close(sh.stop_fd);
    return 0;
}
