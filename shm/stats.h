#ifndef SLUICE_SHM_STATS_H
#define SLUICE_SHM_STATS_H

/*
 * The counters a worker keeps in its slot of the shared segment, and the names readers
 * give them. Each slot has one writer, its worker, which adds with a relaxed load and
 * store (no lock prefix, no contention); the master folds a dead worker's counters into
 * the retired totals of its worker number, so a sum never goes backwards.
 */
#include <stdatomic.h>
#include <stdint.h>

/* How a handshake ended: the "result" label of sluice_handshakes_total. */
enum shm_handshake_result {
    SHM_HANDSHAKE_OK,
    SHM_HANDSHAKE_FAILED,
    SHM_HANDSHAKE_TIMEOUT,
    SHM_HANDSHAKE_ABORTED, /* closed before a ClientHello, as a TCP health check does */
    SHM_HANDSHAKE_RESULTS
};

/* Protocol of a completed handshake. */
enum shm_tls_version { SHM_TLS_1_3, SHM_TLS_1_2, SHM_TLS_OTHER, SHM_TLS_VERSIONS };

/* Why a connection ended: the "reason" of the connection log and of the stats. */
enum shm_close_reason {
    SHM_CLOSE_CLIENT_CLOSE,  /* the client ended its stream first, the relay finished */
    SHM_CLOSE_BACKEND_CLOSE, /* the backend ended its stream first, the relay finished */
    SHM_CLOSE_CLIENT_ERROR,
    SHM_CLOSE_BACKEND_ERROR,
    SHM_CLOSE_IDLE_TIMEOUT,
    SHM_CLOSE_CLOSE_TIMEOUT, /* the client did not finish the close_notify exchange */
    SHM_CLOSE_HANDSHAKE_TIMEOUT,
    SHM_CLOSE_HANDSHAKE_ABORTED,
    SHM_CLOSE_HANDSHAKE_ERROR,
    SHM_CLOSE_BACKEND_CONNECT_FAILED,
    SHM_CLOSE_SPINNING, /* closed by the per-connection spin guard */
    SHM_CLOSE_NO_RESOURCES,
    SHM_CLOSE_DRAINED, /* cut at drain-timeout, or by QUIT */
    SHM_CLOSE_REASONS
};

/* Handshake duration buckets, upper bounds in microseconds; one more bucket is +Inf. */
#define SHM_HANDSHAKE_BOUNDS 19
#define SHM_HANDSHAKE_BUCKETS (SHM_HANDSHAKE_BOUNDS + 1)
extern const uint64_t shm_handshake_bucket_us[SHM_HANDSHAKE_BOUNDS];

struct shm_counters {
    _Atomic uint64_t accepted;
    _Atomic uint64_t handshakes[SHM_HANDSHAKE_RESULTS];
    _Atomic uint64_t handshakes_resumed;
    _Atomic uint64_t handshakes_by_version[SHM_TLS_VERSIONS];
    _Atomic uint64_t permit_waits;
    _Atomic uint64_t backend_connect_failures;
    _Atomic uint64_t closes[SHM_CLOSE_REASONS];
    _Atomic uint64_t bytes_client_to_backend;
    _Atomic uint64_t bytes_backend_to_client;
    _Atomic uint64_t wakeups;
    _Atomic uint64_t spurious_wakeups;
    _Atomic uint64_t log_lines_dropped;
    /* completed handshakes, from accept to Finished: count per bucket (not cumulative) */
    _Atomic uint64_t handshake_us_buckets[SHM_HANDSHAKE_BUCKETS];
    _Atomic uint64_t handshake_us_sum;
};

/* A plain copy, for readers and for the master's fold. */
struct stats_counters {
    uint64_t accepted;
    uint64_t handshakes[SHM_HANDSHAKE_RESULTS];
    uint64_t handshakes_resumed;
    uint64_t handshakes_by_version[SHM_TLS_VERSIONS];
    uint64_t permit_waits;
    uint64_t backend_connect_failures;
    uint64_t closes[SHM_CLOSE_REASONS];
    uint64_t bytes_client_to_backend;
    uint64_t bytes_backend_to_client;
    uint64_t wakeups;
    uint64_t spurious_wakeups;
    uint64_t log_lines_dropped;
    uint64_t handshake_us_buckets[SHM_HANDSHAKE_BUCKETS];
    uint64_t handshake_us_sum;
};

_Static_assert(sizeof(struct shm_counters) == sizeof(struct stats_counters),
               "the plain copy mirrors the shared counters field for field");

/* The single writer's add: no read-modify-write instruction is needed, nor wanted. */
static inline void stats_add(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void stats_set(_Atomic uint64_t *counter, uint64_t value)
{
    atomic_store_explicit(counter, value, memory_order_relaxed);
}

unsigned stats_handshake_bucket(uint64_t microseconds);
void stats_record_handshake(struct shm_counters *c, uint64_t microseconds);
/* out = in, counter by counter (relaxed loads). */
void stats_read(const struct shm_counters *in, struct stats_counters *out);
/* total += in. */
void stats_sum(struct stats_counters *total, const struct stats_counters *in);
/* The master, for a slot whose process is gone: to += from, then from = 0. */
void stats_fold(struct shm_counters *to, struct shm_counters *from);

const char *stats_handshake_result_name(enum shm_handshake_result result);
const char *stats_tls_version_name(enum shm_tls_version version);
const char *stats_close_reason_name(enum shm_close_reason reason);

#endif
