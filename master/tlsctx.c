#include "config.h"

#include "master/tlsctx.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lib/log.h"
#include "master/ocsp.h"
#include "master/sni.h"
#include "master/ticketkeys.h"

#define CERT_EXPIRY_WARN_DAYS 30

static int tlsctx_fail(char *err, size_t errsize, struct conf_origin origin, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Report against the config line, with OpenSSL's reasons appended when it has any. */
static int tlsctx_fail(char *err, size_t errsize, struct conf_origin origin, const char *fmt, ...)
{
    char msg[1024], reasons[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (ERR_peek_error() != 0)
        snprintf(err, errsize, "%s:%d: %s: %s", origin.file, origin.line, msg,
                 log_ssl_reasons(reasons, sizeof(reasons)));
    else
        snprintf(err, errsize, "%s:%d: %s", origin.file, origin.line, msg);
    return -1;
}

static int tlsctx_protocols(SSL_CTX *ctx, const struct conf_tls *tls, char *err, size_t errsize)
{
    int min = tls->protocols & CONF_TLS_1_2 ? TLS1_2_VERSION : TLS1_3_VERSION;
    int max = tls->protocols & CONF_TLS_1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;

    if (!SSL_CTX_set_min_proto_version(ctx, min) || !SSL_CTX_set_max_proto_version(ctx, max))
        return tlsctx_fail(err, errsize, tls->protocols_origin, "cannot set protocols");
    if ((tls->protocols & CONF_TLS_1_2) && !SSL_CTX_set_cipher_list(ctx, tls->ciphers))
        return tlsctx_fail(err, errsize, tls->ciphers_origin, "ciphers \"%s\" select nothing",
                           tls->ciphers);
    if ((tls->protocols & CONF_TLS_1_3) && !SSL_CTX_set_ciphersuites(ctx, tls->ciphersuites))
        return tlsctx_fail(err, errsize, tls->ciphersuites_origin, "ciphersuites \"%s\" invalid",
                           tls->ciphersuites);
    if (!SSL_CTX_set1_groups_list(ctx, tls->groups))
        return tlsctx_fail(err, errsize, tls->groups_origin, "groups \"%s\" invalid", tls->groups);
    return 0;
}

static void tlsctx_warn_expiry(const struct conf_cert *cert, X509 *x509)
{
    const ASN1_TIME *not_after = X509_get0_notAfter(x509);
    time_t soon = time(NULL) + CERT_EXPIRY_WARN_DAYS * 86400;
    char when[64] = "?";
    BIO *mem = BIO_new(BIO_s_mem());

    if (mem != NULL && ASN1_TIME_print(mem, not_after) > 0) {
        int n = BIO_read(mem, when, sizeof(when) - 1);
        when[n > 0 ? n : 0] = '\0';
    }
    BIO_free(mem);
    if (X509_cmp_current_time(not_after) < 0)
        log_warning("%s:%d: certificate %s expired on %s", cert->origin.file, cert->origin.line,
                    cert->cert, when);
    else if (X509_cmp_time(not_after, &soon) < 0)
        log_warning("%s:%d: certificate %s expires on %s", cert->origin.file, cert->origin.line,
                    cert->cert, when);
}

/* The certificate file's first certificate: its names, key type and expiry. */
static X509 *tlsctx_read_leaf(const struct conf_cert *cert, char *err, size_t errsize)
{
    BIO *bio = BIO_new_file(cert->cert, "r");
    X509 *leaf = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;

    BIO_free(bio);
    if (leaf == NULL)
        tlsctx_fail(err, errsize, cert->origin, "cert %s: cannot load certificate", cert->cert);
    return leaf;
}

static int tlsctx_load_cert(SSL_CTX *ctx, const struct conf_cert *cert, char *err, size_t errsize)
{
    if (!SSL_CTX_use_certificate_chain_file(ctx, cert->cert))
        return tlsctx_fail(err, errsize, cert->origin, "cert %s: cannot load certificate",
                           cert->cert);
    if (!SSL_CTX_use_PrivateKey_file(ctx, cert->key, SSL_FILETYPE_PEM))
        return tlsctx_fail(err, errsize, cert->origin, "key %s: cannot load private key",
                           cert->key);
    if (!SSL_CTX_check_private_key(ctx))
        return tlsctx_fail(err, errsize, cert->origin, "key %s does not match certificate %s",
                           cert->key, cert->cert);
    ocsp_attach(ctx, SSL_CTX_get0_certificate(ctx), cert);
    return 0;
}

static int tlsctx_certs(SSL_CTX *ctx, const struct conf_frontend *fe, const struct sni_set *set,
                        char *err, size_t errsize)
{
    for (size_t i = 0; i < set->ncerts; i++)
        if (tlsctx_load_cert(ctx, &fe->certs[set->certs[i]], err, errsize) < 0)
            return -1;
    return 0;
}

static int tlsctx_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                              const unsigned char *in, unsigned int inlen, void *arg)
{
    const struct conf_frontend *fe = arg;
    unsigned char *selected;

    (void)ssl;
    /* No common protocol: go on without ALPN and let the backend decide, as nginx does. */
    if (SSL_select_next_proto(&selected, outlen, fe->alpn_wire, (unsigned)fe->alpn_wire_len, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

static void tlsctx_warn_crl_expiry(const struct conf_frontend *fe, const X509_CRL *crl)
{
    const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);

    if (next != NULL && X509_cmp_current_time(next) < 0)
        log_warning("%s:%d: crl %s: a CRL's next update is past: every client certificate "
                    "its issuer signed is refused until the file is renewed",
                    fe->crl_origin.file, fe->crl_origin.line, fe->crl);
}

/* Client certificates are checked against the revocation lists of fe->crl, leaf only. */
static int tlsctx_crl(SSL_CTX *ctx, const struct conf_frontend *fe, char *err, size_t errsize)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    BIO *bio = BIO_new_file(fe->crl, "r");
    X509_CRL *crl;
    int loaded = 0;

    if (bio == NULL)
        return tlsctx_fail(err, errsize, fe->crl_origin, "crl %s: cannot open", fe->crl);
    while ((crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)) != NULL) {
        tlsctx_warn_crl_expiry(fe, crl);
        int added = X509_STORE_add_crl(store, crl);
        X509_CRL_free(crl);
        if (!added) {
            BIO_free(bio);
            return tlsctx_fail(err, errsize, fe->crl_origin, "crl %s: cannot add a CRL", fe->crl);
        }
        loaded++;
    }
    BIO_free(bio);
    /* The read that ends the loop fails with "no start line" at the end of the file. */
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE || loaded == 0)
        return tlsctx_fail(err, errsize, fe->crl_origin, "crl %s: %s", fe->crl,
                           loaded == 0 ? "no PEM CRL in the file" : "cannot parse a CRL");
    ERR_clear_error();
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    return 0;
}

static int tlsctx_client_verify(SSL_CTX *ctx, const struct conf_frontend *fe, char *err,
                                size_t errsize)
{
    if (fe->verify_client == VERIFY_CLIENT_NONE)
        return 0;
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(fe->client_ca);
    if (names == NULL || !SSL_CTX_load_verify_locations(ctx, fe->client_ca, NULL)) {
        sk_X509_NAME_pop_free(names, X509_NAME_free);
        return tlsctx_fail(err, errsize, fe->client_ca_origin,
                           "client-ca %s: cannot load CA certificates", fe->client_ca);
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    if (fe->crl[0] != '\0' && tlsctx_crl(ctx, fe, err, errsize) < 0)
        return -1;
    SSL_CTX_set_verify(ctx,
                       fe->verify_client == VERIFY_CLIENT_REQUIRE
                           ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                           : SSL_VERIFY_PEER,
                       NULL);
    return 0;
}

/* A context with every setting of the frontend but its certificates. */
static SSL_CTX *tlsctx_new(const struct conf_frontend *fe, char *err, size_t errsize)
{
    static const unsigned char session_id_context[] = "sluice";
    SSL_CTX *ctx;

    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tlsctx_fail(err, errsize, fe->origin, "cannot create TLS context");
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 (fe->tls.session_tickets ? 0 : SSL_OP_NO_TICKET));
    /*
     * Partial writes and a moving buffer let the relay retry from its own buffer. The
     * client gets the cert file's chain as it is: left to complete it, OpenSSL would run
     * a chain build on every handshake, from client-ca's trust store of all places.
     */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_NO_AUTO_CHAIN);
    /*
     * Resumption is by ticket only: a cache in each worker would miss on every other
     * worker, and it would hold every TLS 1.2 client's session (up to 20,480 each) and
     * sweep them all every 255 handshakes.
     */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* Read whole records, and those behind them, in one recv(2) rather than two per record. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_id_context(ctx, session_id_context, sizeof(session_id_context) - 1);
    /* SSL_OP_NO_TICKET alone only makes TLS 1.3 tickets stateful: send none at all. */
    if (!fe->tls.session_tickets && !SSL_CTX_set_num_tickets(ctx, 0)) {
        tlsctx_fail(err, errsize, fe->origin, "cannot turn session tickets off");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (fe->tls.session_tickets && ticketkeys_install(ctx, &fe->tls, err, errsize) < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (tlsctx_protocols(ctx, &fe->tls, err, errsize) < 0 ||
        tlsctx_client_verify(ctx, fe, err, errsize) < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (fe->alpn_wire_len > 0)
        SSL_CTX_set_alpn_select_cb(ctx, tlsctx_alpn_select, (void *)fe);
    return ctx;
}

static SSL_CTX *tlsctx_build_set(const struct conf_frontend *fe, const struct sni_set *set,
                                 char *err, size_t errsize)
{
    SSL_CTX *ctx = tlsctx_new(fe, err, errsize);

    if (ctx != NULL && tlsctx_certs(ctx, fe, set, err, errsize) < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* One context per set of the plan; the default one chooses among them by SNI. */
static SSL_CTX *tlsctx_build_sets(const struct conf_frontend *fe, struct sni_map *map, char *err,
                                  size_t errsize)
{
    size_t nsets = sni_map_nsets(map);
    SSL_CTX **ctxs = calloc(nsets, sizeof(*ctxs));
    SSL_CTX *ctx = NULL;

    if (ctxs == NULL) {
        snprintf(err, errsize, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nsets; i++)
        if ((ctxs[i] = tlsctx_build_set(fe, sni_map_set(map, i), err, errsize)) == NULL)
            goto fail;
    ctx = ctxs[sni_map_default(map)];
    if (sni_map_trivial(map))
        sni_map_free(map);
    else if (sni_map_install(map, ctxs, err, errsize) < 0)
        goto fail;
    free(ctxs);
    return ctx;
fail:
    for (size_t i = 0; ctxs != NULL && i < nsets; i++)
        SSL_CTX_free(ctxs[i]);
    free(ctxs);
    sni_map_free(map);
    return NULL;
}

SSL_CTX *tlsctx_build(const struct conf_frontend *fe, char *err, size_t errsize)
{
    struct sni_cert *certs = calloc(fe->ncerts, sizeof(*certs));
    SSL_CTX *ctx = NULL;
    size_t nread = 0;

    ERR_clear_error();
    if (certs == NULL) {
        snprintf(err, errsize, "out of memory");
        return NULL;
    }
    for (; nread < fe->ncerts; nread++) {
        certs[nread].conf = &fe->certs[nread];
        if ((certs[nread].leaf = tlsctx_read_leaf(&fe->certs[nread], err, errsize)) == NULL)
            break;
        tlsctx_warn_expiry(&fe->certs[nread], certs[nread].leaf);
    }
    if (nread == fe->ncerts) {
        struct sni_map *map = sni_map_plan(certs, fe->ncerts, fe->sni_strict, err, errsize);
        if (map != NULL)
            ctx = tlsctx_build_sets(fe, map, err, errsize);
    }
    for (size_t i = 0; i < nread; i++)
        X509_free(certs[i].leaf);
    free(certs);
    return ctx;
}
