#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

struct conn;
struct listener;

/* A frontend as a worker serves it: its config, TLS context and listening socket. */
struct frontend {
    const struct conf_frontend *conf;
    SSL_CTX *ctx;
    int listen_fd;
};

struct worker_stats {
    unsigned long long accepted;
    unsigned long long handshakes_ok;
    unsigned long long handshakes_failed;
    unsigned long long handshake_timeouts;
    unsigned long long handshakes_aborted;
    unsigned long long backend_failures;
    unsigned long long wakeups;
    unsigned long long spurious_wakeups;
    unsigned long long bytes_client_to_backend;
    unsigned long long bytes_backend_to_client;
};

struct worker {
    struct ev_loop *loop;
    const struct conf *conf;
    struct frontend *frontends;
    size_t nfrontends;
    struct listener *listeners;
    struct conn *conns; /* every live connection, for drain and shutdown */
    unsigned nconns;
    bool draining;
    ev_timer drain_timer;
    ev_signal sig_term, sig_int, sig_quit, sig_hup, sig_usr1;
    /* accept pausing: at max-connections, or on EMFILE/ENFILE for a moment */
    bool accept_full;
    bool accept_backoff;
    ev_timer accept_backoff_timer;
    ev_tstamp accept_error_logged;
    unsigned long accept_errors_unlogged;
    struct worker_stats stats;
};

/* Serve the frontends until TERM/INT (drain) or QUIT. Returns the exit status. */
int worker_run(const struct conf *conf, struct frontend *frontends, size_t nfrontends);
void worker_conn_added(struct worker *w, struct conn *c);
void worker_conn_removed(struct worker *w, struct conn *c);

#endif
