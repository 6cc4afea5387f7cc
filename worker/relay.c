/*
 * Relay: each direction moves source -> bounded buffer -> sink, with one function for
 * both directions. A side that cannot take more stops the other side's reads
 * (backpressure). Each operation that returns "again" records which readiness it waits
 * for, and only that readiness is watched: a level-triggered watcher on something we
 * will not act upon is how the close_notify busy loop happens.
 */
#include "config.h"

#include "worker/relay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "worker/conn.h"
#include "worker/fault.h"
#include "worker/proxyheader.h"
#include "worker/sockbio.h"
#include "worker/worker.h"

/*
 * Four TLS records: a download's recv(2) from the backend and an upload's send(2) to it
 * move four records' worth at a time. A step reads into the worker's scratch buffer for
 * its direction; a connection owns memory only for bytes its sink would not take, so an
 * idle connection holds none and a busy one needs no malloc per step.
 */
#define RELAY_BUF_SIZE (64 * 1024)
#define RELAY_ROUNDS 4 /* per wake-up, so one busy connection cannot hog the loop */

enum step { STEP_IDLE, STEP_MOVED, STEP_CLOSED };

static char *relay_scratch[2]; /* client to backend, backend to client */

static size_t relay_buffered(const struct relay_dir *d)
{
    return d->end - d->start;
}

static char **relay_scratch_of(const struct conn *c, const struct relay_dir *d)
{
    return &relay_scratch[d == &c->c2b ? 0 : 1];
}

static bool relay_full(const struct relay_dir *d)
{
    return d->buf != NULL && relay_buffered(d) == d->cap;
}

static void relay_drop_buffer(const struct conn *c, struct relay_dir *d)
{
    if (d->buf != *relay_scratch_of(c, d))
        free(d->buf);
    d->buf = NULL;
    d->start = d->end = d->cap = 0;
}

static enum step relay_fail(struct conn *c, struct endpoint *ep)
{
    conn_close(c, ep == &c->client ? END_CLIENT_ERROR : END_BACKEND_ERROR, "%s", ep->why);
    return STEP_CLOSED;
}

/* Make room at the end of the buffer; false when it is full (backpressure) or no memory. */
static bool relay_make_room(const struct conn *c, struct relay_dir *d)
{
    if (d->buf == NULL) {
        char **scratch = relay_scratch_of(c, d);
        if (*scratch == NULL && (*scratch = malloc(RELAY_BUF_SIZE)) == NULL)
            return false;
        d->buf = *scratch;
        d->cap = RELAY_BUF_SIZE;
        return true;
    }
    if (d->end < d->cap)
        return true;
    if (d->start == 0)
        return false;
    /* The TLS sink was set up with SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER for this. */
    memmove(d->buf, d->buf + d->start, relay_buffered(d));
    d->end -= d->start;
    d->start = 0;
    return true;
}

static enum step relay_read_once(struct conn *c, struct relay_dir *d)
{
    size_t n;
    int want = 0;

    if (d->state != DIR_OPEN || d->src_blocked || relay_full(d))
        return STEP_IDLE;
    if (!relay_make_room(c, d)) {
        conn_close(c, END_NO_RESOURCES, "no memory for a relay buffer");
        return STEP_CLOSED;
    }
    switch (d->src->ops->read(d->src, d->buf + d->end, d->cap - d->end, &n, &want)) {
    case IO_DONE:
        d->src_blocked = want;
        d->end += n;
        return STEP_MOVED;
    case IO_AGAIN:
        d->src_blocked = want;
        if (relay_buffered(d) == 0)
            relay_drop_buffer(c, d);
        return STEP_IDLE;
    case IO_EOF:
        conn_log(c, LOG_LEVEL_DEBUG, "%s ended its stream", d->src->name);
        if (c->ended_first == NULL)
            c->ended_first = d->src;
        d->state = DIR_DRAINING;
        if (relay_buffered(d) == 0)
            relay_drop_buffer(c, d);
        conn_progressed(c);
        return STEP_MOVED;
    case IO_FAIL:
        break;
    }
    return relay_fail(c, d->src);
}

static enum step relay_write_once(struct conn *c, struct relay_dir *d)
{
    size_t n;
    int want = 0;

    if (relay_buffered(d) == 0 || d->dst_blocked)
        return STEP_IDLE;
    switch (d->dst->ops->write(d->dst, d->buf + d->start, relay_buffered(d), &n, &want)) {
    case IO_DONE: {
        size_t own = n < d->own_bytes ? n : d->own_bytes;
        d->own_bytes -= own;
        d->dst_blocked = want;
        d->start += n;
        d->bytes += n - own;
        stats_add(d == &c->c2b ? &c->worker->counters->bytes_client_to_backend
                               : &c->worker->counters->bytes_backend_to_client,
                  n - own);
        if (d->start == d->end)
            relay_drop_buffer(c, d);
        return STEP_MOVED;
    }
    case IO_AGAIN:
        d->dst_blocked = want;
        return STEP_IDLE;
    case IO_EOF:
    case IO_FAIL:
        break;
    }
    return relay_fail(c, d->dst);
}

/* Fill the buffer: a TLS source gives one record per read. */
static enum step relay_read(struct conn *c, struct relay_dir *d)
{
    enum step result = STEP_IDLE, step;

    while ((step = relay_read_once(c, d)) == STEP_MOVED)
        result = STEP_MOVED;
    return step == STEP_CLOSED ? STEP_CLOSED : result;
}

/* Empty the buffer: a TLS sink takes one record per write. */
static enum step relay_write(struct conn *c, struct relay_dir *d)
{
    enum step result = STEP_IDLE, step;

    while ((step = relay_write_once(c, d)) == STEP_MOVED)
        result = STEP_MOVED;
    return step == STEP_CLOSED ? STEP_CLOSED : result;
}

/*
 * The other direction is over and the client is owed nothing: once this one ends, the
 * connection closes, and close(2) ends a plaintext sink's stream as shutdown(2) would.
 */
static bool relay_closes_next(const struct conn *c, const struct relay_dir *d)
{
    const struct relay_dir *other = d == &c->c2b ? &c->b2c : &c->c2b;

    return d->dst->ssl == NULL && other->state == DIR_SHUT && !endpoint_output_pending(&c->client);
}

/* Source ended and everything is delivered: end the sink's stream too (half-close). */
static enum step relay_shutdown(struct conn *c, struct relay_dir *d)
{
    int want;

    if (d->state != DIR_DRAINING || relay_buffered(d) != 0 || d->dst_blocked)
        return STEP_IDLE;
    if (relay_closes_next(c, d)) {
        d->state = DIR_SHUT;
        conn_progressed(c);
        return STEP_MOVED;
    }
    switch (d->dst->ops->shutdown(d->dst, &want)) {
    case IO_DONE:
        conn_log(c, LOG_LEVEL_DEBUG, "ended the stream to the %s", d->dst->name);
        d->state = DIR_SHUT;
        conn_progressed(c);
        return STEP_MOVED;
    case IO_AGAIN:
        d->dst_blocked = want;
        return STEP_IDLE;
    case IO_EOF:
    case IO_FAIL:
        break;
    }
    return relay_fail(c, d->dst);
}

/* One pass over a direction: read what fits, write what is buffered, end the stream. */
static enum step relay_step(struct conn *c, struct relay_dir *d)
{
    static enum step (*const ops[])(struct conn *, struct relay_dir *) = {relay_read, relay_write,
                                                                          relay_shutdown};
    enum step result = STEP_IDLE;

    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        enum step step = ops[i](c, d);
        if (step == STEP_CLOSED)
            return STEP_CLOSED;
        if (step == STEP_MOVED)
            result = STEP_MOVED;
    }
    return result;
}

/* What this direction needs from ep's fd: what a blocked operation asked for, else natural. */
static int relay_interest(const struct relay_dir *d, const struct endpoint *ep)
{
    int events = 0;

    if (d->src == ep && d->state == DIR_OPEN && !relay_full(d))
        events |= d->src_blocked ? d->src_blocked : EV_READ;
    if (d->dst == ep && (relay_buffered(d) > 0 || d->state == DIR_DRAINING))
        events |= d->dst_blocked ? d->dst_blocked : EV_WRITE;
    return events;
}

static void relay_watch(struct conn *c)
{
    conn_watch(c, &c->client,
               relay_interest(&c->c2b, &c->client) | relay_interest(&c->b2c, &c->client) |
                   (endpoint_output_pending(&c->client) ? EV_WRITE : 0) |
                   fault_extra_client_events(c));
    conn_watch(c, &c->backend,
               relay_interest(&c->c2b, &c->backend) | relay_interest(&c->b2c, &c->backend));
}

/* The step is over: keep what the sink refused in memory of the connection's own. */
static bool relay_detach(struct conn *c, struct relay_dir *d)
{
    size_t left = relay_buffered(d);

    if (d->buf != *relay_scratch_of(c, d))
        return true;
    if (left == 0) {
        relay_drop_buffer(c, d);
        return true;
    }
    char *own = malloc(left);
    if (own == NULL)
        return false;
    /* The TLS sink was set up with SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER for this. */
    memcpy(own, d->buf + d->start, left);
    d->buf = own;
    d->start = 0;
    d->end = d->cap = left;
    return true;
}

/*
 * Our close_notify is out: end the client's TCP stream too, as a server that closes
 * would, while the client's own direction stays open (half-close). Its close then answers
 * ours, so the TIME_WAIT is sluice's and not the client's: a balancer or a load tool in
 * front that opens many connections does not run out of source ports.
 */
static bool relay_end_client_stream(struct conn *c)
{
    if (c->client.fin_sent)
        return true;
    c->client.fin_sent = true;
    /* ENOTCONN: the client is gone already, so there is no one left to tell. */
    if (shutdown(c->client.fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        endpoint_failed(&c->client, "shutdown: %s", strerror(errno));
        relay_fail(c, &c->client);
        return false;
    }
    return true;
}

static int relay_pump(struct conn *c)
{
    int round;

    for (round = 0; round < RELAY_ROUNDS; round++) {
        enum step c2b = relay_step(c, &c->c2b);
        if (c2b == STEP_CLOSED)
            return -1;
        enum step b2c = relay_step(c, &c->b2c);
        if (b2c == STEP_CLOSED)
            return -1;
        if (c2b == STEP_IDLE && b2c == STEP_IDLE)
            break;
    }
    if (!relay_detach(c, &c->c2b) || !relay_detach(c, &c->b2c)) {
        conn_close(c, END_NO_RESOURCES, "no memory for a relay buffer");
        return -1;
    }
    /* The wake-up's records leave together; the connection is done once they are out. */
    if (endpoint_flush(&c->client) == IO_FAIL) {
        relay_fail(c, &c->client);
        return -1;
    }
    if (c->c2b.state == DIR_SHUT && c->b2c.state == DIR_SHUT &&
        !endpoint_output_pending(&c->client)) {
        conn_close(c, END_DONE, NULL);
        return -1;
    }
    if (c->b2c.state == DIR_SHUT && !endpoint_output_pending(&c->client) &&
        !relay_end_client_stream(c))
        return -1;
    if (c->b2c.state == DIR_SHUT && c->state == CONN_RELAY)
        conn_set_state(c, CONN_CLOSING);
    relay_watch(c);
    /* Records already decrypted inside OpenSSL make no fd readable: come back for them. */
    if (round == RELAY_ROUNDS && c->c2b.state == DIR_OPEN && SSL_has_pending(c->client.ssl))
        ev_feed_event(c->worker->loop, &c->client.io, EV_READ);
    return 0;
}

/* The PROXY header leads the client-to-backend buffer: the relay's writes send it first. */
static bool relay_proxy_header(struct conn *c)
{
    struct relay_dir *d = &c->c2b;

    if (!relay_make_room(c, d)) {
        conn_close(c, END_NO_RESOURCES, "no memory for a relay buffer");
        return false;
    }
    d->end = d->own_bytes = proxyheader_build(c, d->buf, d->cap);
    if (d->end == 0) {
        conn_close(c, END_NO_RESOURCES, "the PROXY header does not fit in %zu bytes", d->cap);
        return false;
    }
    return true;
}

int relay_send_held(struct conn *c)
{
    switch (endpoint_release_output(&c->client)) {
    case IO_FAIL:
        relay_fail(c, &c->client);
        return -1;
    case IO_AGAIN:
        relay_watch(c);
        return 0;
    default:
        return 0;
    }
}

int relay_start(struct conn *c)
{
    /*
     * Start from what is known, not with reads that would say EAGAIN: the handshake's last
     * read tells whether the client has more, and a new backend has said nothing yet.
     */
    bool client_drained = c->client.drained && !SSL_has_pending(c->client.ssl);
    c->c2b = (struct relay_dir){
        .src = &c->client, .dst = &c->backend, .src_blocked = client_drained ? EV_READ : 0};
    c->b2c = (struct relay_dir){.src = &c->backend, .dst = &c->client, .src_blocked = EV_READ};
    conn_set_state(c, CONN_RELAY);
    if (c->fe->conf->proxy_protocol != PROXY_PROTOCOL_OFF && !relay_proxy_header(c))
        return -1;
    if (c->client.out_held)
        conn_limit_hold(c);
    return relay_pump(c);
}

static void relay_unblock(struct relay_dir *d, const struct endpoint *ep, int revents)
{
    if (revents & EV_ERROR)
        revents |= EV_READ | EV_WRITE;
    if (d->src == ep && (d->src_blocked & revents))
        d->src_blocked = 0;
    if (d->dst == ep && (d->dst_blocked & revents))
        d->dst_blocked = 0;
}

int relay_on_io(struct conn *c, struct endpoint *ep, int revents)
{
    relay_unblock(&c->c2b, ep, revents);
    relay_unblock(&c->b2c, ep, revents);
    return relay_pump(c);
}

void relay_release(struct conn *c)
{
    relay_drop_buffer(c, &c->c2b);
    relay_drop_buffer(c, &c->b2c);
}
