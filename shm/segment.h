#ifndef SLUICE_SHM_SEGMENT_H
#define SLUICE_SHM_SEGMENT_H

/*
 * The shared segment at stats-file: a header, a table of worker slots and the handshake
 * permit cells. The master creates and maps it before any fork; workers inherit the
 * mapping; sluicestat maps the file read-only. Every field has one writer (the master
 * for the header and a slot's identity, the slot's worker for its beat and counters),
 * and readers never lock.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/stats.h"

#define SHM_MAGIC UINT64_C(0x31454349554c5300) /* "\0SLUICE1" read little-endian */
#define SHM_LAYOUT_VERSION 2u
#define SHM_SLOTS_PER_GENERATION 1024u            /* workers at most */
#define SHM_SLOTS (2u * SHM_SLOTS_PER_GENERATION) /* two generations live during a reload */
#define SHM_PERMITS_MAX 1000000u                  /* handshake-permits at most */

enum shm_slot_state {
    SHM_SLOT_FREE,
    SHM_SLOT_STARTING,
    SHM_SLOT_READY,
    SHM_SLOT_RETIRING,
};

/*
 * Slot s serves worker number s % SHM_SLOTS_PER_GENERATION of generation-half
 * s / SHM_SLOTS_PER_GENERATION: during a reload two slots carry the same worker number.
 */
struct shm_slot {
    /* written by the master */
    _Atomic int32_t pid; /* 0: no process */
    _Atomic uint32_t generation;
    _Atomic uint32_t state; /* enum shm_slot_state */
    uint32_t reserved;
    _Atomic int64_t started_ms; /* wall clock, ms since the epoch */
    /* written by the slot's worker (and zeroed by the master once it is gone) */
    _Atomic int64_t heartbeat_ms;
    _Atomic uint32_t permits_held;
    _Atomic uint32_t active_handshakes;
    _Atomic uint32_t active_connections;
    uint32_t reserved2;
    struct shm_counters counters;
} __attribute__((aligned(64)));

/* Per worker number, written by the master: what its dead processes counted. */
struct shm_worker_totals {
    _Atomic uint32_t restarts; /* deaths the master restarted this worker number after */
    uint32_t reserved;
    struct shm_counters retired;
} __attribute__((aligned(64)));

struct shm_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint32_t slot_size;
    uint32_t nslots;
    uint32_t permit_capacity;
    uint32_t reserved;
    uint32_t counters_size; /* sizeof(struct shm_counters): a reader checks it too */
    uint32_t totals_count;  /* SHM_SLOTS_PER_GENERATION */
    uint64_t slots_offset;
    uint64_t permits_offset;
    uint64_t totals_offset;
    uint64_t file_size;
    /* written by the master */
    _Atomic int32_t master_pid;
    _Atomic uint32_t generation;
    _Atomic int64_t started_ms;
    _Atomic uint32_t permits_total;
    _Atomic uint32_t permits_high_water; /* the most ever configured: cells past it are untouched */
    /*
     * Odd while the master folds a dead slot into the totals. A reader that wants sums
     * that never go backwards reads it (acquire), copies the slots and totals, issues an
     * acquire fence and reads it again: equal and even, or copy again.
     */
    _Atomic uint32_t fold_seq;
} __attribute__((aligned(64)));

struct shm {
    struct shm_header *header;
    struct shm_slot *slots;
    struct shm_worker_totals *totals;
    _Atomic uint32_t *permit_cells; /* 0: free, else the owner's slot index + 1 */
    size_t size;
    /* The file created: only this one is ever removed, whatever has its name by then. */
    dev_t file_dev;
    ino_t file_ino;
};

/*
 * Create the segment at path (replacing a stale file) or, for an empty path, in anonymous
 * shared memory. Readable by group gid when gid is not (gid_t)-1. -1 with err on failure.
 */
int shm_create(struct shm *shm, const char *path, gid_t gid, unsigned permits, char *err,
               size_t errsize);
/* Unmap; remove the file at path if it is still the one shm_create made. */
void shm_destroy(struct shm *shm, const char *path);
/* Give the file made at path `from` the name `to`, replacing what had it. */
int shm_publish(const char *from, const char *to, char *err, size_t errsize);
int64_t shm_now_ms(void);
/* The master resets a slot for a new process in it. */
void shm_slot_begin(struct shm *shm, unsigned slot, unsigned generation);
void shm_slot_set_pid(struct shm *shm, unsigned slot, pid_t pid);
void shm_slot_set_state(struct shm *shm, unsigned slot, enum shm_slot_state state);
/*
 * The master clears a slot whose process is gone (after reclaiming its permits) and
 * folds its counters into its worker number's totals.
 */
void shm_slot_end(struct shm *shm, unsigned slot);
void shm_count_restart(struct shm *shm, unsigned slot);
static inline unsigned shm_worker_number(unsigned slot)
{
    return slot % SHM_SLOTS_PER_GENERATION;
}
/*
 * Map an existing segment read-only (sluicestat). -1 with err naming the file and what
 * is wrong with it: missing, unreadable, truncated, not a sluice stats file, another
 * layout version.
 */
int shm_open_read(struct shm *shm, const char *path, char *err, size_t errsize);
void shm_close_read(struct shm *shm);
/* The master, at start and on reload. */
void shm_set_permits(struct shm *shm, unsigned permits);

#endif
