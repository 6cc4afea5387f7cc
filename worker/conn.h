#ifndef SLUICE_CONN_H
#define SLUICE_CONN_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/log.h"
#include "worker/transport.h"

struct worker;
struct frontend;
struct proxyread;
struct proxyread_addrs;

/* ACCEPTED is conn_new itself; the first state is PROXY_IN with accept-proxy, else HANDSHAKE. */
enum conn_state {
    CONN_PROXY_IN,   /* a balancer's PROXY header, under handshake-timeout from accept */
    CONN_HANDSHAKE,  /* TLS handshake under handshake-timeout, counted from accept */
    CONN_CONNECTING, /* backend connect under backend-connect-timeout */
    CONN_RELAY,      /* both directions under idle-timeout */
    CONN_CLOSING,    /* backend done, close_notify sent; the client has close-timeout */
};

/* Why a connection ended: decides the log level, the stats and the goodbye to the client. */
enum conn_end {
    END_DONE,
    END_HANDSHAKE_TIMEOUT,
    END_HANDSHAKE_ABORTED,
    END_HANDSHAKE_FAILED,
    END_BACKEND_CONNECT_FAILED,
    END_BACKEND_CONNECT_TIMEOUT,
    END_BACKEND_ERROR,
    END_CLIENT_ERROR,
    END_IDLE_TIMEOUT,
    END_CLOSE_TIMEOUT,
    END_SPINNING,
    END_NO_RESOURCES,
    END_SHUTDOWN,
};

enum relay_dir_state {
    DIR_OPEN,     /* reading the source */
    DIR_DRAINING, /* source ended: flush the buffer, then end the sink's stream */
    DIR_SHUT,     /* sink's stream ended */
};

/* One direction of the relay: source -> bounded buffer -> sink. */
struct relay_dir {
    struct endpoint *src, *dst;
    char *buf; /* the worker's scratch during a step; afterwards only bytes the sink refused */
    size_t start, end, cap;
    enum relay_dir_state state;
    int src_blocked;          /* readiness the source waits for before reading again, 0 if none */
    int dst_blocked;          /* readiness the sink waits for before writing again, 0 if none */
    unsigned long long bytes; /* delivered to the sink */
    size_t own_bytes; /* leading buffered bytes of our own (the PROXY header): not counted */
};

struct conn {
    struct worker *worker;
    struct frontend *fe;
    struct conn *prev, *next;
    enum conn_state state;
    struct endpoint client, backend;
    struct relay_dir c2b, b2c;
    ev_timer timer;
    ev_tstamp last_activity;
    unsigned long long transitions; /* state changes, which count as progress */
    unsigned spurious_streak;
    uint64_t accepted_us;               /* monotonic clock */
    uint64_t handshake_us;              /* accept to Finished, once the handshake is done */
    const struct endpoint *ended_first; /* the side whose stream ended first, or NULL */
    bool hello_seen;
    bool handshake_done;
    bool parked; /* waiting for a handshake permit */
    struct conn *park_prev, *park_next;
    uint32_t permit;                 /* permit cell held, or PERMIT_NONE */
    struct proxyread *proxyread;     /* PROXY_IN: the header so far */
    struct proxyread_addrs *proxied; /* the addresses a PROXY header gave, or NULL */
    char peer[64];                   /* the client: the socket's peer, or the header's source */
};

/*
 * Take over an accepted client socket and start its handshake (or its PROXY header).
 * backend_reserve is its backend socket, made at accept so that a worker short of
 * descriptors leaves clients queued rather than failing them after their handshakes
 * (-1 when this host cannot make such a socket: the connect then says why).
 */
void conn_new(struct worker *w, struct frontend *fe, int fd, int backend_reserve,
              const struct sockaddr *sa, socklen_t salen);
void conn_set_state(struct conn *c, enum conn_state state);
void conn_progressed(struct conn *c);
/*
 * A relaying connection holds client records (TLS 1.3 session tickets) for its first
 * answer: the timer sends them on their own after HELD_OUTPUT_WAIT if the answer is late,
 * as they would have gone without the hold, and then goes back to the idle deadline.
 */
#define HELD_OUTPUT_WAIT 0.05
void conn_limit_hold(struct conn *c);
/* Microseconds on the monotonic clock. */
uint64_t conn_clock_us(void);
/* The one teardown: logs "connection closed: <end>[: detail]", counts it, frees c. */
void conn_close(struct conn *c, enum conn_end end, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void conn_log(const struct conn *c, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Serve the endpoints whose readiness libev reported, in epoll's order (see conn.c). */
void conn_run_ready(struct worker *w);
/* Watch exactly these events (EV_READ|EV_WRITE, or 0) on an endpoint's fd. */
void conn_watch(struct conn *c, struct endpoint *ep, int events);
const char *conn_state_name(enum conn_state state);

#endif
