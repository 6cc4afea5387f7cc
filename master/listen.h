#ifndef SLUICE_LISTEN_H
#define SLUICE_LISTEN_H

/*
 * The master's listening sockets: one SO_REUSEPORT socket per worker slot per address.
 * They outlive workers and generations: a generation takes references on the sockets it
 * uses, and a socket closes only when no live generation uses it any more.
 */
#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

struct listen_socket {
    struct addr addr; /* as configured: the key a reload matches on */
    unsigned slot;
    int fd;
    unsigned refs;
};

struct listen_set {
    struct listen_socket *v;
    size_t n, cap;
    /* Handed over by the master we replace (USR2), until a frontend claims them. */
    struct listen_socket *inherited;
    size_t ninherited, inherited_cap;
};

/* The listen backlog: the configured one, or the system's somaxconn for 0. */
int listen_backlog(unsigned configured);
/*
 * The socket for fe's address and slot, with a reference taken: the open one (its backlog
 * set anew) or a new one. -1 with "FILE:LINE: listen ADDR: step: reason" in err.
 */
int listen_acquire(struct listen_set *set, const struct conf_frontend *fe, unsigned slot,
                   int backlog, char *err, size_t errsize);
/*
 * A binary upgrade: keep fd, a listening socket of the previous master's slot, for the
 * frontend of this generation that listens on the same address in the same slot.
 * -1 with the reason in err when fd is not a listening TCP socket.
 */
int listen_inherit(struct listen_set *set, int fd, unsigned slot, char *err, size_t errsize);
/* Close the inherited sockets no frontend claimed: the new config dropped them. */
void listen_close_inherited(struct listen_set *set);
/* Drop a reference; the socket closes with its last one. */
void listen_release(struct listen_set *set, int fd);
/* In a new worker: close every socket for which keep(fd, arg) is false. */
void listen_close_unless(struct listen_set *set, bool (*keep)(int fd, void *arg), void *arg);
void listen_close_all(struct listen_set *set);
/*
 * Before closing for good: new connections (SYNs) are dropped from now on, and the client
 * tries again (a balancer: elsewhere), while handshakes under way still reach the queue.
 */
void listen_drop_syns(struct listen_set *set);
/* Warn when closing a listener would reset the connections in its queue. */
void listen_check_migrate_req(void);

#endif
