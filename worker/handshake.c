/*
 * The TLS handshake, driven only by the client's own readiness events: nothing here
 * runs in the accept path, and a silent or slow client waits on its own deadline.
 */
#include "config.h"

#include "worker/handshake.h"

#include <errno.h>
#include <openssl/err.h>
#include <string.h>

#include "lib/log.h"
#include "worker/backend.h"
#include "worker/conn.h"
#include "worker/permit.h"
#include "worker/sockbio.h"
#include "worker/worker.h"

/*
 * The ClientHello is in: from here the handshake costs real work, so it needs a permit.
 * Before it, a close is an abort, not a failure.
 */
static int handshake_client_hello_cb(SSL *ssl, int *alert, void *arg)
{
    struct conn *c = SSL_get_app_data(ssl);

    (void)alert;
    (void)arg;
    c->hello_seen = true;
    return permit_acquire(c) ? SSL_CLIENT_HELLO_SUCCESS : SSL_CLIENT_HELLO_RETRY;
}

void handshake_setup_ctx(SSL_CTX *ctx)
{
    SSL_CTX_set_client_hello_cb(ctx, handshake_client_hello_cb, NULL);
}

void handshake_start(struct conn *c)
{
    conn_set_state(c, CONN_HANDSHAKE);
    ERR_clear_error();
    c->client.ssl = SSL_new(c->fe->ctx);
    BIO *bio = c->client.ssl != NULL ? sockbio_new(&c->client) : NULL;
    if (bio == NULL) {
        char reasons[256];
        conn_close(c, END_NO_RESOURCES, "cannot set up TLS: %s",
                   log_ssl_reasons(reasons, sizeof(reasons)));
        return;
    }
    SSL_set_bio(c->client.ssl, bio, bio);
    c->client.ops = &transport_tls;
    SSL_set_app_data(c->client.ssl, c);
    SSL_set_accept_state(c->client.ssl);
    conn_watch(c, &c->client, EV_READ);
}

static enum shm_tls_version handshake_version(const SSL *ssl)
{
    switch (SSL_version(ssl)) {
    case TLS1_3_VERSION:
        return SHM_TLS_1_3;
    case TLS1_2_VERSION:
        return SHM_TLS_1_2;
    default:
        return SHM_TLS_OTHER;
    }
}

static void handshake_count_success(struct conn *c)
{
    struct shm_counters *counters = c->worker->counters;

    c->handshake_done = true;
    c->handshake_us = conn_clock_us() - c->accepted_us;
    stats_add(&counters->handshakes[SHM_HANDSHAKE_OK], 1);
    stats_add(&counters->handshakes_by_version[handshake_version(c->client.ssl)], 1);
    if (SSL_session_reused(c->client.ssl))
        stats_add(&counters->handshakes_resumed, 1);
    stats_record_handshake(counters, c->handshake_us);
}

static void handshake_log_success(struct conn *c)
{
    const unsigned char *alpn;
    unsigned alpn_len;

    if (!log_level_enabled(LOG_LEVEL_DEBUG))
        return;
    SSL_get0_alpn_selected(c->client.ssl, &alpn, &alpn_len);
    conn_log(c, LOG_LEVEL_DEBUG, "handshake done: %s %s%s alpn=%.*s",
             SSL_get_version(c->client.ssl), SSL_get_cipher_name(c->client.ssl),
             SSL_session_reused(c->client.ssl) ? " resumed" : "", alpn_len ? (int)alpn_len : 1,
             alpn_len ? (const char *)alpn : "-");
}

int handshake_step(struct conn *c)
{
    SSL *ssl = c->client.ssl;
    char reasons[256];

    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(ssl);
    int saved_errno = errno;
    int error = SSL_get_error(ssl, rc);
    if (rc == 1 && SSL_version(ssl) == TLS1_3_VERSION) {
        /*
         * All TLS 1.3 writes after its Finished are session tickets, which the client does
         * not wait for: they leave with the first answer, in its segment (relay_start).
         */
        if (!endpoint_hold_output(&c->client)) {
            conn_close(c, END_NO_RESOURCES, "no memory for %zu bytes of session tickets",
                       c->client.out_len);
            return -1;
        }
    } else if (rc == 1 || error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE ||
               error == SSL_ERROR_WANT_CLIENT_HELLO_CB) {
        if (endpoint_flush(&c->client) == IO_FAIL) {
            conn_close(c, END_HANDSHAKE_FAILED, "%s", c->client.why);
            return -1;
        }
    }
    int unsent = endpoint_output_pending(&c->client) ? EV_WRITE : 0;
    if (rc == 1) {
        permit_release(c);
        handshake_count_success(c);
        handshake_log_success(c);
        return backend_connect(c);
    }
    switch (error) {
    case SSL_ERROR_WANT_READ:
        conn_watch(c, &c->client, EV_READ | unsent);
        return 0;
    case SSL_ERROR_WANT_WRITE:
        conn_watch(c, &c->client, EV_WRITE);
        return 0;
    case SSL_ERROR_WANT_CLIENT_HELLO_CB:
        /* Parked for a permit: the ClientHello is read, nothing to wait for on the socket. */
        conn_watch(c, &c->client, unsent);
        return 0;
    default:
        break;
    }
    if (!c->hello_seen && BIO_number_read(SSL_get_rbio(ssl)) == 0) {
        ERR_clear_error();
        conn_close(c, END_HANDSHAKE_ABORTED, NULL);
    } else if (ERR_peek_error() != 0) {
        long verify = SSL_get_verify_result(ssl);
        log_ssl_reasons(reasons, sizeof(reasons));
        if (verify != X509_V_OK)
            conn_close(c, END_HANDSHAKE_FAILED, "%s: client certificate: %s", reasons,
                       X509_verify_cert_error_string(verify));
        else
            conn_close(c, END_HANDSHAKE_FAILED, "%s", reasons);
    } else {
        conn_close(c, END_HANDSHAKE_FAILED, "%s",
                   saved_errno != 0 ? strerror(saved_errno) : "connection closed by the client");
    }
    return -1;
}
