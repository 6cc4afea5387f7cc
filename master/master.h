#ifndef SLUICE_MASTER_H
#define SLUICE_MASTER_H

/*
 * The master's state: a process table of slots per generation (nginx ngx_processes[],
 * hitch worker_gen), the listening sockets, the shared segment, and what it needs to
 * reload, restart and stop workers.
 */
#include <ev.h>
#include <stdbool.h>
#include <sys/types.h>

#include "conf/conf.h"
#include "master/listen.h"
#include "master/privileges.h"
#include "master/spinguard.h"
#include "master/upgrade.h"
#include "shm/segment.h"
#include "worker/worker.h"

struct generation;
struct master;

/* One worker process in one slot. */
struct proc {
    struct master *master;
    struct generation *gen;
    unsigned slot;
    pid_t pid;      /* 0: none running */
    int control_fd; /* the master's end of the control channel, -1 when none */
    ev_io control_io;
    ev_tstamp started, last_heard;
    bool ready;
    const char *killed_for; /* "stuck" or "spinning" once the master killed it, else NULL */
    struct spinguard spin;
    /* crash backoff: deaths soon after start, in a row */
    unsigned quick_deaths;
    ev_timer restart_timer;
    int adopted_by; /* the slot serving this one's sockets while it is down, or -1 */
};

struct generation {
    unsigned id;
    struct conf *conf;
    struct frontend *frontends;
    size_t nfrontends;
    unsigned nslots;
    unsigned shm_half;  /* which half of the segment's slots (and permit owner ids) it uses */
    struct proc *procs; /* one per slot */
    bool retiring;
    bool announced; /* "ready" logged once every slot was served */
};

struct master {
    struct ev_loop *loop;
    const char *config_path;
    struct generation *current; /* serving, and the one restarted on deaths */
    struct generation *old;     /* retired, draining; NULL when none */
    struct listen_set sockets;
    struct shm shm;
    char *stats_file; /* fixed at start: not reloadable */
    /* A new master's stats file, under another name until it serves; else NULL */
    char *stats_file_pending;
    int pidfile_fd;
    bool pidfile_owned; /* ours to remove at exit: not before a new master serves, nor after */
    /* A new master until it serves: the old one still serves on the same sockets. */
    bool sockets_shared;
    struct upgrade upgrade;
    struct privileges privileges;
    unsigned next_generation;
    bool shutting_down;
    bool reload_pending;
    ev_signal sig_hup, sig_term, sig_int, sig_quit, sig_usr1, sig_usr2;
    ev_child child_watcher;
    ev_timer watchdog_timer;
    ev_timer shutdown_timer;
    /* TERM: new connections are held off, the listeners not closed yet */
    ev_timer syn_grace_timer;
    ev_timer start_timer; /* the newest generation must serve every slot before it fires */
    int exit_status;
    void (*on_ready)(struct master *m); /* once, when the first generation serves */
};

/* Serve until TERM/INT/QUIT: the master's loop. Returns the exit status. */
int master_run(struct master *m);
/* HUP: build the next generation from the config file, or keep the running one. */
void master_reload(struct master *m);
/* What the master itself takes from gen's config (logging, fd limit, permit total). */
void master_apply_config(struct master *m, const struct conf *running, struct generation *gen);
/* Raise RLIMIT_NOFILE towards what max-connections needs, and say when it falls short. */
void master_raise_fd_limit(const struct conf *conf);

#endif
