#ifndef SLUICE_OCSP_H
#define SLUICE_OCSP_H

#include <openssl/ssl.h>

#include "conf/conf.h"

/*
 * OCSP stapling from a DER file beside a certificate (the ocsp key of a certs entry).
 *
 * Call right after leaf, with its chain, was loaded into ctx, once for every SSL_CTX the
 * certificate is loaded into. When cert->ocsp names a file, it is read now (at start-up
 * and on every SIGHUP, since the contexts are rebuilt), and the response is hung on leaf
 * if it is successful, for leaf, signed by leaf's issuer (found in the chain loaded with
 * it) or a responder that issuer delegated to, and current. The status callback that
 * staples it is installed on ctx. A response that fails a check is logged as a warning
 * naming the config line and the file, and not stapled; the certificate serves anyway:
 * stapling never stops a start or a reload.
 */
void ocsp_attach(SSL_CTX *ctx, X509 *leaf, const struct conf_cert *cert);

#endif
