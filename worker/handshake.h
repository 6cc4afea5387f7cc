#ifndef SLUICE_HANDSHAKE_H
#define SLUICE_HANDSHAKE_H

#include <openssl/ssl.h>

struct conn;

/* Install the worker's callbacks on a frontend's context (after fork, before serving). */
void handshake_setup_ctx(SSL_CTX *ctx);
void handshake_start(struct conn *c);
/* Advance the handshake on a wake-up. Returns -1 when the connection was closed. */
int handshake_step(struct conn *c);

#endif
