/*
 * JSON by hand, one object per look on one line (so -w gives JSON lines). The rows are
 * the table's rows, in its order and with its values, so a script sees what a person
 * sees; every figure is whole here.
 */
#include "config.h"

#include "stat/render.h"

#include <inttypes.h>
#include <math.h>

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

/* JSON has no NaN nor infinity, and "none" reads better as null than as -1. */
static void json_number(FILE *out, double v)
{
    if (!isfinite(v) || v < 0)
        fputs("null", out);
    else
        fprintf(out, "%.9g", v);
}

static void json_key(FILE *out, const char *key, bool first)
{
    if (!first)
        fputc(',', out);
    json_string(out, key);
    fputc(':', out);
}

static void json_u64(FILE *out, const char *key, uint64_t v, bool first)
{
    json_key(out, key, first);
    fprintf(out, "%" PRIu64, v);
}

static void json_i64(FILE *out, const char *key, int64_t v, bool first)
{
    json_key(out, key, first);
    fprintf(out, "%" PRId64, v);
}

static void json_double(FILE *out, const char *key, double v)
{
    json_key(out, key, false);
    json_number(out, v);
}

static void json_uptime(FILE *out, const char *key, double seconds)
{
    json_key(out, key, false);
    fprintf(out, "%.3f", seconds);
}

static void json_seconds(FILE *out, const char *key, uint64_t us)
{
    json_key(out, key, false);
    fprintf(out, "%" PRIu64 ".%06" PRIu64, us / 1000000, us % 1000000);
}

static void json_named(FILE *out, const char *key, const uint64_t *v, unsigned n,
                       const char *(*name)(unsigned))
{
    json_key(out, key, false);
    fputc('{', out);
    for (unsigned i = 0; i < n; i++)
        json_u64(out, name(i), v[i], i == 0);
    fputc('}', out);
}

static const char *json_result_name(unsigned i)
{
    return stats_handshake_result_name((enum shm_handshake_result)i);
}

static const char *json_version_name(unsigned i)
{
    return stats_tls_version_name((enum shm_tls_version)i);
}

static const char *json_reason_name(unsigned i)
{
    return stats_close_reason_name((enum shm_close_reason)i);
}

static void json_histogram(FILE *out, const struct stats_counters *c)
{
    json_key(out, "handshake_duration", false);
    fputs("{\"bounds_seconds\":[", out);
    for (unsigned b = 0; b < SHM_HANDSHAKE_BOUNDS; b++)
        fprintf(out, "%s%.6g", b ? "," : "", (double)shm_handshake_bucket_us[b] / 1e6);
    fputs("],\"counts\":[", out);
    for (unsigned b = 0; b < SHM_HANDSHAKE_BUCKETS; b++)
        fprintf(out, "%s%" PRIu64, b ? "," : "", c->handshake_us_buckets[b]);
    fputc(']', out);
    json_seconds(out, "sum_seconds", c->handshake_us_sum);
    fputc('}', out);
}

static void json_counters(FILE *out, const struct stats_counters *c)
{
    json_key(out, "counters", false);
    fputc('{', out);
    json_u64(out, "accepted", c->accepted, true);
    json_named(out, "handshakes", c->handshakes, SHM_HANDSHAKE_RESULTS, json_result_name);
    json_u64(out, "handshakes_resumed", c->handshakes_resumed, false);
    json_named(out, "handshakes_by_version", c->handshakes_by_version, SHM_TLS_VERSIONS,
               json_version_name);
    json_u64(out, "permit_waits", c->permit_waits, false);
    json_u64(out, "backend_connect_failures", c->backend_connect_failures, false);
    json_named(out, "closes", c->closes, SHM_CLOSE_REASONS, json_reason_name);
    json_u64(out, "bytes_client_to_backend", c->bytes_client_to_backend, false);
    json_u64(out, "bytes_backend_to_client", c->bytes_backend_to_client, false);
    json_u64(out, "wakeups", c->wakeups, false);
    json_u64(out, "spurious_wakeups", c->spurious_wakeups, false);
    json_u64(out, "log_lines_dropped", c->log_lines_dropped, false);
    json_histogram(out, c);
    fputc('}', out);
}

static void json_rates(FILE *out, const struct snapshot_rates *r)
{
    json_key(out, "rates", false);
    fputs("{\"accepted\":", out);
    json_number(out, r->accepted);
    json_double(out, "handshakes", r->handshakes);
    json_double(out, "bytes_client_to_backend", r->bytes_client_to_backend);
    json_double(out, "bytes_backend_to_client", r->bytes_backend_to_client);
    json_double(out, "spurious_wakeups", r->spurious_wakeups);
    fputc('}', out);
}

/* The fields a row shares with the totals, after "restarts". */
static void json_row_figures(FILE *out, const struct snapshot_row *r)
{
    json_u64(out, "active_connections", r->active_connections, false);
    json_u64(out, "active_handshakes", r->active_handshakes, false);
    json_u64(out, "permits_held", r->permits_held, false);
    json_rates(out, &r->rates);
    json_double(out, "handshake_p50_seconds", r->p50);
    json_double(out, "handshake_p99_seconds", r->p99);
}

static void json_row(FILE *out, const struct snapshot *snap, const struct snapshot_row *r)
{
    const struct snapshot_slot *s = r->s;

    fputc('{', out);
    json_u64(out, "worker", r->worker, true);
    json_u64(out, "generation", s->generation, false);
    json_i64(out, "pid", s->pid, false);
    json_key(out, "state", false);
    json_string(out, snapshot_state_name(s->state));
    json_i64(out, "started_ms", s->started_ms, false);
    json_uptime(out, "uptime_seconds", snapshot_uptime(snap, s->started_ms));
    json_i64(out, "heartbeat_ms", s->heartbeat_ms, false);
    json_u64(out, "restarts", r->restarts, false);
    json_row_figures(out, r);
    json_counters(out, &s->counters);
    fputc('}', out);
}

static void json_master(FILE *out, const struct snapshot *snap)
{
    json_key(out, "master", true);
    fputc('{', out);
    json_i64(out, "pid", snap->master_pid, true);
    json_key(out, "alive", false);
    fputs(snap->master_alive ? "true" : "false", out);
    json_i64(out, "started_ms", snap->started_ms, false);
    json_uptime(out, "uptime_seconds", snapshot_uptime(snap, snap->started_ms));
    json_u64(out, "generation", snap->generation, false);
    json_u64(out, "permits_total", snap->permits_total, false);
    json_u64(out, "permits_in_use", snap->permits_in_use, false);
    fputc('}', out);
}

/* Counters over every worker number: retired and live, so the sum never goes backwards. */
static void json_totals(FILE *out, const struct snapshot_row *total,
                        const struct snapshot_worker *workers)
{
    struct stats_counters all = {0};

    for (unsigned n = 0; n < SHM_SLOTS_PER_GENERATION; n++)
        stats_sum(&all, &workers[n].counters);
    json_key(out, "totals", false);
    fputc('{', out);
    json_u64(out, "restarts", total->restarts, true);
    json_row_figures(out, total);
    json_counters(out, &all);
    fputc('}', out);
}

void json_print(FILE *out, const struct snapshot *snap, const struct snapshot_rows *rows,
                const struct snapshot_worker *workers)
{
    fputc('{', out);
    json_master(out, snap);
    json_key(out, "workers", false);
    fputc('[', out);
    for (size_t i = 0; i < rows->n; i++) {
        if (i > 0)
            fputc(',', out);
        json_row(out, snap, &rows->rows[i]);
    }
    fputc(']', out);
    json_totals(out, &rows->total, workers);
    fputs("}\n", out);
}
