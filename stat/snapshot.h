#ifndef SLUICE_STAT_SNAPSHOT_H
#define SLUICE_STAT_SNAPSHOT_H

/*
 * A consistent copy of the shared segment in plain structs, taken without a lock, and
 * what the printers derive from it: the table's rows with their rates and quantiles
 * (between two snapshots), and per worker number the counters that never go backwards.
 */
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/segment.h"
#include "shm/stats.h"

struct snapshot_slot {
    pid_t pid; /* 0: free */
    uint32_t generation;
    uint32_t state; /* enum shm_slot_state */
    int64_t started_ms;
    int64_t heartbeat_ms;
    uint32_t permits_held;
    uint32_t active_handshakes;
    uint32_t active_connections;
    struct stats_counters counters; /* zero for a free slot */
};

struct snapshot_totals {
    uint32_t restarts;
    struct stats_counters retired;
};

struct snapshot {
    pid_t master_pid;
    bool master_alive;
    uint32_t generation;
    int64_t started_ms;
    uint32_t permits_total;
    uint32_t permits_in_use;
    bool consistent;            /* false: a fold never finished while we copied */
    int64_t taken_ms;           /* wall clock, as the segment's times */
    int64_t taken_monotonic_us; /* for intervals between two looks */
    struct snapshot_slot slots[SHM_SLOTS];
    struct snapshot_totals totals[SHM_SLOTS_PER_GENERATION];
};

/* Per second over the interval of a row. */
struct snapshot_rates {
    double accepted;
    double handshakes; /* completed (ok) */
    double bytes_client_to_backend;
    double bytes_backend_to_client;
    double spurious_wakeups;
};

/* One live slot as the table and JSON show it; the total row leaves the identity zero. */
struct snapshot_row {
    unsigned slot;
    unsigned worker;
    const struct snapshot_slot *s; /* NULL for the total row */
    uint64_t restarts;
    uint64_t active_connections;
    uint64_t active_handshakes;
    uint64_t permits_held;
    struct snapshot_rates rates;
    uint64_t hist[SHM_HANDSHAKE_BUCKETS]; /* handshakes completed in the interval */
    double p50, p99;                      /* seconds; negative: no handshake in the interval */
};

struct snapshot_rows {
    size_t n;
    struct snapshot_row rows[SHM_SLOTS];
    struct snapshot_row total;
};

/* What a worker number has counted over all its processes, for -p and JSON totals. */
struct snapshot_worker {
    bool shown; /* a live slot, or something retired, or a restart */
    bool up;    /* a live slot of this number is ready */
    uint64_t restarts;
    uint64_t active_connections;
    uint64_t active_handshakes;
    uint64_t permits_held;
    struct stats_counters counters; /* retired + live slots */
};

/*
 * Map path, copy it into snap and unmap it; liveness of the master included. -1 with
 * err naming the file on failure.
 */
int snapshot_take(const char *path, struct snapshot *snap, char *err, size_t errsize);
/* Rows sorted by worker number then generation; rates since prev (may be NULL). */
void snapshot_rows(const struct snapshot *cur, const struct snapshot *prev,
                   struct snapshot_rows *out);
/* workers[SHM_SLOTS_PER_GENERATION]. */
void snapshot_workers(const struct snapshot *snap, struct snapshot_worker *workers);
const char *snapshot_state_name(uint32_t state);
double snapshot_uptime(const struct snapshot *snap, int64_t started_ms);

#endif
