#ifndef SLUICE_UPGRADE_H
#define SLUICE_UPGRADE_H

/*
 * Binary upgrade, nginx-style. On USR2 the master forks and executes its binary again
 * (read from disk anew: a package upgrade replaced it), handing the new master its
 * listening sockets, its pidfile lock and a readiness channel through the environment.
 * The new master loads the config itself, starts its workers, publishes its stats file
 * and pidfile and says 'R'; only then does the old master drain its workers and exit.
 * Until then the old one serves as before, and any failure of the new one (a bad config,
 * a binary that does not start, workers that cannot serve) is logged with what the new
 * master printed, and changes nothing.
 */
#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct master;

/* The old master's side of one upgrade in progress. */
struct upgrade {
    const char *exe; /* the absolute path sluice was started from, or NULL */
    char **argv;     /* what it is started with: exe, -f ABSOLUTE-CONFIG, -d or -F */
    pid_t pid;       /* the new master; 0 when no upgrade runs */
    bool pending;    /* USR2 came during a reload: start once one generation serves */
    bool reaped;
    int ready_fd;  /* our end of the readiness channel, -1 when closed */
    int output_fd; /* the new master's stderr until it is ready, -1 when closed */
    ev_io ready_io, output_io;
    ev_timer deadline;
    double deadline_s;
    char output[1024]; /* the tail of what it printed */
    size_t output_len;
};

/* What a new master inherited: descriptors from the environment, or -1. */
struct upgrade_inheritance {
    bool active;
    int ready_fd, stderr_fd, pidfile_fd;
    bool detached;
};

/*
 * At start: remember how to execute this binary again. config is -f's argument (made
 * absolute here: a daemon runs in /), mode_flag "-d", "-F" or NULL. -1 with err when
 * out of memory; an exe that cannot be found only disables USR2 (said when it comes).
 */
int upgrade_init(struct upgrade *up, const char *config, const char *mode_flag, char *err,
                 size_t errsize);
void upgrade_free(struct upgrade *up);
/* The config path as made absolute by upgrade_init (for HUP as well). */
const char *upgrade_config_path(const struct upgrade *up);
/* USR2: start the new master, defer it past a reload, or log why not. */
void upgrade_start(struct master *m);
/* A generation now serves alone: start a deferred upgrade. */
void upgrade_run_pending(struct master *m);
/* A child reaped: true when it was the new master (then handled here). */
bool upgrade_reaped(struct master *m, pid_t pid, int status);
/* TERM or QUIT while a new master starts: it goes too. */
void upgrade_abort(struct master *m, int sig);
/* In a forked worker: the upgrade's descriptors are the master's, not the worker's. */
void upgrade_close_in_child(struct upgrade *up);
bool upgrade_running(const struct upgrade *up);

/*
 * In the new master, first thing: take the descriptors named by the environment (and
 * remove it, so no child sees it) into in, the listening sockets into m->sockets.
 * 0 when there is no upgrade or all is well; -1 with err.
 */
int upgrade_inherit(struct master *m, struct upgrade_inheritance *in, char *err, size_t errsize);

#endif
