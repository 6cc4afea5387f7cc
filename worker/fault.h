#ifndef SLUICE_FAULT_H
#define SLUICE_FAULT_H

/*
 * Faults the tests inject into workers, chosen by SLUICE_FAULT=NAME:SLOT[:GENERATION]:
 *   start-exit  the worker exits at start
 *   hang        its loop hangs half a second after ready (no more heartbeats)
 *   spin        its loop spins on an always-readable descriptor, counting each wake-up
 *               as spurious, while it keeps beating (the worker-level spin guard's case)
 *   conn-spin   connections whose SNI is FAULT_SPIN_SNI also watch their client for
 *               writability they never use (the per-connection spin guard's case)
 * Only builds configured with --enable-fault-injection carry them; in others these are
 * empty.
 */
#include <ev.h>

struct conn;
struct worker;

#define FAULT_SPIN_SNI "spin.invalid"

#ifdef SLUICE_FAULT_INJECTION
void fault_at_start(unsigned slot, unsigned generation);
void fault_after_ready(struct worker *w);
/* Events a connection watches on its client beyond what it needs. */
int fault_extra_client_events(const struct conn *c);
#else
static inline void fault_at_start(unsigned slot, unsigned generation)
{
    (void)slot;
    (void)generation;
}
static inline void fault_after_ready(struct worker *w)
{
    (void)w;
}
static inline int fault_extra_client_events(const struct conn *c)
{
    (void)c;
    return 0;
}
#endif

#endif
