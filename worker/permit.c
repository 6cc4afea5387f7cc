/*
 * Parked handshakes are resumed by a short timer (permits freed by other workers cannot
 * wake this loop) and at once when this worker frees one itself. Resuming happens from
 * the timer, never from inside another connection's teardown.
 */
#include "config.h"

#include "worker/permit.h"

#include "shm/permits.h"
#include "worker/conn.h"
#include "worker/handshake.h"
#include "worker/worker.h"

#define PERMIT_RETRY_INTERVAL 0.01 /* seconds between looks at the pool while parked */

static void permit_unpark(struct conn *c)
{
    struct worker *w = c->worker;

    if (c->park_prev != NULL)
        c->park_prev->park_next = c->park_next;
    else
        w->parked_head = c->park_next;
    if (c->park_next != NULL)
        c->park_next->park_prev = c->park_prev;
    else
        w->parked_tail = c->park_prev;
    c->park_prev = c->park_next = NULL;
    c->parked = false;
}

static void permit_park(struct conn *c)
{
    struct worker *w = c->worker;

    c->parked = true;
    c->park_prev = w->parked_tail;
    c->park_next = NULL;
    if (w->parked_tail != NULL)
        w->parked_tail->park_next = c;
    else
        w->parked_head = c;
    w->parked_tail = c;
    stats_add(&w->counters->permit_waits, 1);
    conn_log(c, LOG_LEVEL_DEBUG, "no handshake permit free: parked");
    if (!ev_is_active(&w->permit_retry_timer)) {
        ev_timer_set(&w->permit_retry_timer, PERMIT_RETRY_INTERVAL, PERMIT_RETRY_INTERVAL);
        ev_timer_start(w->loop, &w->permit_retry_timer);
    }
}

static bool permit_take(struct conn *c)
{
    struct worker *w = c->worker;

    c->permit = permits_take(w->spec->shm, w->spec->shm_slot, &w->permit_hint);
    return c->permit != PERMIT_NONE;
}

bool permit_acquire(struct conn *c)
{
    if (c->permit != PERMIT_NONE)
        return true;
    if (!c->parked && permit_take(c))
        return true;
    if (!c->parked)
        permit_park(c);
    return false;
}

static void permit_resume_parked(struct worker *w)
{
    while (w->parked_head != NULL) {
        struct conn *c = w->parked_head;
        if (!permit_take(c))
            return;
        permit_unpark(c);
        conn_log(c, LOG_LEVEL_DEBUG, "handshake permit taken: resumed");
        handshake_step(c);
    }
    ev_timer_stop(w->loop, &w->permit_retry_timer);
}

static void permit_retry_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    (void)loop;
    (void)revents;
    permit_resume_parked(timer->data);
}

void permit_release(struct conn *c)
{
    struct worker *w = c->worker;

    if (c->parked)
        permit_unpark(c);
    if (c->permit == PERMIT_NONE)
        return;
    permits_release(w->spec->shm, w->spec->shm_slot, c->permit);
    c->permit = PERMIT_NONE;
    if (w->parked_head != NULL) {
        /* Hand it on from the loop, not from inside this connection's own call chain. */
        ev_timer_stop(w->loop, &w->permit_retry_timer);
        ev_timer_set(&w->permit_retry_timer, 0, PERMIT_RETRY_INTERVAL);
        ev_timer_start(w->loop, &w->permit_retry_timer);
    }
}

void permit_init(struct worker *w)
{
    ev_init(&w->permit_retry_timer, permit_retry_cb);
    w->permit_retry_timer.data = w;
}

void permit_stop(struct worker *w)
{
    ev_timer_stop(w->loop, &w->permit_retry_timer);
}
