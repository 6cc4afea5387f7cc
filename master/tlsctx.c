#include "config.h"

#include "master/tlsctx.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "lib/log.h"
#include "master/ticketkeys.h"

#define CERT_EXPIRY_WARN_DAYS 30
#define TLSCTX_MAX_KEY_TYPES 8

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

static int tlsctx_certs(SSL_CTX *ctx, const struct conf_frontend *fe, char *err, size_t errsize)
{
    int key_types[TLSCTX_MAX_KEY_TYPES];
    size_t nkey_types = 0;

    for (size_t i = 0; i < fe->ncerts; i++) {
        const struct conf_cert *cert = &fe->certs[i];

        if (!SSL_CTX_use_certificate_chain_file(ctx, cert->cert))
            return tlsctx_fail(err, errsize, cert->origin, "cert %s: cannot load certificate",
                               cert->cert);
        X509 *x509 = SSL_CTX_get0_certificate(ctx);
        int type = EVP_PKEY_get_base_id(X509_get0_pubkey(x509));
        for (size_t t = 0; t < nkey_types; t++)
            if (key_types[t] == type)
                return tlsctx_fail(err, errsize, cert->origin,
                                   "cert %s: a frontend takes one certificate per key type "
                                   "(%s already loaded)",
                                   cert->cert, OBJ_nid2sn(type));
        if (nkey_types == TLSCTX_MAX_KEY_TYPES)
            return tlsctx_fail(err, errsize, cert->origin, "too many certificates");
        key_types[nkey_types++] = type;
        if (!SSL_CTX_use_PrivateKey_file(ctx, cert->key, SSL_FILETYPE_PEM))
            return tlsctx_fail(err, errsize, cert->origin, "key %s: cannot load private key",
                               cert->key);
        if (!SSL_CTX_check_private_key(ctx))
            return tlsctx_fail(err, errsize, cert->origin, "key %s does not match certificate %s",
                               cert->key, cert->cert);
        tlsctx_warn_expiry(cert, x509);
    }
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
    SSL_CTX_set_verify(ctx,
                       fe->verify_client == VERIFY_CLIENT_REQUIRE
                           ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                           : SSL_VERIFY_PEER,
                       NULL);
    return 0;
}

SSL_CTX *tlsctx_build(const struct conf_frontend *fe, char *err, size_t errsize)
{
    static const unsigned char session_id_context[] = "sluice";
    SSL_CTX *ctx;

    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tlsctx_fail(err, errsize, fe->origin, "cannot create TLS context");
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 (fe->tls.session_tickets ? 0 : SSL_OP_NO_TICKET));
    /* Partial writes and a moving buffer let the relay retry from its own buffer. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
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
        tlsctx_certs(ctx, fe, err, errsize) < 0 ||
        tlsctx_client_verify(ctx, fe, err, errsize) < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (fe->alpn_wire_len > 0)
        SSL_CTX_set_alpn_select_cb(ctx, tlsctx_alpn_select, (void *)fe);
    return ctx;
}
