/*
 * The table: what an operator reads at a glance, in columns that stay aligned. Numbers
 * are rounded for the eye; -j gives them whole.
 */
#include "config.h"

#include "stat/render.h"

#include <inttypes.h>

#define TABLE_FORMAT "%6s %4s %8s %-8s %7s %8s %6s %5s %7s %7s %7s %7s %7s %7s %7s %7s\n"

/* 59s, 12m03s, 1h02m, 3d04h: two units are enough to tell a fresh worker from an old one. */
static void table_uptime(char *buf, size_t size, double seconds)
{
    uint64_t s = seconds > 0 ? (uint64_t)seconds : 0;

    if (s < 60)
        snprintf(buf, size, "%" PRIu64 "s", s);
    else if (s < 3600)
        snprintf(buf, size, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, size, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, size, "%" PRIu64 "d%02" PRIu64 "h", s / 86400, s % 86400 / 3600);
}

/* At most four characters of number and a unit: 512, 12.3K, 512K, 3.4M. */
static void table_scaled(char *buf, size_t size, double v, double base)
{
    static const char units[] = {'\0', 'K', 'M', 'G', 'T', 'P'};
    unsigned u = 0;

    while (v >= 1000.0 && u + 1 < sizeof(units)) {
        v /= base;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, v < 100.0 && base < 1024 ? "%.1f" : "%.0f", v);
    else
        snprintf(buf, size, v < 100.0 ? "%.1f%c" : "%.0f%c", v, units[u]);
}

static void table_bytes(char *buf, size_t size, double bytes_per_second)
{
    table_scaled(buf, size, bytes_per_second, 1024.0);
}

static void table_rate(char *buf, size_t size, double per_second)
{
    table_scaled(buf, size, per_second, 1000.0);
}

/* 850us, 4.2ms, 12ms, 1.2s; "-" when no handshake completed. */
static void table_duration(char *buf, size_t size, double seconds)
{
    if (seconds < 0)
        snprintf(buf, size, "-");
    else if (seconds < 0.001)
        snprintf(buf, size, "%.0fus", seconds * 1e6);
    else if (seconds < 0.01)
        snprintf(buf, size, "%.1fms", seconds * 1e3);
    else if (seconds < 1.0)
        snprintf(buf, size, "%.0fms", seconds * 1e3);
    else if (seconds < 10.0)
        snprintf(buf, size, "%.1fs", seconds);
    else
        snprintf(buf, size, "%.0fs", seconds);
}

static void table_header(FILE *out, const struct snapshot *snap)
{
    char up[32];

    table_uptime(up, sizeof(up), snapshot_uptime(snap, snap->started_ms));
    fprintf(out,
            "sluice: master pid %ld, up %s, generation %" PRIu32 ", permits %" PRIu32 "/%" PRIu32
            " in use\n",
            (long)snap->master_pid, up, snap->generation, snap->permits_in_use,
            snap->permits_total);
    fprintf(out, TABLE_FORMAT, "worker", "gen", "pid", "state", "uptime", "restarts", "conns", "hs",
            "permits", "acc/s", "hs/s", "in/s", "out/s", "p50", "p99", "spur/s");
}

/* The columns every row has, total included: from restarts on. */
struct table_cells {
    char restarts[24], conns[24], hs[24], permits[24];
    char acc[16], hsr[16], in[16], out[16], p50[16], p99[16], spur[16];
};

static void table_cells(const struct snapshot_row *r, struct table_cells *c)
{
    snprintf(c->restarts, sizeof(c->restarts), "%" PRIu64, r->restarts);
    snprintf(c->conns, sizeof(c->conns), "%" PRIu64, r->active_connections);
    snprintf(c->hs, sizeof(c->hs), "%" PRIu64, r->active_handshakes);
    snprintf(c->permits, sizeof(c->permits), "%" PRIu64, r->permits_held);
    table_rate(c->acc, sizeof(c->acc), r->rates.accepted);
    table_rate(c->hsr, sizeof(c->hsr), r->rates.handshakes);
    table_bytes(c->in, sizeof(c->in), r->rates.bytes_client_to_backend);
    table_bytes(c->out, sizeof(c->out), r->rates.bytes_backend_to_client);
    table_duration(c->p50, sizeof(c->p50), r->p50);
    table_duration(c->p99, sizeof(c->p99), r->p99);
    table_rate(c->spur, sizeof(c->spur), r->rates.spurious_wakeups);
}

static void table_row(FILE *out, const struct snapshot *snap, const struct snapshot_row *r)
{
    char worker[16], gen[16], pid[16], uptime[32];
    struct table_cells c;
    const char *state = "-";

    if (r->s == NULL) {
        snprintf(worker, sizeof(worker), "total");
        snprintf(gen, sizeof(gen), "-");
        snprintf(pid, sizeof(pid), "-");
        snprintf(uptime, sizeof(uptime), "-");
    } else {
        snprintf(worker, sizeof(worker), "%u", r->worker);
        snprintf(gen, sizeof(gen), "%" PRIu32, r->s->generation);
        snprintf(pid, sizeof(pid), "%ld", (long)r->s->pid);
        table_uptime(uptime, sizeof(uptime), snapshot_uptime(snap, r->s->started_ms));
        state = snapshot_state_name(r->s->state);
    }
    table_cells(r, &c);
    fprintf(out, TABLE_FORMAT, worker, gen, pid, state, uptime, c.restarts, c.conns, c.hs,
            c.permits, c.acc, c.hsr, c.in, c.out, c.p50, c.p99, c.spur);
}

void table_print(FILE *out, const struct snapshot *snap, const struct snapshot_rows *rows)
{
    table_header(out, snap);
    for (size_t i = 0; i < rows->n; i++)
        table_row(out, snap, &rows->rows[i]);
    table_row(out, snap, &rows->total);
}
