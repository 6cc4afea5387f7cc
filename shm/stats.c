/*
 * Counters as the worker writes them, the master folds them and readers copy them.
 * The counter structs hold nothing but 64-bit counters, so a copy or a fold walks them
 * as one array and a new counter needs no code here.
 */
#include "config.h"

#include "shm/stats.h"

#include <stddef.h>

#define STATS_NCOUNTERS (sizeof(struct shm_counters) / sizeof(uint64_t))

_Static_assert(sizeof(struct shm_counters) % sizeof(uint64_t) == 0,
               "shm_counters holds only 64-bit counters");
_Static_assert(sizeof(_Atomic uint64_t) == sizeof(uint64_t), "atomic counters are plain width");

/* 1-2.5-5 steps from 50 µs to a minute: a loopback handshake and a stalled one both land. */
const uint64_t shm_handshake_bucket_us[SHM_HANDSHAKE_BOUNDS] = {
    50,     100,    250,    500,     1000,    2500,    5000,     10000,    25000,    50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};

static const char *const handshake_result_names[SHM_HANDSHAKE_RESULTS] = {
    [SHM_HANDSHAKE_OK] = "ok",
    [SHM_HANDSHAKE_FAILED] = "failed",
    [SHM_HANDSHAKE_TIMEOUT] = "timeout",
    [SHM_HANDSHAKE_ABORTED] = "aborted",
};

static const char *const tls_version_names[SHM_TLS_VERSIONS] = {
    [SHM_TLS_1_3] = "TLSv1.3",
    [SHM_TLS_1_2] = "TLSv1.2",
    [SHM_TLS_OTHER] = "other",
};

static const char *const close_reason_names[SHM_CLOSE_REASONS] = {
    [SHM_CLOSE_CLIENT_CLOSE] = "client_close",
    [SHM_CLOSE_BACKEND_CLOSE] = "backend_close",
    [SHM_CLOSE_CLIENT_ERROR] = "client_error",
    [SHM_CLOSE_BACKEND_ERROR] = "backend_error",
    [SHM_CLOSE_IDLE_TIMEOUT] = "idle_timeout",
    [SHM_CLOSE_CLOSE_TIMEOUT] = "close_timeout",
    [SHM_CLOSE_HANDSHAKE_TIMEOUT] = "handshake_timeout",
    [SHM_CLOSE_HANDSHAKE_ABORTED] = "handshake_aborted",
    [SHM_CLOSE_HANDSHAKE_ERROR] = "handshake_error",
    [SHM_CLOSE_BACKEND_CONNECT_FAILED] = "backend_connect_failed",
    [SHM_CLOSE_SPINNING] = "spinning",
    [SHM_CLOSE_NO_RESOURCES] = "no_resources",
    [SHM_CLOSE_DRAINED] = "drained",
};

unsigned stats_handshake_bucket(uint64_t microseconds)
{
    unsigned i = 0;

    while (i < SHM_HANDSHAKE_BOUNDS && microseconds > shm_handshake_bucket_us[i])
        i++;
    return i;
}

void stats_record_handshake(struct shm_counters *c, uint64_t microseconds)
{
    stats_add(&c->handshake_us_buckets[stats_handshake_bucket(microseconds)], 1);
    stats_add(&c->handshake_us_sum, microseconds);
}

void stats_read(const struct shm_counters *in, struct stats_counters *out)
{
    const _Atomic uint64_t *from = (const _Atomic uint64_t *)in;
    uint64_t *to = (uint64_t *)out;

    for (size_t i = 0; i < STATS_NCOUNTERS; i++)
        to[i] = atomic_load_explicit(&from[i], memory_order_relaxed);
}

void stats_sum(struct stats_counters *total, const struct stats_counters *in)
{
    uint64_t *to = (uint64_t *)total;
    const uint64_t *from = (const uint64_t *)in;

    for (size_t i = 0; i < STATS_NCOUNTERS; i++)
        to[i] += from[i];
}

void stats_fold(struct shm_counters *to, struct shm_counters *from)
{
    _Atomic uint64_t *t = (_Atomic uint64_t *)to;
    _Atomic uint64_t *f = (_Atomic uint64_t *)from;

    for (size_t i = 0; i < STATS_NCOUNTERS; i++) {
        stats_add(&t[i], atomic_load_explicit(&f[i], memory_order_relaxed));
        stats_set(&f[i], 0);
    }
}

const char *stats_handshake_result_name(enum shm_handshake_result result)
{
    return handshake_result_names[result];
}

const char *stats_tls_version_name(enum shm_tls_version version)
{
    return tls_version_names[version];
}

const char *stats_close_reason_name(enum shm_close_reason reason)
{
    return close_reason_names[reason];
}
