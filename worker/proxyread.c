/*
 * Reading a load balancer's PROXY header off a client socket, before the TLS handshake,
 * without taking a byte of what follows it: the balancer may send the header and the
 * ClientHello in one segment, and OpenSSL must find the ClientHello in the socket. Where
 * the header's end is known (v2, or v1 once its CR is in) exactly that much is read;
 * where it is not (the first bytes, a v1 line), the bytes are peeked, parsed, and then
 * exactly the header's part of them is taken. Peeked bytes are never left in the socket
 * while we wait for readability: the level-triggered watcher would fire at once, again
 * and again.
 */
#include "config.h"

#include "worker/proxyread.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "conf/addr.h"
#include "worker/conn.h"
#include "worker/proxyparse.h"
#include "worker/worker.h"

struct proxyread {
    size_t have; /* header bytes taken from the socket so far */
    unsigned char buf[PROXYPARSE_MAX];
};

enum take { TAKE_MORE, TAKE_AGAIN, TAKE_CLOSED };

void proxyread_start(struct conn *c)
{
    conn_set_state(c, CONN_PROXY_IN);
    c->proxyread = malloc(sizeof(*c->proxyread));
    if (c->proxyread == NULL) {
        conn_close(c, END_NO_RESOURCES, "no memory for a PROXY header");
        return;
    }
    c->proxyread->have = 0;
    conn_watch(c, &c->client, EV_READ);
}

void proxyread_release(struct conn *c)
{
    free(c->proxyread);
    c->proxyread = NULL;
    free(c->proxied);
    c->proxied = NULL;
}

/* A closed or broken socket: before any byte it is an abort, like a TCP health check. */
static void proxyread_lost(struct conn *c, int err)
{
    size_t have = c->proxyread->have;

    if (have == 0)
        conn_close(c, END_HANDSHAKE_ABORTED, NULL);
    else if (err == 0)
        conn_close(c, END_HANDSHAKE_FAILED, "PROXY header: truncated, EOF after %zu bytes", have);
    else
        conn_close(c, END_HANDSHAKE_FAILED, "PROXY header: after %zu bytes: %s", have,
                   strerror(err));
}

/* recv(2) into the header buffer: bytes, 0 when there are none now, -1 when closed. */
static ssize_t proxyread_recv(struct conn *c, size_t len, int flags)
{
    struct proxyread *pr = c->proxyread;
    ssize_t n;

    do
        n = recv(c->client.fd, pr->buf + pr->have, len, flags);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    proxyread_lost(c, n < 0 ? errno : 0);
    return -1;
}

/* Take n bytes that belong to the header. */
static enum take proxyread_take(struct conn *c, size_t n)
{
    ssize_t got = proxyread_recv(c, n, 0);

    if (got < 0)
        return TAKE_CLOSED;
    c->proxyread->have += (size_t)got;
    c->client.wire_bytes += (size_t)got; /* consumed bytes are progress for the spin guard */
    return got > 0 ? TAKE_MORE : TAKE_AGAIN;
}

/* The header's end is unknown: look at up to `more` bytes, then take the header's part. */
static enum take proxyread_peek(struct conn *c, size_t more)
{
    struct proxyread *pr = c->proxyread;
    struct proxyparse_result r;
    ssize_t seen = proxyread_recv(c, more, MSG_PEEK);

    if (seen <= 0)
        return seen < 0 ? TAKE_CLOSED : TAKE_AGAIN;
    proxyparse(pr->buf, pr->have + (size_t)seen, &r);
    /* Done: up to its end. Incomplete: all of it is header. Bad: it closes anyway. */
    size_t header = r.status == PROXYPARSE_DONE ? r.len - pr->have : (size_t)seen;
    enum take took = proxyread_take(c, header);
    if (took == TAKE_AGAIN) {
        /* Peeked bytes are in the socket until someone reads them: this cannot happen. */
        conn_close(c, END_HANDSHAKE_FAILED, "PROXY header: %zd bytes peeked, none readable", seen);
        return TAKE_CLOSED;
    }
    return took;
}

/* The header's addresses stand for the socket's from now on: in logs and towards the backend. */
static int proxyread_done(struct conn *c, const struct proxyparse_result *r)
{
    char client[sizeof(c->peer)];

    free(c->proxyread);
    c->proxyread = NULL;
    if (r->local) {
        conn_log(c, LOG_LEVEL_DEBUG, "PROXY v%u header: no addresses, keeping the connection's",
                 r->version);
        return 1;
    }
    c->proxied = malloc(sizeof(*c->proxied));
    if (c->proxied == NULL) {
        conn_close(c, END_NO_RESOURCES, "no memory for the PROXY header's addresses");
        return -1;
    }
    c->proxied->src = r->src;
    c->proxied->dst = r->dst;
    addr_format((const struct sockaddr *)&r->src, sizeof(r->src), client, sizeof(client));
    conn_log(c, LOG_LEVEL_DEBUG, "PROXY v%u header: client %s", r->version, client);
    memcpy(c->peer, client, sizeof(c->peer));
    return 1;
}

int proxyread_step(struct conn *c)
{
    struct proxyparse_result r;

    /* Each round takes at least one byte or returns: at most PROXYPARSE_MAX rounds. */
    for (;;) {
        struct proxyread *pr = c->proxyread;
        proxyparse(pr->buf, pr->have, &r);
        if (r.status == PROXYPARSE_DONE)
            return proxyread_done(c, &r);
        if (r.status == PROXYPARSE_ERROR) {
            conn_close(c, END_HANDSHAKE_FAILED, "PROXY header: %s", r.error);
            return -1;
        }
        enum take took = r.certain > 0 ? proxyread_take(c, r.certain) : proxyread_peek(c, r.more);
        if (took == TAKE_CLOSED)
            return -1;
        if (took == TAKE_AGAIN)
            return 0;
    }
}
