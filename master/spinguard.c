/*
 * Judging a worker by its counters, from outside: the master reads them in the shared
 * segment without asking the worker anything, so a worker too busy spinning to answer
 * is judged the same.
 */
#include "config.h"

#include "master/spinguard.h"

#include <stdio.h>

struct spinguard_look {
    uint64_t wakeups, spurious, bytes;
};

static struct spinguard_look spinguard_read(const struct shm_slot *slot)
{
    const struct shm_counters *c = &slot->counters;

    return (struct spinguard_look){
        .wakeups = atomic_load_explicit(&c->wakeups, memory_order_relaxed),
        .spurious = atomic_load_explicit(&c->spurious_wakeups, memory_order_relaxed),
        .bytes = atomic_load_explicit(&c->bytes_client_to_backend, memory_order_relaxed) +
                 atomic_load_explicit(&c->bytes_backend_to_client, memory_order_relaxed),
    };
}

void spinguard_reset(struct spinguard *g, const struct shm_slot *slot, ev_tstamp now)
{
    struct spinguard_look look = spinguard_read(slot);

    g->sampled_at = now;
    g->wakeups = look.wakeups;
    g->spurious = look.spurious;
    g->bytes = look.bytes;
    g->spinning_since = 0;
}

bool spinguard_check(struct spinguard *g, const struct shm_slot *slot, const struct conf *conf,
                     ev_tstamp now, char *why, size_t whysize)
{
    struct spinguard_look look = spinguard_read(slot);
    ev_tstamp since = g->sampled_at, interval = now - g->sampled_at;

    if (interval <= 0)
        return false;
    uint64_t spurious = look.spurious - g->spurious, bytes = look.bytes - g->bytes;
    double spurious_rate = (double)spurious / interval;
    g->sampled_at = now;
    g->wakeups = look.wakeups;
    g->spurious = look.spurious;
    g->bytes = look.bytes;
    if (!conf->spin_guard || spurious_rate < conf->spin_guard_threshold || bytes >= spurious) {
        g->spinning_since = 0;
        return false;
    }
    if (g->spinning_since == 0)
        g->spinning_since = since;
    if (now - g->spinning_since < SPINGUARD_WINDOW)
        return false;
    snprintf(why, whysize,
             "%.0f spurious wake-ups per second for %.1fs (threshold %u) while moving %.0f bytes "
             "per second; wakeups=%llu spurious_wakeups=%llu bytes=%llu",
             spurious_rate, now - g->spinning_since, conf->spin_guard_threshold,
             (double)bytes / interval, (unsigned long long)look.wakeups,
             (unsigned long long)look.spurious, (unsigned long long)look.bytes);
    return true;
}
