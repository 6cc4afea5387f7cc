#ifndef SLUICE_SPINGUARD_H
#define SLUICE_SPINGUARD_H

/*
 * The worker-level spin guard: the master looks at each worker's counters on every
 * watchdog tick. A worker whose spurious wake-ups stay at spin-guard-threshold per second
 * or more, while it moves fewer bytes than it has useless wake-ups, for SPINGUARD_WINDOW
 * seconds on end, is spinning: busy without work, as the close_notify loop of the field
 * report was. An honest heavy load moves bytes on nearly every wake-up and never is.
 */
#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"
#include "shm/segment.h"

#define SPINGUARD_WINDOW 5.0 /* seconds */

struct spinguard {
    ev_tstamp sampled_at;
    uint64_t wakeups, spurious, bytes;
    ev_tstamp spinning_since; /* 0 while the last look was healthy */
};

/* A new process in the slot: judge it from now on. */
void spinguard_reset(struct spinguard *g, const struct shm_slot *slot, ev_tstamp now);
/* True when the worker has been spinning for the whole window; why says how. */
bool spinguard_check(struct spinguard *g, const struct shm_slot *slot, const struct conf *conf,
                     ev_tstamp now, char *why, size_t whysize);

#endif
