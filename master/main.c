/*
 * sluice: parse the command line and the config, load every certificate and key, open
 * the listening sockets and the shared segment, then become the master. Everything that
 * can be wrong with the config is found here, before a single worker is forked.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "master/daemon.h"
#include "master/generation.h"
#include "master/master.h"
#include "master/pidfile.h"
#include "master/ticketkeys.h"
#include "master/tlsctx.h"

#define EXIT_BAD_CONFIG 1
#define EXIT_STARTUP 2

#ifdef SLUICE_FAULT_INJECTION
#define SLUICE_BUILD_NOTE " (fault injection)"
#else
#define SLUICE_BUILD_NOTE ""
#endif

struct options {
    const char *config;
    bool check_only;
    bool daemonize;
    bool foreground;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sluice [-f FILE] [-t] [-d | -F] [-V] [-h]\n"
            "  -f FILE  config file (default %s)\n"
            "  -t       check the config, certificates and keys, then exit\n"
            "  -d       daemonize (overrides daemon = false)\n"
            "  -F       stay in the foreground (overrides daemon = true)\n"
            "  -V       print the version\n"
            "  -h       this help\n",
            SLUICE_DEFAULT_CONFIG);
}

static int parse_options(int argc, char **argv, struct options *opts)
{
    int ch;

    opts->config = SLUICE_DEFAULT_CONFIG;
    while ((ch = getopt(argc, argv, "f:tdFVh")) != -1) {
        switch (ch) {
        case 'f':
            opts->config = optarg;
            break;
        case 't':
            opts->check_only = true;
            break;
        case 'd':
            opts->daemonize = true;
            opts->foreground = false;
            break;
        case 'F':
            opts->foreground = true;
            opts->daemonize = false;
            break;
        case 'V':
            printf("sluice %s%s\n", PACKAGE_VERSION, SLUICE_BUILD_NOTE);
            exit(EXIT_SUCCESS);
        case 'h':
            usage(stdout);
            exit(EXIT_SUCCESS);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "sluice: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    return 0;
}

/* -t: every certificate and key loads and matches; nothing is bound. */
static int check_config(const struct conf *conf)
{
    char err[2048];

    for (size_t i = 0; i < conf->nfrontends; i++) {
        SSL_CTX *ctx = tlsctx_build(&conf->frontends[i], err, sizeof(err));
        if (ctx == NULL) {
            fprintf(stderr, "sluice: %s\n", err);
            return EXIT_BAD_CONFIG;
        }
        SSL_CTX_free(ctx);
    }
    printf("configuration OK\n");
    return EXIT_SUCCESS;
}

static void start_logging(const struct conf *conf)
{
    char err[512];

    log_stderr_nonblocking();
    if (conf->syslog && log_open_syslog(conf->syslog_facility, err, sizeof(err)) < 0)
        log_warning("syslog: %s (lines meant for it are dropped until it answers)", err);
}

static int open_log_file(const struct conf *conf)
{
    char err[512];

    if (conf->log_file[0] == '\0' || log_open_file(conf->log_file, err, sizeof(err)) == 0)
        return 0;
    fprintf(stderr, "sluice: %s: log-file %s\n", conf->path, err);
    return -1;
}

/* Detach when asked, then record our pid: the daemon's, not the foreground caller's. */
static int become_daemon(struct master *m, bool detach, const char *pidfile)
{
    char err[512];

    if (detach && daemon_detach(err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        return -1;
    }
    if (m->pidfile_fd >= 0 && pidfile_write(m->pidfile_fd, err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: pidfile %s: %s\n", pidfile, err);
        return -1;
    }
    return 0;
}

static void master_free(struct master *m, const char *pidfile)
{
    generation_free(m, m->current);
    generation_free(m, m->old);
    listen_close_all(&m->sockets);
    shm_destroy(&m->shm, m->stats_file);
    free(m->stats_file);
    privileges_free(&m->privileges);
    ticketkeys_wipe();
    if (m->pidfile_fd >= 0)
        pidfile_remove(pidfile, m->pidfile_fd);
}

/* Everything a master needs before its first fork; exit status on failure, else -1. */
static int master_prepare(struct master *m, struct conf *conf)
{
    char err[2048];
    bool socket_failed;

    if (privileges_resolve(conf, &m->privileges, err, sizeof(err)) < 0 ||
        ticketkeys_init(err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        conf_free(conf);
        return EXIT_BAD_CONFIG;
    }
    if (conf->pidfile[0] != '\0' &&
        (m->pidfile_fd = pidfile_acquire(conf->pidfile, err, sizeof(err))) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        conf_free(conf);
        return EXIT_STARTUP;
    }
    m->stats_file = strdup(conf->stats_file);
    if (m->stats_file == NULL || open_log_file(conf) < 0) {
        conf_free(conf);
        return EXIT_STARTUP;
    }
    start_logging(conf);
    master_raise_fd_limit(conf);
    m->current = generation_build(m, conf, err, sizeof(err), &socket_failed);
    if (m->current == NULL) {
        fprintf(stderr, "sluice: %s\n", err);
        return socket_failed ? EXIT_STARTUP : EXIT_BAD_CONFIG;
    }
    if (shm_create(&m->shm, m->stats_file, m->privileges.drop ? m->privileges.gid : (gid_t)-1,
                   conf->handshake_permits, err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: %s: %s\n", conf->path, err);
        return EXIT_STARTUP;
    }
    listen_check_migrate_req();
    return -1;
}

int main(int argc, char **argv)
{
    struct options opts = {0};
    struct master m = {.pidfile_fd = -1};
    char err[2048];

    if (parse_options(argc, argv, &opts) < 0)
        return EXIT_BAD_CONFIG;
    struct conf *conf = conf_load(opts.config, err, sizeof(err));
    if (conf == NULL) {
        fprintf(stderr, "sluice: %s\n", err);
        return EXIT_BAD_CONFIG;
    }
    log_set_level(conf->log_level);
    if (opts.check_only) {
        int status = check_config(conf);
        conf_free(conf);
        return status;
    }
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "sluice: cannot ignore SIGPIPE: %s\n", strerror(errno));
        conf_free(conf);
        return EXIT_STARTUP;
    }
    char *pidfile = strdup(conf->pidfile);
    bool detach = opts.daemonize || (conf->daemon && !opts.foreground);
    m.config_path = opts.config;
    m.on_ready = daemon_ready;
    int status = pidfile == NULL ? EXIT_STARTUP : master_prepare(&m, conf);
    if (status < 0 && become_daemon(&m, detach, pidfile) < 0)
        status = EXIT_STARTUP;
    /* The loop is made after detaching, in the process that runs it. */
    if (status < 0 && (m.loop = ev_default_loop(EVFLAG_AUTO)) == NULL) {
        log_error("cannot initialise the event loop (bad LIBEV_FLAGS?)");
        status = EXIT_STARTUP;
    }
    if (status < 0)
        status = master_run(&m);
    master_free(&m, pidfile);
    free(pidfile);
    return status;
}
