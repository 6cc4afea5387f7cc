#ifndef SLUICE_TLSCTX_H
#define SLUICE_TLSCTX_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "conf/conf.h"

/*
 * Build a frontend's SSL_CTX: protocols, ciphers, certificates and keys (each checked
 * against the other), ALPN and client verification. NULL with "FILE:LINE: message" in err.
 */
SSL_CTX *tlsctx_build(const struct conf_frontend *fe, char *err, size_t errsize);

#endif
