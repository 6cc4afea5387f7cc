/*
 * RFC 5077 style tickets: a 16-byte key name, AES-256-CBC for the state and HMAC-SHA256
 * over it, through OpenSSL's EVP ticket callback.
 */
#include "config.h"

#include "master/ticketkeys.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

struct ticket_key {
    unsigned char name[16];
    unsigned char aes_key[32];
    unsigned char hmac_key[32];
};

/*
 * File scope because OpenSSL's callback has no argument to carry it; written once by the
 * master before any fork, read-only afterwards.
 */
static struct ticket_key ticket_key;
static int ticket_key_ready;
/* Fetched once: OpenSSL 3.0 looks an algorithm up by name on every use otherwise. */
static EVP_CIPHER *ticket_cipher;

int ticketkeys_init(char *err, size_t errsize)
{
    if (RAND_bytes(ticket_key.name, sizeof(ticket_key.name)) != 1 ||
        RAND_bytes(ticket_key.aes_key, sizeof(ticket_key.aes_key)) != 1 ||
        RAND_bytes(ticket_key.hmac_key, sizeof(ticket_key.hmac_key)) != 1) {
        snprintf(err, errsize, "cannot make session-ticket keys: the random generator failed");
        return -1;
    }
    if (ticket_cipher == NULL &&
        (ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL)) == NULL) {
        snprintf(err, errsize, "cannot make session-ticket keys: no AES-256-CBC");
        return -1;
    }
    ticket_key_ready = 1;
    return 0;
}

static int ticketkeys_set_mac(EVP_MAC_CTX *hctx)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, ticket_key.hmac_key,
                                          sizeof(ticket_key.hmac_key)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };

    return EVP_MAC_CTX_set_params(hctx, params);
}

/*
 * Returns 1 (ticket accepted), 2 (accepted, and send a new one), 0 (unknown key: full
 * handshake) or -1 (error).
 */
static int ticketkeys_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int encrypt)
{
    if (encrypt) {
        if (RAND_bytes(iv, 16) != 1)
            return -1;
        memcpy(key_name, ticket_key.name, sizeof(ticket_key.name));
        if (!ticketkeys_set_mac(hctx) ||
            !EVP_EncryptInit_ex(cctx, ticket_cipher, NULL, ticket_key.aes_key, iv))
            return -1;
        return 1;
    }
    if (CRYPTO_memcmp(key_name, ticket_key.name, sizeof(ticket_key.name)) != 0)
        return 0;
    if (!ticketkeys_set_mac(hctx) ||
        !EVP_DecryptInit_ex(cctx, ticket_cipher, NULL, ticket_key.aes_key, iv))
        return -1;
    /*
     * A TLS 1.3 client uses a ticket once (RFC 8446 C.4), and OpenSSL sends none after a
     * resumption unless asked: without a new one the client's next connection is a full
     * handshake. A TLS 1.2 ticket stays valid, so it needs no renewal.
     */
    return SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
}

int ticketkeys_install(SSL_CTX *ctx, char *err, size_t errsize)
{
    if (!ticket_key_ready && ticketkeys_init(err, errsize) < 0)
        return -1;
    if (!SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticketkeys_cb)) {
        snprintf(err, errsize, "cannot install the session-ticket key callback");
        return -1;
    }
    return 0;
}

void ticketkeys_wipe(void)
{
    OPENSSL_cleanse(&ticket_key, sizeof(ticket_key));
    ticket_key_ready = 0;
    EVP_CIPHER_free(ticket_cipher);
    ticket_cipher = NULL;
}
