/*
 * A connection's life: one state machine, one deadline timer, one teardown.
 * Every wake-up is accounted: one that moved no byte and changed no state is spurious,
 * and a connection that keeps causing them is closed before it can spin a core.
 */
#include "config.h"

#include "worker/conn.h"

#include <errno.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/addr.h"
#include "shm/permits.h"
#include "worker/backend.h"
#include "worker/handshake.h"
#include "worker/permit.h"
#include "worker/relay.h"
#include "worker/sockbio.h"
#include "worker/worker.h"

#define SPIN_GUARD_STREAK 100 /* consecutive no-progress wake-ups before we call it a spin */

static const struct {
    const char *what;
    enum log_level level;
    bool notify_client; /* say close_notify first: the TLS session itself is healthy */
} conn_ends[] = {
    [END_DONE] = {"done", LOG_LEVEL_DEBUG, false},
    [END_HANDSHAKE_TIMEOUT] = {"handshake timeout", LOG_LEVEL_INFO, false},
    [END_HANDSHAKE_ABORTED] = {"aborted before ClientHello", LOG_LEVEL_INFO, false},
    [END_HANDSHAKE_FAILED] = {"handshake failed", LOG_LEVEL_INFO, false},
    [END_BACKEND_CONNECT_FAILED] = {"backend connect failed", LOG_LEVEL_WARNING, true},
    [END_BACKEND_CONNECT_TIMEOUT] = {"backend connect timeout", LOG_LEVEL_WARNING, true},
    [END_BACKEND_ERROR] = {"backend error", LOG_LEVEL_WARNING, true},
    [END_CLIENT_ERROR] = {"client error", LOG_LEVEL_INFO, false},
    [END_IDLE_TIMEOUT] = {"idle timeout", LOG_LEVEL_INFO, true},
    [END_CLOSE_TIMEOUT] = {"close timeout", LOG_LEVEL_INFO, false},
    [END_SPINNING] = {"spinning", LOG_LEVEL_WARNING, false},
    [END_NO_RESOURCES] = {"out of resources", LOG_LEVEL_ERROR, true},
    /* Cut at drain-timeout: a close_notify would make a truncated stream look complete. */
    [END_SHUTDOWN] = {"shutdown", LOG_LEVEL_INFO, false},
};

static const char *const conn_state_names[] = {
    [CONN_HANDSHAKE] = "handshake",
    [CONN_CONNECTING] = "connecting",
    [CONN_RELAY] = "relay",
    [CONN_CLOSING] = "closing",
};

const char *conn_state_name(enum conn_state state)
{
    return conn_state_names[state];
}

void conn_log(const struct conn *c, enum log_level level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (!log_level_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_msg(level, "client=%s frontend=%s: %s", c->peer, c->fe->conf->listen_text, msg);
}

static double conn_state_timeout(const struct conn *c, enum conn_state state)
{
    const struct conf *conf = c->worker->conf;

    switch (state) {
    case CONN_HANDSHAKE:
        return conf->handshake_timeout;
    case CONN_CONNECTING:
        return conf->backend_connect_timeout;
    case CONN_RELAY:
        return conf->idle_timeout;
    case CONN_CLOSING:
        return conf->close_timeout;
    }
    return conf->idle_timeout;
}

void conn_set_state(struct conn *c, enum conn_state state)
{
    conn_log(c, LOG_LEVEL_DEBUG, "%s -> %s",
             c->transitions == 0 ? "accepted" : conn_state_name(c->state), conn_state_name(state));
    c->state = state;
    c->transitions++;
    c->last_activity = ev_now(c->worker->loop);
    ev_timer_stop(c->worker->loop, &c->timer);
    ev_timer_set(&c->timer, conn_state_timeout(c, state), 0);
    ev_timer_start(c->worker->loop, &c->timer);
}

void conn_progressed(struct conn *c)
{
    c->transitions++;
}

void conn_watch(struct conn *c, struct endpoint *ep, int events)
{
    if (ep->fd < 0 || (ev_is_active(&ep->io) && (ep->io.events & (EV_READ | EV_WRITE)) == events))
        return;
    ev_io_stop(c->worker->loop, &ep->io);
    if (events == 0)
        return;
    ev_io_set(&ep->io, ep->fd, events);
    ev_io_start(c->worker->loop, &ep->io);
}

static void conn_count_end(struct worker *w, enum conn_end end)
{
    switch (end) {
    case END_HANDSHAKE_TIMEOUT:
        w->stats.handshake_timeouts++;
        break;
    case END_HANDSHAKE_ABORTED:
        w->stats.handshakes_aborted++;
        break;
    case END_HANDSHAKE_FAILED:
        w->stats.handshakes_failed++;
        break;
    case END_BACKEND_CONNECT_FAILED:
    case END_BACKEND_CONNECT_TIMEOUT:
        w->stats.backend_failures++;
        break;
    default:
        break;
    }
}

static void conn_close_endpoint(struct conn *c, struct endpoint *ep)
{
    ev_io_stop(c->worker->loop, &ep->io);
    if (ep->fd >= 0 && close(ep->fd) < 0)
        conn_log(c, LOG_LEVEL_DEBUG, "close %s: %s", ep->name, strerror(errno));
    ep->fd = -1;
}

void conn_close(struct conn *c, enum conn_end end, const char *fmt, ...)
{
    struct worker *w = c->worker;
    char detail[512] = "";

    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
    }
    conn_log(c, conn_ends[end].level,
             "connection closed: %s%s%s (state %s, %llu bytes in, %llu out)", conn_ends[end].what,
             detail[0] ? ": " : "", detail, conn_state_name(c->state), c->c2b.bytes, c->b2c.bytes);
    conn_count_end(w, end);
    permit_release(c);
    /* Best effort and nonblocking: a client that cannot take the alert now loses nothing. */
    if (conn_ends[end].notify_client && c->state != CONN_HANDSHAKE &&
        !(SSL_get_shutdown(c->client.ssl) & SSL_SENT_SHUTDOWN)) {
        ERR_clear_error();
        SSL_shutdown(c->client.ssl);
    }
    ERR_clear_error();
    (void)endpoint_flush(&c->client);
    sockbio_release(&c->client);
    endpoint_discard_input(&c->client);
    ev_timer_stop(w->loop, &c->timer);
    conn_close_endpoint(c, &c->client);
    conn_close_endpoint(c, &c->backend);
    relay_release(c);
    SSL_free(c->client.ssl);
    worker_conn_removed(w, c);
    free(c);
}

static unsigned long long conn_progress_mark(const struct conn *c)
{
    return endpoint_io_bytes(&c->client) + endpoint_io_bytes(&c->backend) + c->transitions;
}

/* Once a wake-up is handled: was it worth it? */
static void conn_account_wakeup(struct conn *c, unsigned long long before)
{
    struct worker *w = c->worker;

    w->stats.wakeups++;
    if (conn_progress_mark(c) != before) {
        c->spurious_streak = 0;
        c->last_activity = ev_now(w->loop);
        return;
    }
    w->stats.spurious_wakeups++;
    if (++c->spurious_streak >= SPIN_GUARD_STREAK)
        conn_close(c, END_SPINNING, "%u wake-ups in a row moved nothing", c->spurious_streak);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct endpoint *ep = io->data;
    struct conn *c = ep->conn;
    unsigned long long before = conn_progress_mark(c);
    int rc;

    (void)loop;
    switch (c->state) {
    case CONN_HANDSHAKE:
        rc = handshake_step(c);
        break;
    case CONN_CONNECTING:
        rc = backend_connected(c);
        break;
    default:
        rc = relay_on_io(c, ep, revents);
        break;
    }
    if (rc == 0)
        conn_account_wakeup(c, before);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct conn *c = timer->data;

    (void)revents;
    switch (c->state) {
    case CONN_HANDSHAKE:
        conn_close(c, END_HANDSHAKE_TIMEOUT, NULL);
        return;
    case CONN_CONNECTING:
        conn_close(c, END_BACKEND_CONNECT_TIMEOUT, "%s after %gs", c->fe->conf->backend_text,
                   c->worker->conf->backend_connect_timeout);
        return;
    case CONN_RELAY:
    case CONN_CLOSING:
        break;
    }
    /*
     * Relaying and closing time out on inactivity. Activity does not touch the timer
     * (that would cost a heap update per read): the deadline is checked here.
     */
    ev_tstamp until = c->last_activity + conn_state_timeout(c, c->state);
    if (until > ev_now(loop) + 1e-3) {
        ev_timer_set(timer, until - ev_now(loop), 0);
        ev_timer_start(loop, timer);
        return;
    }
    conn_close(c, c->state == CONN_RELAY ? END_IDLE_TIMEOUT : END_CLOSE_TIMEOUT, NULL);
}

static void conn_init_endpoint(struct conn *c, struct endpoint *ep, const char *name)
{
    ep->fd = -1;
    ep->conn = c;
    ep->name = name;
    ev_init(&ep->io, conn_io_cb);
    ep->io.data = ep;
}

void conn_new(struct worker *w, struct frontend *fe, int fd, const struct sockaddr *sa,
              socklen_t salen)
{
    struct conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        log_error("out of memory for a new connection on %s", fe->conf->listen_text);
        close(fd);
        return;
    }
    c->worker = w;
    c->fe = fe;
    c->permit = PERMIT_NONE;
    addr_format(sa, salen, c->peer, sizeof(c->peer));
    conn_init_endpoint(c, &c->client, "client");
    conn_init_endpoint(c, &c->backend, "backend");
    c->client.fd = fd;
    ev_init(&c->timer, conn_timer_cb);
    c->timer.data = c;
    worker_conn_added(w, c);
    handshake_start(c);
}
