/*
 * A worker: one libev loop serving its slot's listening sockets (and an orphaned slot's
 * when the master asks), beating its heart to the master over the control channel.
 * It drains and exits when retired, signalled, or when its master is gone.
 */
#include "config.h"

#include "worker/worker.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "lib/control.h"
#include "lib/log.h"
#include "worker/accept.h"
#include "worker/conn.h"
#include "worker/fault.h"
#include "worker/handshake.h"
#include "worker/permit.h"

void worker_conn_added(struct worker *w, struct conn *c)
{
    c->next = w->conns;
    if (w->conns != NULL)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    atomic_store_explicit(&w->shm_slot->active_connections, w->nconns, memory_order_relaxed);
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
    atomic_store_explicit(&w->shm_slot->active_connections, w->nconns, memory_order_relaxed);
    if (w->accept_full)
        accept_update(w);
    if (w->draining && w->nconns == 0)
        ev_break(w->loop, EVBREAK_ALL);
}

void worker_handshakes_changed(struct worker *w, int delta)
{
    w->nhandshakes += (unsigned)delta;
    atomic_store_explicit(&w->shm_slot->active_handshakes, w->nhandshakes, memory_order_relaxed);
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

/* Stop accepting, let what is in flight finish, but never past drain-timeout. */
static void worker_drain(struct worker *w, const char *why)
{
    if (w->draining)
        return;
    accept_take_queued(w);
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
    default:
        /* HUP, USR1 and USR2 are the master's business (pkill may send them to us too). */
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
        {&w->sig_hup, SIGHUP},   {&w->sig_usr1, SIGUSR1}, {&w->sig_usr2, SIGUSR2},
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
    ev_signal *signals[] = {&w->sig_term, &w->sig_int,  &w->sig_quit,
                            &w->sig_hup,  &w->sig_usr1, &w->sig_usr2};

    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        ev_ref(w->loop);
        ev_signal_stop(w->loop, signals[i]);
    }
}

/* The exit line: what this process counted, for the log and for tests that read it. */
static void worker_log_stats(const struct worker *w)
{
    struct stats_counters s;

    stats_read(w->counters, &s);
    log_info("stats: accepted=%llu handshakes_ok=%llu handshakes_failed=%llu "
             "handshake_timeouts=%llu handshakes_aborted=%llu permit_waits=%llu "
             "backend_failures=%llu bytes_client_to_backend=%llu bytes_backend_to_client=%llu "
             "wakeups=%llu spurious_wakeups=%llu log_lines_dropped=%lu",
             (unsigned long long)s.accepted, (unsigned long long)s.handshakes[SHM_HANDSHAKE_OK],
             (unsigned long long)s.handshakes[SHM_HANDSHAKE_FAILED],
             (unsigned long long)s.handshakes[SHM_HANDSHAKE_TIMEOUT],
             (unsigned long long)s.handshakes[SHM_HANDSHAKE_ABORTED],
             (unsigned long long)s.permit_waits, (unsigned long long)s.backend_connect_failures,
             (unsigned long long)s.bytes_client_to_backend,
             (unsigned long long)s.bytes_backend_to_client, (unsigned long long)s.wakeups,
             (unsigned long long)s.spurious_wakeups, log_dropped_lines());
}

/* The control watcher and the heartbeat do not keep the loop alive: ref before stopping. */
static void worker_stop_heartbeat(struct worker *w)
{
    if (!ev_is_active(&w->heartbeat_timer))
        return;
    ev_ref(w->loop);
    ev_timer_stop(w->loop, &w->heartbeat_timer);
}

static void worker_stop_control(struct worker *w)
{
    if (!ev_is_active(&w->control_io))
        return;
    ev_ref(w->loop);
    ev_io_stop(w->loop, &w->control_io);
}

/*
 * A burst of handshakes leaves the heap's high-water mark behind (record buffers, key
 * shares): once a beat passes with no new connection, give the free pages back, so
 * a quiet worker holds what its connections use and no more. Not while connections
 * keep coming: the pages would only fault back in.
 */
static void worker_trim_heap_when_quiet(struct worker *w)
{
    uint64_t accepted = atomic_load_explicit(&w->counters->accepted, memory_order_relaxed);

    if (accepted == w->accepted_at_beat && accepted != w->accepted_at_trim) {
        malloc_trim(0);
        w->accepted_at_trim = accepted;
    }
    w->accepted_at_beat = accepted;
}

/*
 * The first beat says "ready": it is sent from inside the running loop. A beat the
 * master cannot take now (EAGAIN) is skipped; the next one will do.
 */
static void worker_heartbeat_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct worker *w = timer->data;
    enum control_type type = w->ready_sent ? CONTROL_HEARTBEAT : CONTROL_READY;

    (void)loop;
    (void)revents;
    atomic_store_explicit(&w->shm_slot->heartbeat_ms, shm_now_ms(), memory_order_relaxed);
    stats_set(&w->counters->log_lines_dropped, log_dropped_lines());
    worker_trim_heap_when_quiet(w);
    if (control_send(w->spec->control_fd, type, 0, -1) < 0) {
        if (errno != EAGAIN)
            log_errno(LOG_LEVEL_WARNING, "control channel: cannot send %s",
                      control_type_name(type));
        /* The master is gone: the control watcher sees the EOF and drains us. */
        if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
            worker_stop_heartbeat(w);
        return; /* anything else (a full buffer, ENOBUFS): the next beat will do */
    }
    if (!w->ready_sent) {
        w->ready_sent = true;
        fault_after_ready(w);
    }
}

static void worker_on_control(struct worker *w, const struct control_msg *msg, int fd)
{
    switch (msg->type) {
    case CONTROL_RETIRE:
        worker_drain(w, "retired by the master");
        break;
    case CONTROL_ADOPT:
        accept_adopt(w, msg->arg);
        break;
    case CONTROL_RELEASE:
        accept_release(w, msg->arg);
        break;
    case CONTROL_LOG_FILE:
        log_adopt_file_fd(fd); /* none passed: the new config logs to no file */
        fd = -1;
        break;
    default:
        log_warning("control channel: unexpected message %s", control_type_name(msg->type));
        break;
    }
    if (fd >= 0)
        close(fd);
}

/* EOF on the channel means the master is gone: never serve beside a new one. */
static void worker_control_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct worker *w = io->data;
    struct control_msg msg;
    int fd;

    (void)loop;
    (void)revents;
    for (;;) {
        int rc = control_recv(io->fd, &msg, &fd);
        if (rc > 0) {
            worker_on_control(w, &msg, fd);
            continue;
        }
        if (rc < 0 && errno == EAGAIN)
            return;
        if (rc < 0 && errno == EBADMSG) {
            log_warning("control channel: malformed message dropped");
            continue;
        }
        if (rc < 0)
            log_errno(LOG_LEVEL_WARNING, "control channel");
        worker_stop_control(w);
        worker_stop_heartbeat(w); /* nobody listens for it any more */
        worker_drain(w, "the master is gone");
        return;
    }
}

/* libev's pending callbacks, then the connections they queued, until nothing is left. */
static void worker_invoke_pending(struct ev_loop *loop)
{
    struct worker *w = ev_userdata(loop);

    do {
        ev_invoke_pending(loop);
        conn_run_ready(w);
    } while (ev_pending_count(loop) > 0);
}

static void worker_watch_master(struct worker *w)
{
    ev_io_init(&w->control_io, worker_control_cb, w->spec->control_fd, EV_READ);
    w->control_io.data = w;
    ev_io_start(w->loop, &w->control_io);
    ev_unref(w->loop);
    ev_timer_init(&w->heartbeat_timer, worker_heartbeat_cb, 0, w->conf->heartbeat_interval);
    w->heartbeat_timer.data = w;
    ev_timer_start(w->loop, &w->heartbeat_timer);
    ev_unref(w->loop);
}

static void worker_unwatch_master(struct worker *w)
{
    worker_stop_control(w);
    worker_stop_heartbeat(w);
}

int worker_main(const struct worker_spec *spec)
{
    struct worker w = {
        .spec = spec,
        .conf = spec->conf,
        .frontends = spec->frontends,
        .nfrontends = spec->nfrontends,
        .loop = EV_DEFAULT,
        .shm_slot = &spec->shm->slots[spec->shm_slot],
        .counters = &spec->shm->slots[spec->shm_slot].counters,
    };

    fault_at_start(spec->slot, spec->generation);
    for (size_t i = 0; i < w.nfrontends; i++)
        handshake_setup_ctx(w.frontends[i].ctx);
    permit_init(&w);
    ev_set_userdata(w.loop, &w);
    ev_set_invoke_pending_cb(w.loop, worker_invoke_pending);
    worker_watch_signals(&w);
    spec->forget_parent(spec->forget_parent_arg);
    if (accept_start(&w) < 0) {
        worker_unwatch_signals(&w);
        accept_free(&w);
        return 2;
    }
    worker_watch_master(&w);
    ev_run(w.loop, 0);
    ev_timer_stop(w.loop, &w.drain_timer);
    worker_close_all(&w);
    permit_stop(&w);
    accept_free(&w);
    worker_unwatch_master(&w);
    worker_unwatch_signals(&w);
    stats_set(&w.counters->log_lines_dropped, log_dropped_lines());
    worker_log_stats(&w);
    return 0;
}
