#ifndef SLUICE_FAULT_H
#define SLUICE_FAULT_H

/*
 * Faults the tests inject into workers (SLUICE_FAULT=start-exit:SLOT or hang:SLOT). Only
 * builds configured with --enable-fault-injection carry them; in others these are empty.
 */
#include <ev.h>

#ifdef SLUICE_FAULT_INJECTION
void fault_at_start(unsigned slot);
void fault_after_ready(struct ev_loop *loop, unsigned slot);
#else
static inline void fault_at_start(unsigned slot)
{
    (void)slot;
}
static inline void fault_after_ready(struct ev_loop *loop, unsigned slot)
{
    (void)loop;
    (void)slot;
}
#endif

#endif
