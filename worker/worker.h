#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"
#include "shm/segment.h"

struct conn;
struct listener;

/* A frontend as a generation serves it: its config, TLS context and listening sockets. */
struct frontend {
    const struct conf_frontend *conf;
    SSL_CTX *ctx;
    int *listen_fds; /* one per worker slot of the generation */
};

/* What the master hands a worker it forks. */
struct worker_spec {
    const struct conf *conf;
    struct frontend *frontends;
    size_t nfrontends;
    unsigned slot; /* listening socket index, 0 .. nslots-1 */
    unsigned nslots;
    unsigned generation;
    struct shm *shm;
    unsigned shm_slot; /* this worker's row in the shared segment, and its permit owner id */
    int control_fd;
    /* Stops the master's watchers in this process once the worker's own are running. */
    void (*forget_parent)(void *arg);
    void *forget_parent_arg;
};

struct worker {
    struct ev_loop *loop;
    const struct worker_spec *spec;
    const struct conf *conf;
    struct frontend *frontends;
    size_t nfrontends;
    struct listener **listeners; /* per slot: NULL, or one listener per frontend */
    struct conn *conns;          /* every live connection, for drain and shutdown */
    struct endpoint *ready;      /* endpoints with readiness to serve, first come first */
    unsigned nconns;
    unsigned nhandshakes; /* of them, in the handshake state */
    bool draining;
    ev_timer drain_timer;
    ev_signal sig_term, sig_int, sig_quit, sig_hup, sig_usr1, sig_usr2;
    ev_io control_io;
    ev_timer heartbeat_timer;
    bool ready_sent;
    /* accept pausing: at max-connections, or on EMFILE/ENFILE for a moment */
    bool accept_full;
    bool accept_backoff;
    ev_timer accept_backoff_timer;
    ev_tstamp accept_error_logged;
    unsigned long accept_errors_unlogged;
    int accept_reserve;        /* the next client's backend socket, not yet connected, or -1 */
    int accept_reserve_family; /* the address family it was made for */
    /* handshakes waiting for a permit, oldest first */
    struct conn *parked_head, *parked_tail;
    ev_timer permit_retry_timer;
    uint32_t permit_hint;
    /* this worker's row of the shared segment: counted into as things happen */
    struct shm_slot *shm_slot;
    struct shm_counters *counters;
    /* accepted counts at the last heartbeat and at the last heap trim */
    uint64_t accepted_at_beat, accepted_at_trim;
};

/* A forked worker's whole life: serve until retired, signalled or orphaned. Exit status. */
int worker_main(const struct worker_spec *spec);
void worker_conn_added(struct worker *w, struct conn *c);
void worker_conn_removed(struct worker *w, struct conn *c);
/* A connection enters (+1) or leaves (-1) the handshake state. */
void worker_handshakes_changed(struct worker *w, int delta);

#endif
