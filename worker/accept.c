/*
 * Accepting is cheap and bounded: take up to ACCEPT_BATCH connections per wake-up per
 * listener and hand each to its own state machine; no TLS work happens here, so a client
 * that stalls costs only its own deadline.
 */
#include "config.h"

#include "worker/accept.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "worker/conn.h"
#include "worker/worker.h"

#define ACCEPT_BATCH 32
#define ACCEPT_BACKOFF 0.1          /* seconds without accepting after EMFILE and friends */
#define ACCEPT_ERROR_LOG_EVERY 10.0 /* seconds between two logs of the same trouble */

struct listener {
    ev_io io;
    struct worker *worker;
    struct frontend *fe;
    int fd;
};

/* Out of descriptors or memory: stop accepting for a moment rather than spin on it. */
static void accept_back_off(struct worker *w)
{
    ev_tstamp now = ev_now(w->loop);

    if (now - w->accept_error_logged >= ACCEPT_ERROR_LOG_EVERY) {
        log_errno(LOG_LEVEL_WARNING,
                  "accept: pausing for %.1fs with %u connections open (%lu more since the last "
                  "report)",
                  ACCEPT_BACKOFF, w->nconns, w->accept_errors_unlogged);
        w->accept_error_logged = now;
        w->accept_errors_unlogged = 0;
    } else {
        w->accept_errors_unlogged++;
    }
    w->accept_backoff = true;
    ev_timer_set(&w->accept_backoff_timer, ACCEPT_BACKOFF, 0);
    ev_timer_start(w->loop, &w->accept_backoff_timer);
    accept_update(w);
}

/*
 * A client is taken from the queue only with a descriptor set aside for its backend
 * socket (relayd's accept reserve). Without it, a worker short of descriptors would
 * accept clients, do their handshakes and then fail them at connect time; with it, they
 * wait in the queue until descriptors free. The reserve is the backend socket itself,
 * made ahead and not yet connected, so it costs no call of its own: one is kept ready
 * while accepting (made at start, after each client takes one and when a pause ends).
 * Only a shortage of descriptors or memory stops accepting; a socket this host cannot
 * make at all (an IPv6 backend without IPv6) fails each connection at its backend
 * connect instead, which says why to the client's log line.
 */
static int frontend_backend_family(const struct frontend *fe)
{
    return fe->conf->backend.sa.ss_family;
}

static void accept_drop_reserve(struct worker *w)
{
    if (w->accept_reserve >= 0 && close(w->accept_reserve) < 0)
        log_errno(LOG_LEVEL_WARNING, "close the descriptor reserve");
    w->accept_reserve = -1;
}

static bool errno_is_shortage(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* Whether the next client of a frontend whose backend is of this family can be taken. */
static bool accept_have_reserve(struct worker *w, int family)
{
    if (w->accept_reserve >= 0 && w->accept_reserve_family == family)
        return true;
    accept_drop_reserve(w);
    w->accept_reserve = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    w->accept_reserve_family = family;
    return w->accept_reserve >= 0 || !errno_is_shortage(errno);
}

/* Returns false when this listener should not be drained further now. */
static bool accept_one(struct listener *l)
{
    struct worker *w = l->worker;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);

    int family = frontend_backend_family(l->fe);

    if (!accept_have_reserve(w, family)) {
        accept_back_off(w); /* errno says why: EMFILE, ENFILE, ENOMEM */
        return false;
    }
    int fd = accept4(l->fd, (struct sockaddr *)&ss, &sslen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        switch (errno) {
        case EAGAIN:
#if EAGAIN != EWOULDBLOCK
        case EWOULDBLOCK:
#endif
            return false;
        case EINTR:
        case ECONNABORTED:
        case EPERM: /* a firewall rule refused it */
        /* Network errors already pending on the new socket: accept(2) says retry. */
        case EPROTO:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETDOWN:
        case ENETUNREACH:
            return true;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            accept_back_off(w);
            return false;
        default:
            log_errno(LOG_LEVEL_ERROR, "accept on %s", l->fe->conf->listen_text);
            accept_back_off(w);
            return false;
        }
    }
    stats_add(&w->counters->accepted, 1);
    int reserve = w->accept_reserve;
    w->accept_reserve = -1;
    conn_new(w, l->fe, fd, reserve, (struct sockaddr *)&ss, sslen);
    if (!accept_have_reserve(w, family)) {
        accept_back_off(w);
        return false;
    }
    return !w->accept_full;
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct listener *l = io->data;
    bool accepted = false;

    (void)loop;
    (void)revents;
    stats_add(&l->worker->counters->wakeups, 1);
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        uint64_t before =
            atomic_load_explicit(&l->worker->counters->accepted, memory_order_relaxed);
        bool more = accept_one(l);
        accepted |=
            atomic_load_explicit(&l->worker->counters->accepted, memory_order_relaxed) != before;
        if (!more)
            break;
    }
    if (!accepted)
        stats_add(&l->worker->counters->spurious_wakeups, 1);
}

static void accept_backoff_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct worker *w = timer->data;

    (void)loop;
    (void)revents;
    w->accept_backoff = false;
    if (!accept_have_reserve(w, frontend_backend_family(&w->frontends[0]))) {
        accept_back_off(w);
        return;
    }
    accept_update(w);
}

/* Watch slot's socket of every frontend: a worker's own slot, or one it adopted. */
static int accept_add_slot(struct worker *w, unsigned slot)
{
    struct listener *set = calloc(w->nfrontends, sizeof(*set));

    if (set == NULL) {
        log_error("out of memory for the listeners of slot %u", slot);
        return -1;
    }
    for (size_t i = 0; i < w->nfrontends; i++) {
        struct listener *l = &set[i];
        l->worker = w;
        l->fe = &w->frontends[i];
        l->fd = l->fe->listen_fds[slot];
        ev_io_init(&l->io, accept_cb, l->fd, EV_READ);
        l->io.data = l;
    }
    w->listeners[slot] = set;
    return 0;
}

static void accept_remove_slot(struct worker *w, unsigned slot)
{
    struct listener *set = w->listeners[slot];

    if (set == NULL)
        return;
    for (size_t i = 0; i < w->nfrontends; i++)
        ev_io_stop(w->loop, &set[i].io);
    free(set);
    w->listeners[slot] = NULL;
}

int accept_start(struct worker *w)
{
    w->accept_reserve = -1;
    w->listeners = calloc(w->spec->nslots, sizeof(*w->listeners));
    if (w->listeners == NULL) {
        log_error("out of memory for %u listener slots", w->spec->nslots);
        return -1;
    }
    ev_init(&w->accept_backoff_timer, accept_backoff_cb);
    w->accept_backoff_timer.data = w;
    if (accept_add_slot(w, w->spec->slot) < 0)
        return -1;
    /* Not fatal: the first accept tries again, and pauses and says why if it must. */
    (void)accept_have_reserve(w, frontend_backend_family(&w->frontends[0]));
    accept_update(w);
    return 0;
}

void accept_adopt(struct worker *w, unsigned slot)
{
    if (w->draining || slot >= w->spec->nslots || slot == w->spec->slot ||
        w->listeners[slot] != NULL)
        return;
    if (accept_add_slot(w, slot) == 0) {
        log_info("accepting on the sockets of slot %u too while its worker is down", slot);
        accept_update(w);
    }
}

void accept_release(struct worker *w, unsigned slot)
{
    if (slot >= w->spec->nslots || slot == w->spec->slot || w->listeners[slot] == NULL)
        return;
    accept_remove_slot(w, slot);
    log_info("no longer accepting on the sockets of slot %u", slot);
}

void accept_update(struct worker *w)
{
    bool want = !w->draining && !w->accept_backoff && w->nconns < w->conf->max_connections;

    w->accept_full = w->nconns >= w->conf->max_connections;
    for (unsigned slot = 0; w->listeners != NULL && slot < w->spec->nslots; slot++) {
        struct listener *set = w->listeners[slot];
        for (size_t i = 0; set != NULL && i < w->nfrontends; i++) {
            if (want)
                ev_io_start(w->loop, &set[i].io);
            else
                ev_io_stop(w->loop, &set[i].io);
        }
    }
}

/*
 * Before a drain closes the listening sockets: closing one resets every connection still
 * in its queue, and a balancer that saw such a connection established cannot retry it
 * elsewhere. At shutdown the master has stopped new ones from arriving by now
 * (listen_drop_syns); at a reload the next generation accepts on the same sockets.
 */
void accept_take_queued(struct worker *w)
{
    for (unsigned slot = 0; w->listeners != NULL && slot < w->spec->nslots; slot++) {
        struct listener *set = w->listeners[slot];
        for (size_t i = 0; set != NULL && i < w->nfrontends; i++)
            while (!w->accept_backoff && accept_one(&set[i]))
                ;
    }
}

/*
 * Draining for good: also close this process's copies of the listening sockets, so that
 * once the master lets go of them too (shutdown) new clients are refused at once instead
 * of waiting in a queue nobody reads. A reload's new generation and the master keep
 * theirs open, so retiring workers take nothing away from them.
 */
void accept_stop(struct worker *w)
{
    w->draining = true;
    ev_timer_stop(w->loop, &w->accept_backoff_timer);
    accept_update(w);
    accept_drop_reserve(w);
    for (size_t i = 0; i < w->nfrontends; i++) {
        for (unsigned slot = 0; slot < w->spec->nslots; slot++) {
            int *fd = &w->frontends[i].listen_fds[slot];
            if (*fd >= 0 && close(*fd) < 0)
                log_errno(LOG_LEVEL_WARNING, "close listening socket");
            *fd = -1;
        }
    }
}

void accept_free(struct worker *w)
{
    if (w->listeners == NULL)
        return;
    for (unsigned slot = 0; slot < w->spec->nslots; slot++)
        accept_remove_slot(w, slot);
    ev_timer_stop(w->loop, &w->accept_backoff_timer);
    accept_drop_reserve(w);
    free(w->listeners);
    w->listeners = NULL;
}
