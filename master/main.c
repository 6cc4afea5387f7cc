/*
 * sluice: parse the command line and the config, load every certificate and key,
 * open the listening sockets, then serve. Everything that can be wrong with the
 * config is found here, before a single connection is accepted.
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
#include "master/listen.h"
#include "master/tlsctx.h"
#include "worker/worker.h"

#define EXIT_BAD_CONFIG 1
#define EXIT_STARTUP 2

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
            printf("sluice %s\n", PACKAGE_VERSION);
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

static void frontends_free(struct frontend *frontends, size_t n)
{
    for (size_t i = 0; frontends != NULL && i < n; i++) {
        SSL_CTX_free(frontends[i].ctx);
        if (frontends[i].listen_fd >= 0)
            close(frontends[i].listen_fd);
    }
    free(frontends);
}

static struct frontend *frontends_build(const struct conf *conf, char *err, size_t errsize)
{
    struct frontend *frontends = calloc(conf->nfrontends, sizeof(*frontends));

    if (frontends == NULL) {
        snprintf(err, errsize, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < conf->nfrontends; i++)
        frontends[i].listen_fd = -1;
    for (size_t i = 0; i < conf->nfrontends; i++) {
        frontends[i].conf = &conf->frontends[i];
        frontends[i].ctx = tlsctx_build(&conf->frontends[i], err, errsize);
        if (frontends[i].ctx == NULL) {
            frontends_free(frontends, conf->nfrontends);
            return NULL;
        }
    }
    return frontends;
}

/*
 * Each connection holds two descriptors (client and backend). Raise the soft limit to
 * what max-connections needs, as far as the hard limit allows; say so when it falls short,
 * since running out shows up later as paused accepts.
 */
static void raise_fd_limit(const struct conf *conf)
{
    rlim_t wanted = (rlim_t)conf->max_connections * 2 + conf->nfrontends + 64;
    struct rlimit limit;

    if (getrlimit(RLIMIT_NOFILE, &limit) < 0) {
        log_errno(LOG_LEVEL_WARNING, "getrlimit RLIMIT_NOFILE");
        return;
    }
    if (limit.rlim_cur >= wanted)
        return;
    rlim_t old = limit.rlim_cur;
    limit.rlim_cur =
        limit.rlim_max == RLIM_INFINITY || limit.rlim_max >= wanted ? wanted : limit.rlim_max;
    if (limit.rlim_cur > old && setrlimit(RLIMIT_NOFILE, &limit) < 0) {
        log_errno(LOG_LEVEL_WARNING, "setrlimit RLIMIT_NOFILE to %llu",
                  (unsigned long long)limit.rlim_cur);
        limit.rlim_cur = old;
    }
    if (limit.rlim_cur < wanted)
        log_warning("max-connections %u needs %llu file descriptors, the limit is %llu: "
                    "raise it (ulimit -n, LimitNOFILE=) or lower max-connections",
                    conf->max_connections, (unsigned long long)wanted,
                    (unsigned long long)limit.rlim_cur);
}

static int frontends_listen(const struct conf *conf, struct frontend *frontends, char *err,
                            size_t errsize)
{
    int backlog = listen_backlog(conf->backlog);

    for (size_t i = 0; i < conf->nfrontends; i++) {
        frontends[i].listen_fd = listen_open(&conf->frontends[i], backlog, err, errsize);
        if (frontends[i].listen_fd < 0)
            return -1;
        log_info("listening on %s for %s (backlog %d)", conf->frontends[i].listen_text,
                 conf->frontends[i].backend_text, backlog);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct options opts = {0};
    char err[2048];
    int status = EXIT_STARTUP;

    if (parse_options(argc, argv, &opts) < 0)
        return EXIT_BAD_CONFIG;
    struct conf *conf = conf_load(opts.config, err, sizeof(err));
    if (conf == NULL) {
        fprintf(stderr, "sluice: %s\n", err);
        return EXIT_BAD_CONFIG;
    }
    log_set_level(conf->log_level);
    struct frontend *frontends = frontends_build(conf, err, sizeof(err));
    if (frontends == NULL) {
        fprintf(stderr, "sluice: %s\n", err);
        conf_free(conf);
        return EXIT_BAD_CONFIG;
    }
    if (opts.check_only) {
        printf("configuration OK\n");
        status = EXIT_SUCCESS;
    } else if (opts.daemonize || (conf->daemon && !opts.foreground)) {
        fprintf(stderr,
                "sluice: %s: daemon mode is not available in this version; run with -F "
                "under a supervisor\n",
                conf->path);
        status = EXIT_BAD_CONFIG;
    } else if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "sluice: cannot ignore SIGPIPE: %s\n", strerror(errno));
    } else {
        log_stderr_nonblocking();
        if (geteuid() == 0)
            log_warning("running as root: this version does not drop privileges (user, group "
                        "and chroot have no effect yet); prefer an unprivileged user with "
                        "CAP_NET_BIND_SERVICE");
        raise_fd_limit(conf);
        if (frontends_listen(conf, frontends, err, sizeof(err)) < 0)
            fprintf(stderr, "sluice: %s\n", err);
        else
            status = worker_run(conf, frontends, conf->nfrontends);
    }
    frontends_free(frontends, conf->nfrontends);
    conf_free(conf);
    return status;
}
