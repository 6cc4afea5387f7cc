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
#include "master/upgrade.h"

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

/*
 * Detach when asked, then record our pid: the daemon's, not the foreground caller's. A
 * new master of a binary upgrade does neither: it is detached already if the old one
 * was, and it writes its pid once it serves (master_serves).
 */
static int become_daemon(struct master *m, bool detach, const char *pidfile,
                         const struct upgrade_inheritance *in)
{
    char err[512];

    if (in->active) {
        daemon_adopt_channel(in->ready_fd, in->stderr_fd, in->detached);
        return 0;
    }
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

/* Once the first generation serves: publish what a new master took over, then say so. */
static void master_serves(struct master *m)
{
    char err[512];

    if (m->stats_file_pending != NULL) {
        if (shm_publish(m->stats_file_pending, m->stats_file, err, sizeof(err)) < 0) {
            log_error("%s", err);
        } else {
            free(m->stats_file_pending);
            m->stats_file_pending = NULL;
        }
    }
    m->sockets_shared = false; /* the old master lets go of them now */
    if (m->pidfile_fd >= 0 && !m->pidfile_owned) {
        if (pidfile_write(m->pidfile_fd, err, sizeof(err)) < 0)
            log_error("pidfile %s: %s", m->current->conf->pidfile, err);
        m->pidfile_owned = true;
    }
    daemon_ready();
}

static void master_free(struct master *m, const char *pidfile)
{
    generation_free(m, m->current);
    generation_free(m, m->old);
    listen_close_all(&m->sockets);
    shm_destroy(&m->shm, m->stats_file_pending != NULL ? m->stats_file_pending : m->stats_file);
    free(m->stats_file);
    free(m->stats_file_pending);
    privileges_free(&m->privileges);
    ticketkeys_wipe();
    if (m->pidfile_fd >= 0 && m->pidfile_owned)
        pidfile_remove(pidfile, m->pidfile_fd);
    else if (m->pidfile_fd >= 0)
        close(m->pidfile_fd); /* the new master's now, or never ours */
    upgrade_free(&m->upgrade);
}

/* A new master keeps the pidfile it inherited: a different one would lock out nothing. */
static int adopt_pidfile(struct master *m, const struct conf *conf,
                         const struct upgrade_inheritance *in, char *err, size_t errsize)
{
    bool wanted = conf->pidfile[0] != '\0';

    if (in->pidfile_fd < 0 && !wanted)
        return 0;
    if (in->pidfile_fd >= 0 && wanted && pidfile_is_linked(in->pidfile_fd, conf->pidfile)) {
        m->pidfile_fd = in->pidfile_fd;
        return 0;
    }
    snprintf(err, errsize,
             "%s: pidfile \"%s\" is not the running master's: a binary upgrade keeps the "
             "pidfile; restart sluice to change it",
             conf->path, conf->pidfile);
    return -1;
}

/* The pidfile: acquired, or adopted from the master we replace. */
static int take_pidfile(struct master *m, const struct conf *conf,
                        const struct upgrade_inheritance *in, char *err, size_t errsize)
{
    if (in->active)
        return adopt_pidfile(m, conf, in, err, errsize);
    if (conf->pidfile[0] != '\0' &&
        (m->pidfile_fd = pidfile_acquire(conf->pidfile, err, errsize)) < 0)
        return -1;
    m->pidfile_owned = m->pidfile_fd >= 0;
    return 0;
}

/*
 * The stats file. A new master makes its own under another name, so that the running
 * master's file stays readable until the new one serves, and one that fails leaves it.
 */
static int stats_file_names(struct master *m, const struct conf *conf,
                            const struct upgrade_inheritance *in)
{
    m->stats_file = strdup(conf->stats_file);
    if (m->stats_file == NULL)
        return -1;
    if (!in->active || conf->stats_file[0] == '\0')
        return 0;
    size_t size = strlen(conf->stats_file) + sizeof(".new-master");
    m->stats_file_pending = malloc(size);
    if (m->stats_file_pending == NULL)
        return -1;
    snprintf(m->stats_file_pending, size, "%s.new-master", conf->stats_file);
    return 0;
}

/* Everything a master needs before its first fork; exit status on failure, else -1. */
static int master_prepare(struct master *m, struct conf *conf, const struct upgrade_inheritance *in)
{
    char err[2048];
    bool socket_failed;

    if (privileges_resolve(conf, &m->privileges, err, sizeof(err)) < 0 ||
        ticketkeys_init(err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        conf_free(conf);
        return EXIT_BAD_CONFIG;
    }
    if (take_pidfile(m, conf, in, err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        conf_free(conf);
        return in->active ? EXIT_BAD_CONFIG : EXIT_STARTUP;
    }
    if (stats_file_names(m, conf, in) < 0 || open_log_file(conf) < 0) {
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
    listen_close_inherited(&m->sockets);
    const char *stats_file = m->stats_file_pending != NULL ? m->stats_file_pending : m->stats_file;
    if (shm_create(&m->shm, stats_file, m->privileges.drop ? m->privileges.gid : (gid_t)-1,
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
    struct upgrade_inheritance in;
    const char *mode_flag = opts.daemonize ? "-d" : opts.foreground ? "-F" : NULL;
    if (upgrade_init(&m.upgrade, opts.config, mode_flag, err, sizeof(err)) < 0 ||
        upgrade_inherit(&m, &in, err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        conf_free(conf);
        listen_close_all(&m.sockets);
        upgrade_free(&m.upgrade);
        return EXIT_STARTUP;
    }
    char *pidfile = strdup(conf->pidfile);
    bool detach = !in.active && (opts.daemonize || (conf->daemon && !opts.foreground));
    m.config_path = upgrade_config_path(&m.upgrade);
    m.sockets_shared = in.active;
    m.on_ready = master_serves;
    int status = pidfile == NULL ? EXIT_STARTUP : master_prepare(&m, conf, &in);
    if (status < 0 && become_daemon(&m, detach, pidfile, &in) < 0)
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
