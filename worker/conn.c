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
#include <time.h>
#include <unistd.h>

#include "conf/addr.h"
#include "lib/logfmt.h"
#include "shm/permits.h"
#include "worker/backend.h"
#include "worker/handshake.h"
#include "worker/permit.h"
#include "worker/proxyread.h"
#include "worker/relay.h"
#include "worker/sockbio.h"
#include "worker/worker.h"

#define SPIN_GUARD_STREAK 100 /* consecutive no-progress wake-ups before we call it a spin */

#define NO_HANDSHAKE_RESULT SHM_HANDSHAKE_RESULTS

/*
 * Per end: the human line's words and level (a client's doing is info, and is logged
 * only at debug unless log-connections asks for every connection; trouble on our side
 * or the backend's is a warning), the stats, and the goodbye.
 */
static const struct {
    const char *what;
    enum log_level level;
    enum shm_close_reason reason;
    enum shm_handshake_result handshake; /* NO_HANDSHAKE_RESULT when not a handshake's end */
    bool notify_client; /* say close_notify first: the TLS session itself is healthy */
} conn_ends[] = {
    [END_DONE] = {"done", LOG_LEVEL_INFO, SHM_CLOSE_CLIENT_CLOSE, NO_HANDSHAKE_RESULT, false},
    [END_HANDSHAKE_TIMEOUT] = {"handshake timeout", LOG_LEVEL_INFO, SHM_CLOSE_HANDSHAKE_TIMEOUT,
                               SHM_HANDSHAKE_TIMEOUT, false},
    [END_HANDSHAKE_ABORTED] = {"aborted before ClientHello", LOG_LEVEL_INFO,
                               SHM_CLOSE_HANDSHAKE_ABORTED, SHM_HANDSHAKE_ABORTED, false},
    [END_HANDSHAKE_FAILED] = {"handshake failed", LOG_LEVEL_INFO, SHM_CLOSE_HANDSHAKE_ERROR,
                              SHM_HANDSHAKE_FAILED, false},
    [END_BACKEND_CONNECT_FAILED] = {"backend connect failed", LOG_LEVEL_WARNING,
                                    SHM_CLOSE_BACKEND_CONNECT_FAILED, NO_HANDSHAKE_RESULT, true},
    [END_BACKEND_CONNECT_TIMEOUT] = {"backend connect timeout", LOG_LEVEL_WARNING,
                                     SHM_CLOSE_BACKEND_CONNECT_FAILED, NO_HANDSHAKE_RESULT, true},
    [END_BACKEND_ERROR] = {"backend error", LOG_LEVEL_WARNING, SHM_CLOSE_BACKEND_ERROR,
                           NO_HANDSHAKE_RESULT, true},
    [END_CLIENT_ERROR] = {"client error", LOG_LEVEL_INFO, SHM_CLOSE_CLIENT_ERROR,
                          NO_HANDSHAKE_RESULT, false},
    [END_IDLE_TIMEOUT] = {"idle timeout", LOG_LEVEL_INFO, SHM_CLOSE_IDLE_TIMEOUT,
                          NO_HANDSHAKE_RESULT, true},
    [END_CLOSE_TIMEOUT] = {"close timeout", LOG_LEVEL_INFO, SHM_CLOSE_CLOSE_TIMEOUT,
                           NO_HANDSHAKE_RESULT, false},
    [END_SPINNING] = {"spinning", LOG_LEVEL_WARNING, SHM_CLOSE_SPINNING, NO_HANDSHAKE_RESULT,
                      false},
    [END_NO_RESOURCES] = {"out of resources", LOG_LEVEL_ERROR, SHM_CLOSE_NO_RESOURCES,
                          NO_HANDSHAKE_RESULT, true},
    /* Cut at drain-timeout: a close_notify would make a truncated stream look complete. */
    [END_SHUTDOWN] = {"shutdown", LOG_LEVEL_INFO, SHM_CLOSE_DRAINED, NO_HANDSHAKE_RESULT, false},
};

static const char *const conn_state_names[] = {
    [CONN_PROXY_IN] = "proxy_in", [CONN_HANDSHAKE] = "handshake", [CONN_CONNECTING] = "connecting",
    [CONN_RELAY] = "relay",       [CONN_CLOSING] = "closing",
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
    case CONN_PROXY_IN:
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

uint64_t conn_clock_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Reading a PROXY header is part of the handshake: its deadline, its count, its drain. */
static bool conn_state_is_handshake(enum conn_state state)
{
    return state == CONN_PROXY_IN || state == CONN_HANDSHAKE;
}

void conn_set_state(struct conn *c, enum conn_state state)
{
    bool was_handshake = c->transitions > 0 && conn_state_is_handshake(c->state);

    if (was_handshake)
        worker_handshakes_changed(c->worker, -1);
    if (conn_state_is_handshake(state))
        worker_handshakes_changed(c->worker, +1);
    conn_log(c, LOG_LEVEL_DEBUG, "%s -> %s",
             c->transitions == 0 ? "accepted" : conn_state_name(c->state), conn_state_name(state));
    c->state = state;
    c->transitions++;
    c->last_activity = ev_now(c->worker->loop);
    if (was_handshake && conn_state_is_handshake(state))
        return; /* handshake-timeout counts from accept, PROXY header included */
    ev_timer_stop(c->worker->loop, &c->timer);
    ev_timer_set(&c->timer, conn_state_timeout(c, state), 0);
    ev_timer_start(c->worker->loop, &c->timer);
}

void conn_limit_hold(struct conn *c)
{
    ev_tstamp idle = conn_state_timeout(c, c->state);

    ev_timer_stop(c->worker->loop, &c->timer);
    ev_timer_set(&c->timer, idle < HELD_OUTPUT_WAIT ? idle : HELD_OUTPUT_WAIT, 0);
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

static enum shm_close_reason conn_close_reason(const struct conn *c, enum conn_end end)
{
    if (end == END_DONE && c->ended_first == &c->backend)
        return SHM_CLOSE_BACKEND_CLOSE;
    return conn_ends[end].reason;
}

static void conn_count_close(struct conn *c, enum conn_end end, enum shm_close_reason reason)
{
    struct shm_counters *counters = c->worker->counters;

    stats_add(&counters->closes[reason], 1);
    if (conn_ends[end].handshake != NO_HANDSHAKE_RESULT)
        stats_add(&counters->handshakes[conn_ends[end].handshake], 1);
    if (reason == SHM_CLOSE_BACKEND_CONNECT_FAILED)
        stats_add(&counters->backend_connect_failures, 1);
}

/* "192.0.2.1:443" or "[2001:db8::1]:443" as two logfmt fields. */
static void conn_logfmt_peer(struct logfmt *f, const char *peer)
{
    const char *colon = strrchr(peer, ':');

    if (colon == NULL || strncmp(peer, "unix:", 5) == 0) {
        logfmt_str(f, "client", peer);
        logfmt_str(f, "client_port", NULL);
        return;
    }
    bool bracketed = peer[0] == '[' && colon > peer && colon[-1] == ']';
    logfmt_mem(f, "client", peer + bracketed, (size_t)(colon - peer) - 2 * bracketed);
    logfmt_str(f, "client_port", colon + 1);
}

static void conn_logfmt_tls(struct logfmt *f, const struct conn *c)
{
    SSL *ssl = c->client.ssl;
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;

    logfmt_str(f, "sni", ssl != NULL ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL);
    if (c->handshake_done)
        SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    logfmt_mem(f, "alpn", (const char *)alpn, alpn_len);
    logfmt_str(f, "tls", c->handshake_done ? SSL_get_version(ssl) : NULL);
    logfmt_str(f, "cipher", c->handshake_done ? SSL_get_cipher_name(ssl) : NULL);
    logfmt_bool(f, "resumed", c->handshake_done && SSL_session_reused(ssl));
    if (c->handshake_done)
        logfmt_millis(f, "handshake_ms", (double)c->handshake_us / 1000.0);
    else
        logfmt_str(f, "handshake_ms", NULL);
}

/* The connection log's record: one logfmt line, whatever log-level says. */
static void conn_log_record(const struct conn *c, enum conn_end end, enum shm_close_reason reason,
                            const char *detail)
{
    char line[1536];
    struct logfmt f;

    logfmt_init(&f, line, sizeof(line));
    logfmt_str(&f, "event", "connection");
    conn_logfmt_peer(&f, c->peer);
    logfmt_str(&f, "frontend", c->fe->conf->listen_text);
    conn_logfmt_tls(&f, c);
    logfmt_uint(&f, "bytes_client_to_backend", c->c2b.bytes);
    logfmt_uint(&f, "bytes_backend_to_client", c->b2c.bytes);
    logfmt_millis(&f, "duration_ms", (double)(conn_clock_us() - c->accepted_us) / 1000.0);
    logfmt_str(&f, "reason", stats_close_reason_name(reason));
    logfmt_str(&f, "state", conn_state_name(c->state));
    logfmt_str(&f, "error", detail);
    log_record(conn_ends[end].level, "%s", line);
}

static void conn_log_close(const struct conn *c, enum conn_end end, enum shm_close_reason reason,
                           const char *detail)
{
    if (c->worker->conf->log_connections) {
        conn_log_record(c, end, reason, detail);
        return;
    }
    enum log_level level = conn_ends[end].level;
    conn_log(c, level == LOG_LEVEL_INFO ? LOG_LEVEL_DEBUG : level,
             "connection closed: %s%s%s (state %s, %llu bytes in, %llu out)", conn_ends[end].what,
             detail[0] ? ": " : "", detail, conn_state_name(c->state), c->c2b.bytes, c->b2c.bytes);
}

/* Off the worker's ready list (conn_io_cb), if it is on it. */
static void conn_unqueue(struct endpoint *ep)
{
    struct worker *w = ep->conn->worker;

    if (ep->ready_events == 0)
        return;
    if (ep->ready_prev != NULL)
        ep->ready_prev->ready_next = ep->ready_next;
    else
        w->ready = ep->ready_next;
    if (ep->ready_next != NULL)
        ep->ready_next->ready_prev = ep->ready_prev;
    ep->ready_events = 0;
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
    enum shm_close_reason reason = conn_close_reason(c, end);
    conn_log_close(c, end, reason, detail);
    conn_count_close(c, end, reason);
    if (conn_state_is_handshake(c->state))
        worker_handshakes_changed(w, -1);
    permit_release(c);
    /* Best effort and nonblocking: a client that cannot take the alert now loses nothing. */
    if (conn_ends[end].notify_client && !conn_state_is_handshake(c->state) &&
        !(SSL_get_shutdown(c->client.ssl) & SSL_SENT_SHUTDOWN)) {
        ERR_clear_error();
        SSL_shutdown(c->client.ssl);
    }
    ERR_clear_error();
    (void)endpoint_release_output(&c->client);
    sockbio_release(&c->client);
    endpoint_discard_input(&c->client);
    ev_timer_stop(w->loop, &c->timer);
    conn_unqueue(&c->client);
    conn_unqueue(&c->backend);
    conn_close_endpoint(c, &c->client);
    conn_close_endpoint(c, &c->backend);
    relay_release(c);
    proxyread_release(c);
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

    stats_add(&w->counters->wakeups, 1);
    if (conn_progress_mark(c) != before) {
        c->spurious_streak = 0;
        c->last_activity = ev_now(w->loop);
        return;
    }
    stats_add(&w->counters->spurious_wakeups, 1);
    if (++c->spurious_streak >= SPIN_GUARD_STREAK && w->conf->spin_guard)
        conn_close(c, END_SPINNING, "%u wake-ups in a row moved nothing", c->spurious_streak);
}

/* One readiness of one endpoint: the state's step, then the wake-up's accounting. */
static void conn_step(struct endpoint *ep, int revents)
{
    struct conn *c = ep->conn;
    unsigned long long before = conn_progress_mark(c);
    int rc;

    switch (c->state) {
    case CONN_PROXY_IN:
        rc = proxyread_step(c);
        if (rc > 0) {
            /* The header is in; the handshake's start may close c, so account first. */
            conn_account_wakeup(c, before);
            handshake_start(c);
            return;
        }
        break;
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

/*
 * libev runs the callbacks of one poll's events last-reported first, so under load the
 * connection that became ready first waited for all the others: the same mean latency,
 * a much wider spread. The callback only queues the endpoint, at the head of the
 * worker's ready list, which so ends up in the order epoll reported; conn_run_ready then
 * serves them first come, first served.
 */
static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct endpoint *ep = io->data;
    struct worker *w = ep->conn->worker;

    (void)loop;
    if (revents & (EV_READ | EV_ERROR))
        ep->drained = false; /* the socket has something again: reads go to it (sockbio) */
    if (ep->ready_events == 0) {
        ep->ready_prev = NULL;
        ep->ready_next = w->ready;
        if (w->ready != NULL)
            w->ready->ready_prev = ep;
        w->ready = ep;
    }
    ep->ready_events |= revents;
}

void conn_run_ready(struct worker *w)
{
    while (w->ready != NULL) {
        struct endpoint *ep = w->ready;
        int revents = ep->ready_events;
        conn_unqueue(ep);
        conn_step(ep, revents);
    }
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct conn *c = timer->data;

    (void)revents;
    switch (c->state) {
    case CONN_PROXY_IN:
        conn_close(c, END_HANDSHAKE_TIMEOUT, "no complete PROXY header");
        return;
    case CONN_HANDSHAKE:
        conn_close(c, END_HANDSHAKE_TIMEOUT, NULL);
        return;
    case CONN_CONNECTING:
        conn_close(c, END_BACKEND_CONNECT_TIMEOUT, "%s after %gs", c->fe->conf->backend_text,
                   c->worker->conf->backend_connect_timeout);
        return;
    case CONN_RELAY:
    case CONN_CLOSING:
        if (c->client.out_held && relay_send_held(c) < 0)
            return;
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

void conn_new(struct worker *w, struct frontend *fe, int fd, int backend_reserve,
              const struct sockaddr *sa, socklen_t salen)
{
    struct conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        log_error("out of memory for a new connection on %s", fe->conf->listen_text);
        close(fd);
        if (backend_reserve >= 0)
            close(backend_reserve);
        return;
    }
    c->worker = w;
    c->fe = fe;
    c->permit = PERMIT_NONE;
    c->accepted_us = conn_clock_us();
    addr_format(sa, salen, c->peer, sizeof(c->peer));
    conn_init_endpoint(c, &c->client, "client");
    conn_init_endpoint(c, &c->backend, "backend");
    c->client.fd = fd;
    c->backend.fd = backend_reserve; /* its backend socket, not yet connected, or -1 */
    ev_init(&c->timer, conn_timer_cb);
    c->timer.data = c;
    worker_conn_added(w, c);
    if (fe->conf->accept_proxy)
        proxyread_start(c);
    else
        handshake_start(c);
}
