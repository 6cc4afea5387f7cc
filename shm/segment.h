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
#include <stdint.h>
#include <sys/types.h>

#define SHM_MAGIC UINT64_C(0x31454349554c5300) /* "\0SLUICE1" read little-endian */
#define SHM_LAYOUT_VERSION 1u
#define SHM_SLOTS_PER_GENERATION 1024u            /* workers at most */
#define SHM_SLOTS (2u * SHM_SLOTS_PER_GENERATION) /* two generations live during a reload */
#define SHM_PERMITS_MAX 1000000u                  /* handshake-permits at most */

enum shm_slot_state {
    SHM_SLOT_FREE,
    SHM_SLOT_STARTING,
    SHM_SLOT_READY,
    SHM_SLOT_RETIRING,
};

/* Counters a worker publishes on every heartbeat. */
struct shm_counters {
    _Atomic uint64_t accepted;
    _Atomic uint64_t handshakes_ok;
    _Atomic uint64_t handshakes_failed;
    _Atomic uint64_t handshake_timeouts;
    _Atomic uint64_t handshakes_aborted;
    _Atomic uint64_t permit_waits;
    _Atomic uint64_t backend_failures;
    _Atomic uint64_t bytes_client_to_backend;
    _Atomic uint64_t bytes_backend_to_client;
    _Atomic uint64_t wakeups;
    _Atomic uint64_t spurious_wakeups;
    _Atomic uint64_t active_connections;
};

struct shm_slot {
    /* written by the master */
    _Atomic int32_t pid; /* 0: no process */
    _Atomic uint32_t generation;
    _Atomic uint32_t state; /* enum shm_slot_state */
    _Atomic uint32_t restarts;
    _Atomic int64_t started_ms; /* wall clock, ms since the epoch */
    /* written by the slot's worker */
    _Atomic int64_t heartbeat_ms;
    _Atomic uint32_t permits_held;
    uint32_t reserved;
    struct shm_counters counters;
} __attribute__((aligned(64)));

struct shm_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint32_t slot_size;
    uint32_t nslots;
    uint32_t permit_capacity;
    uint32_t reserved;
    uint64_t slots_offset;
    uint64_t permits_offset;
    /* written by the master */
    _Atomic int32_t master_pid;
    _Atomic uint32_t generation;
    _Atomic int64_t started_ms;
    _Atomic uint32_t permits_total;
    _Atomic uint32_t permits_high_water; /* the most ever configured: cells past it are untouched */
} __attribute__((aligned(64)));

struct shm {
    struct shm_header *header;
    struct shm_slot *slots;
    _Atomic uint32_t *permit_cells; /* 0: free, else the owner's slot index + 1 */
    size_t size;
};

/*
 * Create the segment at path (replacing a stale file) or, for an empty path, in anonymous
 * shared memory. Readable by group gid when gid is not (gid_t)-1. -1 with err on failure.
 */
int shm_create(struct shm *shm, const char *path, gid_t gid, unsigned permits, char *err,
               size_t errsize);
void shm_destroy(struct shm *shm, const char *path);
int64_t shm_now_ms(void);
/* The master resets a slot for a new process in it. */
void shm_slot_begin(struct shm *shm, unsigned slot, unsigned generation);
void shm_slot_set_pid(struct shm *shm, unsigned slot, pid_t pid);
void shm_slot_set_state(struct shm *shm, unsigned slot, enum shm_slot_state state);
/* The master clears a slot whose process is gone (after reclaiming its permits). */
void shm_slot_end(struct shm *shm, unsigned slot);
/* The master, at start and on reload. */
void shm_set_permits(struct shm *shm, unsigned permits);

#endif
