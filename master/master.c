/*
 * The master's loop: signals in, generations out. HUP builds the next generation beside
 * the running one and retires the old one only once the new one serves; TERM drains
 * everything; QUIT stops at once; USR1 reopens the log file for everyone; USR2 hands
 * everything over to a new binary (master/upgrade.c).
 */
#include "config.h"

#include "master/master.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "lib/log.h"
#include "master/generation.h"
#include "master/supervise.h"

void master_raise_fd_limit(const struct conf *conf)
{
    rlim_t wanted = (rlim_t)conf->max_connections * 2 + conf->nfrontends * conf->workers * 2 + 64;
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
        log_warning("max-connections %u needs %llu file descriptors per worker, the limit is "
                    "%llu: raise it (ulimit -n, LimitNOFILE=) or lower max-connections",
                    conf->max_connections, (unsigned long long)wanted,
                    (unsigned long long)limit.rlim_cur);
}

static bool same_string(const char *a, const char *b)
{
    return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

static void master_keep_string(const char *key, char **running, char **loaded)
{
    if (same_string(*running, *loaded))
        return;
    log_warning("reload: %s changed, needs a restart; keeping the running value", key);
    char *swap = *running;
    *running = *loaded;
    *loaded = swap;
}

/* Keys fixed for the master's life: a reload reports a change and keeps the old value. */
static void master_keep_fixed_keys(struct conf *running, struct conf *loaded)
{
    master_keep_string("user", &running->user, &loaded->user);
    master_keep_string("group", &running->group, &loaded->group);
    master_keep_string("chroot", &running->chroot, &loaded->chroot);
    master_keep_string("pidfile", &running->pidfile, &loaded->pidfile);
    master_keep_string("stats-file", &running->stats_file, &loaded->stats_file);
    if (running->daemon != loaded->daemon) {
        log_warning("reload: daemon changed, needs a restart; keeping the running value");
        loaded->daemon = running->daemon;
    }
}

/* Logging follows the new config at once: level, syslog and log file. */
static void master_apply_logging(struct master *m, const struct conf *running,
                                 const struct conf *loaded)
{
    char err[512];

    log_set_level(loaded->log_level);
    if (!loaded->syslog && running->syslog)
        log_close_syslog();
    else if (loaded->syslog &&
             (!running->syslog || loaded->syslog_facility != running->syslog_facility) &&
             log_open_syslog(loaded->syslog_facility, err, sizeof(err)) < 0)
        log_warning("syslog: %s", err);
    if (same_string(loaded->log_file, running->log_file))
        return;
    if (loaded->log_file[0] == '\0') {
        log_adopt_file_fd(-1);
    } else if (log_open_file(loaded->log_file, err, sizeof(err)) < 0) {
        log_error("log-file: %s", err);
        return;
    }
    supervise_send_log_file(m, log_file_fd());
}

void master_apply_config(struct master *m, const struct conf *running, struct generation *gen)
{
    master_apply_logging(m, running, gen->conf);
    master_raise_fd_limit(gen->conf);
    shm_set_permits(&m->shm, gen->conf->handshake_permits);
    atomic_store(&m->shm.header->generation, gen->id);
}

void master_reload(struct master *m)
{
    char err[2048];

    if (m->shutting_down)
        return;
    if (upgrade_running(&m->upgrade)) {
        log_warning("SIGHUP ignored: a binary upgrade is in progress (new master pid %ld); "
                    "reload the new master once it serves",
                    (long)m->upgrade.pid);
        return;
    }
    if (m->old != NULL || !m->current->announced) {
        if (!m->reload_pending && m->old != NULL)
            log_info("reload deferred until generation %u has drained", m->old->id);
        else if (!m->reload_pending)
            log_info("reload deferred until generation %u serves", m->current->id);
        m->reload_pending = true;
        return;
    }
    struct conf *conf = conf_load(m->config_path, err, sizeof(err));
    struct generation *gen = NULL;
    if (conf != NULL) {
        master_keep_fixed_keys(m->current->conf, conf);
        gen = generation_build(m, conf, err, sizeof(err), NULL);
    }
    if (gen == NULL) {
        log_error("reload failed, generation %u keeps serving: %s", m->current->id, err);
        supervise_grace(m);
        return;
    }
    gen->id = ++m->next_generation;
    /* Never the running generation's half, whatever ids a rollback left behind. */
    gen->shm_half = 1 - m->current->shm_half;
    master_apply_config(m, m->current->conf, gen);
    m->old = m->current;
    m->current = gen;
    supervise_start(m, gen);
    supervise_grace(m); /* the time spent loading certificates was ours, not the workers' */
}

static void master_signal_cb(struct ev_loop *loop, ev_signal *sig, int revents)
{
    struct master *m = sig->data;
    char err[512];

    (void)loop;
    (void)revents;
    switch (sig->signum) {
    case SIGHUP:
        log_info("SIGHUP: reloading %s", m->config_path);
        master_reload(m);
        break;
    case SIGTERM:
    case SIGINT:
        if (m->shutting_down)
            break;
        log_info("%s: draining, at most %gs", sig->signum == SIGTERM ? "SIGTERM" : "SIGINT",
                 m->current->conf->drain_timeout);
        upgrade_abort(m, SIGTERM);
        supervise_shutdown(m, true);
        break;
    case SIGQUIT:
        log_info("SIGQUIT: stopping every worker now");
        upgrade_abort(m, SIGQUIT);
        supervise_shutdown(m, false);
        break;
    case SIGUSR2:
        upgrade_start(m);
        break;
    case SIGUSR1:
        if (m->current->conf->log_file[0] == '\0') {
            log_info("SIGUSR1: no log-file configured, nothing to reopen");
            break;
        }
        log_info("SIGUSR1: reopening %s", m->current->conf->log_file);
        if (log_open_file(m->current->conf->log_file, err, sizeof(err)) < 0)
            log_error("log-file: %s", err);
        else
            supervise_send_log_file(m, log_file_fd());
        break;
    default:
        break;
    }
}

static void master_watch_signals(struct master *m)
{
    struct {
        ev_signal *watcher;
        int signum;
    } signals[] = {
        {&m->sig_hup, SIGHUP},   {&m->sig_term, SIGTERM}, {&m->sig_int, SIGINT},
        {&m->sig_quit, SIGQUIT}, {&m->sig_usr1, SIGUSR1}, {&m->sig_usr2, SIGUSR2},
    };

    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        ev_signal_init(signals[i].watcher, master_signal_cb, signals[i].signum);
        signals[i].watcher->data = m;
        ev_signal_start(m->loop, signals[i].watcher);
    }
}

static void master_unwatch_signals(struct master *m)
{
    ev_signal *signals[] = {&m->sig_hup,  &m->sig_term, &m->sig_int,
                            &m->sig_quit, &m->sig_usr1, &m->sig_usr2};

    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
        ev_signal_stop(m->loop, signals[i]);
}

int master_run(struct master *m)
{
    m->current->id = ++m->next_generation;
    atomic_store(&m->shm.header->generation, m->current->id);
    master_watch_signals(m);
    supervise_init(m);
    supervise_start(m, m->current);
    ev_run(m->loop, 0);
    supervise_stop(m);
    master_unwatch_signals(m);
    log_info("exiting");
    return m->exit_status;
}
