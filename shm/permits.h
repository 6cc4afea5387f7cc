#ifndef SLUICE_SHM_PERMITS_H
#define SLUICE_SHM_PERMITS_H

/*
 * Handshake permits: one cell per permit, claimed by compare-and-swap with the owner's
 * slot number, so the count stays exact when a worker dies holding some: the master
 * frees the cells that carry the dead slot's number.
 */
#include <stdint.h>

#include "shm/segment.h"

#define PERMIT_NONE UINT32_MAX

/* A free cell claimed for slot, or PERMIT_NONE when all are taken. *hint spreads the scans. */
uint32_t permits_take(struct shm *shm, unsigned slot, uint32_t *hint);
void permits_release(struct shm *shm, unsigned slot, uint32_t cell);
/* Master only, once slot's process is gone: free its cells, return how many. */
unsigned permits_reclaim(struct shm *shm, unsigned slot);

#endif
