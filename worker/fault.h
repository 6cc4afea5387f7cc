#ifndef SLUICE_FAULT_H
#define SLUICE_FAULT_H

/*
 * Faults the tests inject into workers: SLUICE_FAULT=start-exit:SLOT[:GENERATION] or
 * hang:SLOT[:GENERATION]. Only builds configured with --enable-fault-injection carry
 * them; in others these are empty.
 */
#include <ev.h>

#ifdef SLUICE_FAULT_INJECTION
void fault_at_start(unsigned slot, unsigned generation);
void fault_after_ready(struct ev_loop *loop, unsigned slot, unsigned generation);
#else
static inline void fault_at_start(unsigned slot, unsigned generation)
{
    (void)slot;
    (void)generation;
}
static inline void fault_after_ready(struct ev_loop *loop, unsigned slot, unsigned generation)
{
    (void)loop;
    (void)slot;
    (void)generation;
}
#endif

#endif
