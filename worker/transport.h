#ifndef SLUICE_TRANSPORT_H
#define SLUICE_TRANSPORT_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

struct conn;
struct endpoint;

enum io_status {
    IO_DONE,  /* moved *n > 0 bytes, or finished the shutdown; a read that drained its
                 source sets *want = EV_READ (wait for readiness before reading again) */
    IO_AGAIN, /* blocked: *want says which readiness (EV_READ or EV_WRITE) unblocks it */
    IO_EOF,   /* orderly end of the peer's stream (close_notify or FIN) */
    IO_FAIL,  /* the stream is broken; endpoint->why says how */
};

/* The relay never branches on TLS versus plaintext: each side is a transport. */
struct transport {
    enum io_status (*read)(struct endpoint *ep, char *buf, size_t len, size_t *n, int *want);
    enum io_status (*write)(struct endpoint *ep, const char *buf, size_t len, size_t *n, int *want);
    /* Ends our sending side: close_notify for TLS, FIN for plaintext. */
    enum io_status (*shutdown)(struct endpoint *ep, int *want);
};

struct endpoint {
    int fd;
    SSL *ssl; /* NULL for a plaintext endpoint */
    const struct transport *ops;
    ev_io io;
    struct conn *conn;
    const char *name;              /* "client" or "backend", for logs */
    unsigned long long wire_bytes; /* bytes through the fd, both ways */
    char *out;                     /* TLS records written but not yet sent (sockbio) */
    size_t out_len, out_cap;
    bool drained;  /* the last read took all the socket had, and no EV_READ came since */
    bool eof;      /* a read met the end of the peer's stream: nothing can follow */
    bool out_held; /* out holds records kept back to leave with the next ones */
    bool fin_sent; /* our side of the TCP stream is shut (after the close_notify) */
    /* plaintext: a read right after a short one found nothing, so the peer pauses with its
     * stream open, and a short read means the socket is empty */
    bool pauses_open;
    /* readiness reported and not yet served (0: not in the worker's ready list) */
    int ready_events;
    struct endpoint *ready_prev, *ready_next;
    /*
     * The failure behind the last IO_FAIL. The text lives in one buffer per worker, not
     * per connection: every caller acts on an IO_FAIL (closes) before any other I/O.
     */
    const char *why;
};

extern const struct transport transport_tls;
extern const struct transport transport_plain;

/* Bytes that crossed this endpoint's socket either way; grows whenever I/O progressed. */
unsigned long long endpoint_io_bytes(const struct endpoint *ep);
/* Record why ep failed (printf style), for the IO_FAIL about to be returned. */
void endpoint_failed(struct endpoint *ep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Read and drop what the peer already sent, so close(2) ends with FIN rather than RST. */
void endpoint_discard_input(const struct endpoint *ep);

#endif
