#ifndef SLUICE_PROXYREAD_H
#define SLUICE_PROXYREAD_H

#include <sys/socket.h>

struct conn;

/* The addresses a load balancer's PROXY header gave, which stand for the socket's. */
struct proxyread_addrs {
    struct sockaddr_storage src, dst;
};

/*
 * A frontend with accept-proxy = true reads its client's PROXY header first (the state
 * PROXY_IN), under the handshake's deadline and without a permit.
 */
void proxyread_start(struct conn *c);
/*
 * Read on a wake-up. Returns 0 while the header is incomplete, -1 when the connection
 * was closed (a bad header, an EOF), 1 when the header is in: the caller starts the
 * handshake, on the bytes that follow it, still unread in the socket.
 */
int proxyread_step(struct conn *c);
/* Free what the connection holds for its header (at teardown). */
void proxyread_release(struct conn *c);

#endif
