/*
 * sluicestat: read sluice's stats file and print it as a table, Prometheus text or JSON,
 * once or every -w seconds. It only maps the file read-only: sluice never waits for it.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "stat/render.h"
#include "stat/snapshot.h"

#define EXIT_TROUBLE 1 /* the file cannot be read, or its sluice is gone */
#define EXIT_USAGE 2
#define DEFAULT_STATS_FILE "/run/sluice.stats"
#define WATCH_MIN 0.1
#define WATCH_MAX 3600.0

enum format { FORMAT_TABLE, FORMAT_PROM, FORMAT_JSON };

struct options {
    const char *path;
    enum format format;
    double interval; /* seconds between looks; 0: look once */
};

/* Two looks' worth of copies, kept across -w refreshes for the rates. */
struct looks {
    struct snapshot *cur, *prev;
    bool have_prev;
    struct snapshot_rows *rows;
    struct snapshot_worker *workers;
    bool clear; /* -w on a terminal: redraw in place */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sluicestat [-f STATSFILE] [-p | -j] [-w SECONDS] [-V] [-h]\n"
            "  -f STATSFILE  sluice's stats-file (default %s)\n"
            "  -p            Prometheus text exposition format\n"
            "  -j            JSON\n"
            "  -w SECONDS    print again every SECONDS (%g to %g) until interrupted\n"
            "  -V            print the version\n"
            "  -h            this help\n",
            DEFAULT_STATS_FILE, WATCH_MIN, WATCH_MAX);
}

static int parse_interval(const char *arg, double *interval)
{
    char *end;

    errno = 0;
    double v = strtod(arg, &end);
    if (errno != 0 || end == arg || *end != '\0' || !isfinite(v) || v < WATCH_MIN ||
        v > WATCH_MAX) {
        fprintf(stderr, "sluicestat: -w %s: want a number of seconds from %g to %g\n", arg,
                WATCH_MIN, WATCH_MAX);
        return -1;
    }
    *interval = v;
    return 0;
}

static int set_format(struct options *opts, enum format format)
{
    if (opts->format != FORMAT_TABLE && opts->format != format) {
        fprintf(stderr, "sluicestat: -p and -j exclude each other\n");
        return -1;
    }
    opts->format = format;
    return 0;
}

/* 0 to go on, else the exit status; -V and -h exit here. */
static int parse_options(int argc, char **argv, struct options *opts)
{
    int ch, bad = 0;

    opts->path = DEFAULT_STATS_FILE;
    while (!bad && (ch = getopt(argc, argv, "f:pjw:Vh")) != -1) {
        switch (ch) {
        case 'f':
            opts->path = optarg;
            break;
        case 'p':
            bad = set_format(opts, FORMAT_PROM);
            break;
        case 'j':
            bad = set_format(opts, FORMAT_JSON);
            break;
        case 'w':
            bad = parse_interval(optarg, &opts->interval);
            break;
        case 'V':
            printf("sluicestat %s\n", PACKAGE_VERSION);
            exit(EXIT_SUCCESS);
        case 'h':
            usage(stdout);
            exit(EXIT_SUCCESS);
        default:
            bad = -1;
        }
    }
    if (!bad && optind != argc) {
        fprintf(stderr, "sluicestat: unexpected argument \"%s\"\n", argv[optind]);
        bad = -1;
    }
    if (bad)
        usage(stderr);
    return bad ? EXIT_USAGE : 0;
}

static int looks_init(struct looks *l, const struct options *opts)
{
    l->cur = calloc(1, sizeof(*l->cur));
    l->prev = calloc(1, sizeof(*l->prev));
    l->rows = calloc(1, sizeof(*l->rows));
    l->workers = calloc(SHM_SLOTS_PER_GENERATION, sizeof(*l->workers));
    l->have_prev = false;
    l->clear = opts->interval > 0 && isatty(STDOUT_FILENO);
    if (l->cur == NULL || l->prev == NULL || l->rows == NULL || l->workers == NULL) {
        fprintf(stderr, "sluicestat: out of memory\n");
        return -1;
    }
    return 0;
}

static void looks_free(struct looks *l)
{
    free(l->cur);
    free(l->prev);
    free(l->rows);
    free(l->workers);
}

static void render(const struct options *opts, struct looks *l, bool first)
{
    if (l->clear)
        fputs("\033[H\033[2J", stdout);
    else if (!first && opts->format == FORMAT_TABLE)
        fputc('\n', stdout);
    switch (opts->format) {
    case FORMAT_TABLE:
        snapshot_rows(l->cur, l->have_prev ? l->prev : NULL, l->rows);
        table_print(stdout, l->cur, l->rows);
        break;
    case FORMAT_PROM:
        snapshot_workers(l->cur, l->workers);
        prom_print(stdout, l->cur, l->workers);
        break;
    case FORMAT_JSON:
        snapshot_rows(l->cur, l->have_prev ? l->prev : NULL, l->rows);
        snapshot_workers(l->cur, l->workers);
        json_print(stdout, l->cur, l->rows, l->workers);
        break;
    }
}

static int flush_stdout(void)
{
    if (fflush(stdout) == EOF || ferror(stdout)) {
        fprintf(stderr, "sluicestat: standard output: %s\n", strerror(errno));
        return EXIT_TROUBLE;
    }
    return 0;
}

/* One look: open the file afresh (a restarted sluice makes a new one), copy, print. */
static int look(const struct options *opts, struct looks *l, bool first)
{
    char err[1024];

    if (snapshot_take(opts->path, l->cur, err, sizeof(err)) < 0) {
        fprintf(stderr, "sluicestat: %s\n", err);
        return EXIT_TROUBLE;
    }
    if (!l->cur->master_alive) {
        if (opts->format == FORMAT_PROM)
            prom_print_down(stdout);
        fprintf(stderr,
                "sluicestat: %s: sluice is not running (master pid %ld is gone); these "
                "figures are from a run that ended\n",
                opts->path, (long)l->cur->master_pid);
        flush_stdout();
        return EXIT_TROUBLE;
    }
    if (!l->cur->consistent)
        fprintf(stderr,
                "sluicestat: %s: the master was folding a worker's counters for over a "
                "second; figures may be inconsistent\n",
                opts->path);
    render(opts, l, first);
    struct snapshot *t = l->prev;
    l->prev = l->cur;
    l->cur = t;
    l->have_prev = true;
    return flush_stdout();
}

/*
 * SIGINT and SIGTERM stay blocked and are taken by sigtimedwait: no handler, no flag, and
 * no window where a signal lands between a test and a sleep.
 */
static int watch(const struct options *opts, struct looks *l)
{
    sigset_t stop;
    time_t whole = (time_t)opts->interval;
    const struct timespec every = {whole, (long)((opts->interval - (double)whole) * 1e9)};

    if (sigemptyset(&stop) < 0 || sigaddset(&stop, SIGINT) < 0 || sigaddset(&stop, SIGTERM) < 0 ||
        sigprocmask(SIG_BLOCK, &stop, NULL) < 0) {
        fprintf(stderr, "sluicestat: cannot block SIGINT and SIGTERM: %s\n", strerror(errno));
        return EXIT_TROUBLE;
    }
    for (bool shown = false;;) {
        /* Trouble is reported and the watch goes on, as top's does: sluice may come back. */
        if (look(opts, l, !shown) == 0)
            shown = true;
        else
            l->have_prev = false;
        int sig = sigtimedwait(&stop, NULL, &every);
        if (sig == SIGINT || sig == SIGTERM)
            return EXIT_SUCCESS;
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            fprintf(stderr, "sluicestat: sigtimedwait: %s\n", strerror(errno));
            return EXIT_TROUBLE;
        }
    }
}

int main(int argc, char **argv)
{
    struct options opts = {0};
    struct looks l = {0};

    int status = parse_options(argc, argv, &opts);
    if (status != 0)
        return status;
    if (looks_init(&l, &opts) < 0)
        status = EXIT_TROUBLE;
    else if (opts.interval > 0)
        status = watch(&opts, &l);
    else
        status = look(&opts, &l, true);
    looks_free(&l);
    return status;
}
