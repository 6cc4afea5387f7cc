/*
 * Prometheus text exposition 0.0.4, one series per worker number. A worker number's
 * counters include what its dead processes counted (the master's retired totals), so a
 * series never goes backwards across a restart and neither does a sum over workers.
 * Metrics are described by tables: a new counter is one line here.
 */
#include "config.h"

#include "stat/render.h"

#include <inttypes.h>
#include <stddef.h>

/* A uint64_t member of struct snapshot_worker, counters included. */
#define WORKER_FIELD(member) offsetof(struct snapshot_worker, member)
#define COUNTER_FIELD(member) (WORKER_FIELD(counters) + offsetof(struct stats_counters, member))

struct prom_metric {
    const char *name;
    const char *type;
    const char *help;
    size_t field;
};

static const struct prom_metric worker_gauges[] = {
    {"sluice_handshake_permits_in_use", "gauge",
     "Handshake permits held by the worker's processes.", WORKER_FIELD(permits_held)},
    {"sluice_connections_accepted_total", "counter", "Connections accepted.",
     COUNTER_FIELD(accepted)},
    {"sluice_connections_active", "gauge", "Connections open now.",
     WORKER_FIELD(active_connections)},
    {"sluice_handshakes_active", "gauge", "TLS handshakes in progress now.",
     WORKER_FIELD(active_handshakes)},
};

static const struct prom_metric worker_counters[] = {
    {"sluice_handshakes_resumed_total", "counter",
     "Completed handshakes that resumed a session (ticket).", COUNTER_FIELD(handshakes_resumed)},
    {"sluice_permit_waits_total", "counter",
     "Handshakes parked because no handshake permit was free.", COUNTER_FIELD(permit_waits)},
    {"sluice_backend_connect_failures_total", "counter",
     "Backend connects that failed or timed out.", COUNTER_FIELD(backend_connect_failures)},
    {"sluice_loop_wakeups_total", "counter", "Event loop wake-ups.", COUNTER_FIELD(wakeups)},
    {"sluice_spurious_wakeups_total", "counter",
     "Wake-ups that moved no byte and changed no state.", COUNTER_FIELD(spurious_wakeups)},
    {"sluice_log_lines_dropped_total", "counter",
     "Log lines dropped because a log target could not take them without blocking.",
     COUNTER_FIELD(log_lines_dropped)},
    {"sluice_worker_restarts_total", "counter",
     "Times the master restarted this worker after it died.", WORKER_FIELD(restarts)},
};

/* A counter array with one label naming each element. */
struct prom_family {
    struct prom_metric metric;
    const char *label;
    size_t count;
    const char *(*value_name)(unsigned i);
};

static const char *prom_result_name(unsigned i)
{
    return stats_handshake_result_name((enum shm_handshake_result)i);
}

static const char *prom_version_name(unsigned i)
{
    return stats_tls_version_name((enum shm_tls_version)i);
}

static const char *prom_reason_name(unsigned i)
{
    return stats_close_reason_name((enum shm_close_reason)i);
}

static const char *prom_direction_name(unsigned i)
{
    return i == 0 ? "client_to_backend" : "backend_to_client";
}

_Static_assert(offsetof(struct stats_counters, bytes_backend_to_client) ==
                   offsetof(struct stats_counters, bytes_client_to_backend) + sizeof(uint64_t),
               "the two directions are read as one array");

static const struct prom_family families[] = {
    {{"sluice_handshakes_total", "counter",
      "TLS handshakes by how they ended (aborted: closed before a ClientHello).",
      COUNTER_FIELD(handshakes)},
     "result",
     SHM_HANDSHAKE_RESULTS,
     prom_result_name},
    {{"sluice_handshakes_by_version_total", "counter", "Completed handshakes by TLS version.",
      COUNTER_FIELD(handshakes_by_version)},
     "version",
     SHM_TLS_VERSIONS,
     prom_version_name},
    {{"sluice_bytes_total", "counter", "Bytes relayed, by direction.",
      COUNTER_FIELD(bytes_client_to_backend)},
     "direction",
     2,
     prom_direction_name},
    {{"sluice_connections_closed_total", "counter", "Connections closed, by reason.",
      COUNTER_FIELD(closes)},
     "reason",
     SHM_CLOSE_REASONS,
     prom_reason_name},
};

static uint64_t prom_field(const struct snapshot_worker *w, size_t field, unsigned i)
{
    return ((const uint64_t *)(const void *)((const char *)w + field))[i];
}

/* HELP text escapes backslash and newline; a label value also the double quote. */
static void prom_escaped(FILE *out, const char *s, bool quote)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\')
            fputs("\\\\", out);
        else if (*s == '\n')
            fputs("\\n", out);
        else if (*s == '"' && quote)
            fputs("\\\"", out);
        else
            fputc(*s, out);
    }
}

static void prom_head(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s ", name);
    prom_escaped(out, help, false);
    fprintf(out, "\n# TYPE %s %s\n", name, type);
}

/* Microseconds as exact decimal seconds, no exponent: 50 -> 0.00005, 2500000 -> 2.5. */
static void prom_seconds(char *buf, size_t size, uint64_t us)
{
    int n = snprintf(buf, size, "%" PRIu64 ".%06" PRIu64, us / 1000000, us % 1000000);

    if (n <= 0 || (size_t)n >= size)
        return;
    while (buf[n - 1] == '0')
        buf[--n] = '\0';
    if (buf[n - 1] == '.')
        buf[n - 1] = '\0';
}

static void prom_plain(FILE *out, const struct snapshot_worker *workers,
                       const struct prom_metric *m)
{
    prom_head(out, m->name, m->type, m->help);
    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++)
        if (workers[n].shown)
            fprintf(out, "%s{worker=\"%u\"} %" PRIu64 "\n", m->name, n,
                    prom_field(&workers[n], m->field, 0));
}

static void prom_family_print(FILE *out, const struct snapshot_worker *workers,
                              const struct prom_family *f)
{
    prom_head(out, f->metric.name, f->metric.type, f->metric.help);
    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++) {
        if (!workers[n].shown)
            continue;
        for (unsigned i = 0; i < f->count; i++) {
            fprintf(out, "%s{worker=\"%u\",%s=\"", f->metric.name, n, f->label);
            prom_escaped(out, f->value_name(i), true);
            fprintf(out, "\"} %" PRIu64 "\n", prom_field(&workers[n], f->metric.field, i));
        }
    }
}

static void prom_worker_up(FILE *out, const struct snapshot_worker *workers)
{
    prom_head(out, "sluice_worker_up", "gauge",
              "1 when a process of this worker number is ready, else 0.");
    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++)
        if (workers[n].shown)
            fprintf(out, "sluice_worker_up{worker=\"%u\"} %d\n", n, workers[n].up ? 1 : 0);
}

static void prom_histogram_worker(FILE *out, unsigned n, const struct stats_counters *c)
{
    static const char name[] = "sluice_handshake_duration_seconds";
    char le[32];
    uint64_t cumulative = 0;

    for (unsigned b = 0; b < SHM_HANDSHAKE_BUCKETS; b++) {
        cumulative += c->handshake_us_buckets[b];
        if (b < SHM_HANDSHAKE_BOUNDS)
            prom_seconds(le, sizeof(le), shm_handshake_bucket_us[b]);
        else
            snprintf(le, sizeof(le), "+Inf");
        fprintf(out, "%s_bucket{worker=\"%u\",le=\"%s\"} %" PRIu64 "\n", name, n, le, cumulative);
    }
    prom_seconds(le, sizeof(le), c->handshake_us_sum);
    fprintf(out, "%s_sum{worker=\"%u\"} %s\n", name, n, le);
    fprintf(out, "%s_count{worker=\"%u\"} %" PRIu64 "\n", name, n, cumulative);
}

static void prom_histogram(FILE *out, const struct snapshot_worker *workers)
{
    prom_head(out, "sluice_handshake_duration_seconds", "histogram",
              "Time from accept to a completed TLS handshake.");
    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++)
        if (workers[n].shown)
            prom_histogram_worker(out, n, &workers[n].counters);
}

static void prom_master(FILE *out, const struct snapshot *snap)
{
    char start[32];

    prom_head(out, "sluice_up", "gauge", "1 while the sluice master that writes the file runs.");
    fputs("sluice_up 1\n", out);
    prom_head(out, "sluice_start_time_seconds", "gauge",
              "When the master started, in seconds since the epoch.");
    prom_seconds(start, sizeof(start),
                 snap->started_ms > 0 ? (uint64_t)snap->started_ms * 1000 : 0);
    fprintf(out, "sluice_start_time_seconds %s\n", start);
    prom_head(out, "sluice_generation", "gauge",
              "Configuration generation (1, then +1 per reload).");
    fprintf(out, "sluice_generation %" PRIu32 "\n", snap->generation);
    prom_head(out, "sluice_handshake_permits_total", "gauge",
              "Handshake permits shared by all workers (handshake-permits).");
    fprintf(out, "sluice_handshake_permits_total %" PRIu32 "\n", snap->permits_total);
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

void prom_print(FILE *out, const struct snapshot *snap, const struct snapshot_worker *workers)
{
    prom_master(out, snap);
    prom_worker_up(out, workers);
    for (size_t i = 0; i < COUNT(worker_gauges); i++)
        prom_plain(out, workers, &worker_gauges[i]);
    for (size_t i = 0; i < COUNT(families); i++)
        prom_family_print(out, workers, &families[i]);
    for (size_t i = 0; i < COUNT(worker_counters); i++)
        prom_plain(out, workers, &worker_counters[i]);
    prom_histogram(out, workers);
}

void prom_print_down(FILE *out)
{
    prom_head(out, "sluice_up", "gauge", "1 while the sluice master that writes the file runs.");
    fputs("sluice_up 0\n", out);
}
