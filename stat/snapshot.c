/*
 * Reading the segment as a bystander: map it read-only, copy it under the master's fold
 * seqlock without ever waiting on sluice, and turn two copies into rates and quantiles.
 * Nothing here writes the file, takes a lock or signals a process (kill(pid, 0) sends
 * nothing).
 */
#include "config.h"

#include "stat/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SNAPSHOT_RETRY_US 1000000 /* then settle for the last copy */
#define SNAPSHOT_RETRY_SLEEP_NS 1000000
#define SNAPSHOT_RETRIES_MAX 1000

static const struct stats_counters zero_counters;

static int64_t snapshot_monotonic_us(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return 0; /* cannot happen with a valid clock id; a zero interval is guarded */
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void snapshot_copy_slot(const struct shm_slot *from, struct snapshot_slot *to)
{
    to->pid = atomic_load_explicit(&from->pid, memory_order_relaxed);
    to->generation = atomic_load_explicit(&from->generation, memory_order_relaxed);
    to->state = atomic_load_explicit(&from->state, memory_order_relaxed);
    to->started_ms = atomic_load_explicit(&from->started_ms, memory_order_relaxed);
    to->heartbeat_ms = atomic_load_explicit(&from->heartbeat_ms, memory_order_relaxed);
    to->permits_held = atomic_load_explicit(&from->permits_held, memory_order_relaxed);
    to->active_handshakes = atomic_load_explicit(&from->active_handshakes, memory_order_relaxed);
    to->active_connections = atomic_load_explicit(&from->active_connections, memory_order_relaxed);
    /* A free slot's counters were folded away (or never used): skip the 400 bytes. */
    if (to->pid != 0)
        stats_read(&from->counters, &to->counters);
    else
        to->counters = zero_counters;
}

static void snapshot_copy_totals(const struct shm_worker_totals *from, struct snapshot_totals *to)
{
    to->restarts = atomic_load_explicit(&from->restarts, memory_order_relaxed);
    stats_read(&from->retired, &to->retired);
}

/* One pass of the seqlock's read side: true when no fold overlapped it. */
static bool snapshot_copy_once(const struct shm *shm, struct snapshot *snap)
{
    const struct shm_header *h = shm->header;
    uint32_t before = atomic_load_explicit(&h->fold_seq, memory_order_acquire);

    for (unsigned i = 0; i < SHM_SLOTS; i++)
        snapshot_copy_slot(&shm->slots[i], &snap->slots[i]);
    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++)
        snapshot_copy_totals(&shm->totals[n], &snap->totals[n]);
    atomic_thread_fence(memory_order_acquire);
    uint32_t after = atomic_load_explicit(&h->fold_seq, memory_order_relaxed);
    return before % 2 == 0 && before == after;
}

/*
 * A fold takes microseconds; a master stopped in the middle of one (SIGSTOP, a debugger)
 * must not stop us, hence the bound (in time, and in tries should the clock fail).
 */
static bool snapshot_copy(const struct shm *shm, struct snapshot *snap)
{
    const struct timespec pause = {0, SNAPSHOT_RETRY_SLEEP_NS};
    int64_t deadline = snapshot_monotonic_us() + SNAPSHOT_RETRY_US;

    for (unsigned tries = 0; !snapshot_copy_once(shm, snap); tries++) {
        if (snapshot_monotonic_us() >= deadline || tries >= SNAPSHOT_RETRIES_MAX)
            return false;
        if (nanosleep(&pause, NULL) < 0 && errno != EINTR)
            return false;
    }
    return true;
}

static void snapshot_copy_header(const struct shm_header *h, struct snapshot *snap)
{
    snap->master_pid = atomic_load_explicit(&h->master_pid, memory_order_relaxed);
    snap->generation = atomic_load_explicit(&h->generation, memory_order_relaxed);
    snap->started_ms = atomic_load_explicit(&h->started_ms, memory_order_relaxed);
    snap->permits_total = atomic_load_explicit(&h->permits_total, memory_order_relaxed);
}

/*
 * /proc/PID/stat rather than comm alone: it also tells a zombie (a master killed but not
 * yet reaped by its parent) from a live one. hidden: kill() said EPERM, so a missing
 * entry may be hidepid= at work rather than a process gone.
 */
static bool snapshot_proc_says_sluice(pid_t pid, bool hidden)
{
    char path[64], buf[512];

    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno != ENOENT || hidden || access("/proc/self/stat", F_OK) != 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    int saved = errno;
    close(fd);
    if (n < 0)
        return saved != ESRCH;
    buf[n] = '\0';
    const char *open_paren = strchr(buf, '(');
    const char *close_paren = strrchr(buf, ')');
    if (open_paren == NULL || close_paren == NULL || close_paren[1] != ' ')
        return true; /* a format we do not know: do not call it dead */
    char state = close_paren[2];
    return strncmp(open_paren + 1, "sluice", 6) == 0 && state != 'Z' && state != 'X';
}

static bool snapshot_master_alive(pid_t pid)
{
    if (pid <= 0)
        return false;
    if (kill(pid, 0) == 0)
        return snapshot_proc_says_sluice(pid, false);
    return errno == EPERM && snapshot_proc_says_sluice(pid, true);
}

int snapshot_take(const char *path, struct snapshot *snap, char *err, size_t errsize)
{
    struct shm shm;

    if (shm_open_read(&shm, path, err, errsize) < 0)
        return -1;
    snapshot_copy_header(shm.header, snap);
    snap->consistent = snapshot_copy(&shm, snap);
    snap->taken_ms = shm_now_ms();
    snap->taken_monotonic_us = snapshot_monotonic_us();
    shm_close_read(&shm);
    snap->permits_in_use = 0;
    for (unsigned i = 0; i < SHM_SLOTS; i++)
        if (snap->slots[i].pid != 0)
            snap->permits_in_use += snap->slots[i].permits_held;
    snap->master_alive = snapshot_master_alive(snap->master_pid);
    return 0;
}

const char *snapshot_state_name(uint32_t state)
{
    static const char *const names[] = {
        [SHM_SLOT_FREE] = "free",
        [SHM_SLOT_STARTING] = "starting",
        [SHM_SLOT_READY] = "ready",
        [SHM_SLOT_RETIRING] = "retiring",
    };

    return state < sizeof(names) / sizeof(names[0]) ? names[state] : "unknown";
}

double snapshot_uptime(const struct snapshot *snap, int64_t started_ms)
{
    return started_ms > 0 && snap->taken_ms > started_ms
               ? (double)(snap->taken_ms - started_ms) / 1000.0
               : 0.0;
}

/* A counter of the same process never goes backwards; guard anyway. */
static uint64_t snapshot_delta(uint64_t now, uint64_t before)
{
    return now >= before ? now - before : now;
}

/*
 * Prometheus' histogram_quantile: find the bucket holding the rank, interpolate linearly
 * inside it; in the +Inf bucket, answer its lower bound.
 */
static double snapshot_quantile(double q, const uint64_t *hist)
{
    uint64_t count = 0, below = 0;

    for (unsigned b = 0; b < SHM_HANDSHAKE_BUCKETS; b++)
        count += hist[b];
    if (count == 0)
        return -1.0;
    double rank = q * (double)count;
    unsigned b = 0;
    while (b < SHM_HANDSHAKE_BOUNDS && (double)(below + hist[b]) < rank)
        below += hist[b++];
    if (b == SHM_HANDSHAKE_BOUNDS)
        return (double)shm_handshake_bucket_us[SHM_HANDSHAKE_BOUNDS - 1] / 1e6;
    double lower = b == 0 ? 0.0 : (double)shm_handshake_bucket_us[b - 1];
    double upper = (double)shm_handshake_bucket_us[b];
    return (lower + (upper - lower) * (rank - (double)below) / (double)hist[b]) / 1e6;
}

static double snapshot_per_second(uint64_t now, uint64_t before, double seconds)
{
    return (double)snapshot_delta(now, before) / seconds;
}

static void snapshot_rates(const struct stats_counters *now, const struct stats_counters *before,
                           double seconds, struct snapshot_rates *r)
{
    const unsigned ok = SHM_HANDSHAKE_OK;

    if (seconds <= 0.0) {
        memset(r, 0, sizeof(*r));
        return;
    }
    r->accepted = snapshot_per_second(now->accepted, before->accepted, seconds);
    r->handshakes = snapshot_per_second(now->handshakes[ok], before->handshakes[ok], seconds);
    r->bytes_client_to_backend =
        snapshot_per_second(now->bytes_client_to_backend, before->bytes_client_to_backend, seconds);
    r->bytes_backend_to_client =
        snapshot_per_second(now->bytes_backend_to_client, before->bytes_backend_to_client, seconds);
    r->spurious_wakeups =
        snapshot_per_second(now->spurious_wakeups, before->spurious_wakeups, seconds);
}

/* The previous look at slot i, if it saw the same process. */
static const struct snapshot_slot *snapshot_earlier(const struct snapshot *prev, unsigned i,
                                                    const struct snapshot_slot *s)
{
    if (prev == NULL)
        return NULL;
    const struct snapshot_slot *p = &prev->slots[i];
    return p->pid == s->pid && p->started_ms == s->started_ms ? p : NULL;
}

static void snapshot_row_fill(const struct snapshot *cur, const struct snapshot *prev, unsigned i,
                              struct snapshot_row *r)
{
    const struct snapshot_slot *s = &cur->slots[i];
    const struct snapshot_slot *earlier = snapshot_earlier(prev, i, s);
    const struct stats_counters *base = earlier ? &earlier->counters : &zero_counters;
    double seconds = earlier ? (double)(cur->taken_monotonic_us - prev->taken_monotonic_us) / 1e6
                             : snapshot_uptime(cur, s->started_ms);

    memset(r, 0, sizeof(*r));
    r->slot = i;
    r->worker = shm_worker_number(i);
    r->s = s;
    r->restarts = cur->totals[r->worker].restarts;
    r->active_connections = s->active_connections;
    r->active_handshakes = s->active_handshakes;
    r->permits_held = s->permits_held;
    snapshot_rates(&s->counters, base, seconds, &r->rates);
    for (unsigned b = 0; b < SHM_HANDSHAKE_BUCKETS; b++)
        r->hist[b] =
            snapshot_delta(s->counters.handshake_us_buckets[b], base->handshake_us_buckets[b]);
    r->p50 = snapshot_quantile(0.50, r->hist);
    r->p99 = snapshot_quantile(0.99, r->hist);
}

static int snapshot_row_cmp(const void *a, const void *b)
{
    const struct snapshot_row *x = a, *y = b;

    if (x->worker != y->worker)
        return x->worker < y->worker ? -1 : 1;
    if (x->s->generation != y->s->generation)
        return x->s->generation < y->s->generation ? -1 : 1;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

static void snapshot_row_add(struct snapshot_row *total, const struct snapshot_row *r)
{
    total->active_connections += r->active_connections;
    total->active_handshakes += r->active_handshakes;
    total->permits_held += r->permits_held;
    total->rates.accepted += r->rates.accepted;
    total->rates.handshakes += r->rates.handshakes;
    total->rates.bytes_client_to_backend += r->rates.bytes_client_to_backend;
    total->rates.bytes_backend_to_client += r->rates.bytes_backend_to_client;
    total->rates.spurious_wakeups += r->rates.spurious_wakeups;
    for (unsigned b = 0; b < SHM_HANDSHAKE_BUCKETS; b++)
        total->hist[b] += r->hist[b];
}

/* Restarts count per worker number, not per row: a reload shows a number twice. */
static void snapshot_total(const struct snapshot *cur, struct snapshot_rows *out)
{
    struct snapshot_row *total = &out->total;

    memset(total, 0, sizeof(*total));
    for (size_t i = 0; i < out->n; i++)
        snapshot_row_add(total, &out->rows[i]);
    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++)
        total->restarts += cur->totals[n].restarts;
    total->p50 = snapshot_quantile(0.50, total->hist);
    total->p99 = snapshot_quantile(0.99, total->hist);
}

void snapshot_rows(const struct snapshot *cur, const struct snapshot *prev,
                   struct snapshot_rows *out)
{
    out->n = 0;
    for (unsigned i = 0; i < SHM_SLOTS; i++)
        if (cur->slots[i].pid != 0)
            snapshot_row_fill(cur, prev, i, &out->rows[out->n++]);
    qsort(out->rows, out->n, sizeof(out->rows[0]), snapshot_row_cmp);
    snapshot_total(cur, out);
}

void snapshot_workers(const struct snapshot *snap, struct snapshot_worker *workers)
{
    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++) {
        struct snapshot_worker *w = &workers[n];
        memset(w, 0, sizeof(*w));
        w->restarts = snap->totals[n].restarts;
        w->counters = snap->totals[n].retired;
        w->shown =
            w->restarts != 0 || memcmp(&w->counters, &zero_counters, sizeof(zero_counters)) != 0;
    }
    for (unsigned i = 0; i < SHM_SLOTS; i++) {
        const struct snapshot_slot *s = &snap->slots[i];
        if (s->pid == 0)
            continue;
        struct snapshot_worker *w = &workers[shm_worker_number(i)];
        w->shown = true;
        w->up = w->up || s->state == SHM_SLOT_READY;
        w->active_connections += s->active_connections;
        w->active_handshakes += s->active_handshakes;
        w->permits_held += s->permits_held;
        stats_sum(&w->counters, &s->counters);
    }
}
