/*
 * A worker: one libev loop serving every frontend it was handed. In this version the
 * process that parsed the config runs one worker in-process; the master/worker split
 * keeps this file as the worker's whole life.
 */
#include "config.h"

#include "worker/worker.h"

#include <signal.h>
#include <stdlib.h>

#include "lib/log.h"
#include "worker/accept.h"
#include "worker/conn.h"
#include "worker/handshake.h"

void worker_conn_added(struct worker *w, struct conn *c)
{
    c->next = w->conns;
    if (w->conns != NULL)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    if (w->nconns >= w->conf->max_connections)
        accept_update(w);
}

void worker_conn_removed(struct worker *w, struct conn *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    w->nconns--;
    if (w->accept_full)
        accept_update(w);
    if (w->draining && w->nconns == 0)
        ev_break(w->loop, EVBREAK_ALL);
}

static void worker_close_all(struct worker *w)
{
    while (w->conns != NULL)
        conn_close(w->conns, END_SHUTDOWN, NULL);
}

static void worker_drain_timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct worker *w = timer->data;

    (void)revents;
    log_warning("drain timeout: closing %u connections still open", w->nconns);
    worker_close_all(w);
    ev_break(loop, EVBREAK_ALL);
}

/* TERM/INT: stop accepting, let what is in flight finish, but never past drain-timeout. */
static void worker_drain(struct worker *w, const char *why)
{
    if (w->draining)
        return;
    log_info("%s: draining %u connections (at most %gs)", why, w->nconns, w->conf->drain_timeout);
    accept_stop(w);
    if (w->nconns == 0) {
        ev_break(w->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_init(&w->drain_timer, worker_drain_timeout_cb, w->conf->drain_timeout, 0);
    w->drain_timer.data = w;
    ev_timer_start(w->loop, &w->drain_timer);
}

static void worker_signal_cb(struct ev_loop *loop, ev_signal *sig, int revents)
{
    struct worker *w = sig->data;

    (void)revents;
    switch (sig->signum) {
    case SIGTERM:
        worker_drain(w, "SIGTERM");
        break;
    case SIGINT:
        worker_drain(w, "SIGINT");
        break;
    case SIGQUIT:
        log_info("SIGQUIT: closing %u connections now", w->nconns);
        accept_stop(w);
        worker_close_all(w);
        ev_break(loop, EVBREAK_ALL);
        break;
    case SIGHUP:
        log_warning("SIGHUP: this version cannot reload; restart sluice to apply changes");
        break;
    case SIGUSR1:
        log_info("SIGUSR1: nothing to reopen, this version logs to standard error only");
        break;
    default:
        break;
    }
}

static void worker_watch_signals(struct worker *w)
{
    struct {
        ev_signal *watcher;
        int signum;
    } signals[] = {
        {&w->sig_term, SIGTERM}, {&w->sig_int, SIGINT},   {&w->sig_quit, SIGQUIT},
        {&w->sig_hup, SIGHUP},   {&w->sig_usr1, SIGUSR1},
    };

    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        ev_signal_init(signals[i].watcher, worker_signal_cb, signals[i].signum);
        signals[i].watcher->data = w;
        ev_signal_start(w->loop, signals[i].watcher);
        ev_unref(w->loop); /* signal watchers alone must not keep the loop alive */
    }
}

static void worker_unwatch_signals(struct worker *w)
{
    ev_signal *signals[] = {&w->sig_term, &w->sig_int, &w->sig_quit, &w->sig_hup, &w->sig_usr1};

    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        ev_ref(w->loop);
        ev_signal_stop(w->loop, signals[i]);
    }
}

static void worker_log_stats(const struct worker *w)
{
    const struct worker_stats *s = &w->stats;

    log_info("stats: accepted=%llu handshakes_ok=%llu handshakes_failed=%llu "
             "handshake_timeouts=%llu handshakes_aborted=%llu backend_failures=%llu "
             "bytes_client_to_backend=%llu bytes_backend_to_client=%llu wakeups=%llu "
             "spurious_wakeups=%llu log_lines_dropped=%lu",
             s->accepted, s->handshakes_ok, s->handshakes_failed, s->handshake_timeouts,
             s->handshakes_aborted, s->backend_failures, s->bytes_client_to_backend,
             s->bytes_backend_to_client, s->wakeups, s->spurious_wakeups, log_dropped_lines());
}

int worker_run(const struct conf *conf, struct frontend *frontends, size_t nfrontends)
{
    struct worker w = {
        .conf = conf,
        .frontends = frontends,
        .nfrontends = nfrontends,
    };

    w.loop = ev_default_loop(EVFLAG_AUTO);
    if (w.loop == NULL) {
        log_error("cannot initialise the event loop (bad LIBEV_FLAGS?)");
        return 2;
    }
    for (size_t i = 0; i < nfrontends; i++)
        handshake_setup_ctx(frontends[i].ctx);
    if (accept_start(&w) < 0)
        return 2;
    worker_watch_signals(&w);
    log_info("sluice " PACKAGE_VERSION " ready");
    ev_run(w.loop, 0);
    ev_timer_stop(w.loop, &w.drain_timer);
    worker_close_all(&w);
    accept_free(&w);
    worker_unwatch_signals(&w);
    worker_log_stats(&w);
    ev_loop_destroy(w.loop);
    return 0;
}
