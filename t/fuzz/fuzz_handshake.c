/*
 * Fuzz target: the server side of a TLS handshake with sluice's own SSL_CTXs, built
 * once by conf_load() and tlsctx_build() from a config this file writes, with
 * certificates it makes: two frontends, one lenient and one sni-strict, with SNI
 * choosing among five certificates (an RSA and an ECDSA one for the same names, and two
 * wildcards), ALPN, the master's ticket keys on one and a ticket-key-file on the other,
 * which also asks for client certificates against a CA and a CRL.
 *
 * Input: one byte of flags (bit 0: the strict frontend; bit 1: the client-hello callback
 * parks the handshake once, as a worker does when no permit is free), then the client's
 * bytes in pieces, each a 16-bit big-endian length and that many bytes (a short last
 * piece takes what is left). Each piece goes into a memory BIO and the handshake runs
 * until it wants more or fails; what the server writes is looked at, then dropped.
 *
 * Checked once the server has answered with a ServerHello: ALPN chose the frontend's
 * first protocol that the client offers (or none); a strict frontend answered only a name one of
 * its certificates has; the certificate served has the name asked for (exact, else the one-label
 * wildcard, as sluice.conf(5) words it), or is a default one when no certificate has it.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "master/ticketkeys.h"
#include "master/tlsctx.h"
#include "t/fuzz/fuzz.h"

#define FLAG_STRICT 0x01
#define FLAG_PARK 0x02
#define DRIVE_ROUNDS_MAX 64
#define NAME_MAX_LEN 253 /* sni.c's SNI_NAME_MAX */
#define NCERTS 5
#define NFRONTENDS 2

struct fixture_cert {
    const char *file; /* c0.pem, c0.key beside it */
    unsigned frontend;
    bool rsa;
    const char *names[2]; /* DNS SANs */
    X509 *leaf;
};

static struct fixture_cert certs[NCERTS] = {
    {"c0", 0, true, {"www.example.com", "example.com"}, NULL},
    {"c1", 0, false, {"www.example.com", "example.com"}, NULL},
    {"c2", 0, false, {"*.example.org", NULL}, NULL},
    {"c3", 1, false, {"strict.example.net", NULL}, NULL},
    {"c4", 1, true, {"*.wild.example.net", "api.example.net"}, NULL},
};

static const char *const alpn[NFRONTENDS][2] = {{"h2", "http/1.1"}, {"http/1.1", NULL}};
static const char *const config_text = "workers = 1;\n"
                                       "frontends = (\n"
                                       "  {\n"
                                       "    listen = \"127.0.0.1:9441\";\n"
                                       "    backend = \"127.0.0.1:9440\";\n"
                                       "    alpn = [ \"h2\", \"http/1.1\" ];\n"
                                       "    certs = ( { cert = \"c0.pem\"; key = \"c0.key\"; },\n"
                                       "              { cert = \"c1.pem\"; key = \"c1.key\"; },\n"
                                       "              { cert = \"c2.pem\"; key = \"c2.key\"; } );\n"
                                       "  },\n"
                                       "  {\n"
                                       "    listen = \"127.0.0.1:9442\";\n"
                                       "    backend = \"127.0.0.1:9440\";\n"
                                       "    sni-strict = true;\n"
                                       "    alpn = [ \"http/1.1\" ];\n"
                                       "    client-ca = \"ca.pem\";\n"
                                       "    verify-client = \"optional\";\n"
                                       "    crl = \"crl.pem\";\n"
                                       "    tls = { ticket-key-file = \"tickets.key\"; };\n"
                                       "    certs = ( { cert = \"c3.pem\"; key = \"c3.key\"; },\n"
                                       "              { cert = \"c4.pem\"; key = \"c4.key\"; } );\n"
                                       "  }\n"
                                       ");\n";

static const char *const fixture_files[] = {
    "c0.pem", "c0.key", "c1.pem", "c1.key", "c2.pem",  "c2.key",      "c3.pem",
    "c3.key", "c4.pem", "c4.key", "ca.pem", "crl.pem", "tickets.key", "fuzz.conf",
};

static char folder[PATH_MAX];
static struct conf *conf;
static SSL_CTX *ctxs[NFRONTENDS];

/* Per input: what the client-hello callback and the checks need. */
struct session {
    unsigned flags;
    bool parked, answered;
    /* The client's ALPN list (wire format) when alpn_known: none offered, or well formed. */
    bool alpn_known;
    unsigned char alpn[512];
    size_t alpn_len;
};

/* ------------------------------------------------------------------ fixture */

static void fixture_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fixture_die(const char *fmt, ...)
{
    char reasons[512];
    va_list ap;

    fputs("fuzz_handshake: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (ERR_peek_error() != 0)
        fprintf(stderr, ": %s", log_ssl_reasons(reasons, sizeof(reasons)));
    fputc('\n', stderr);
    exit(1);
}

static const char *fixture_path(const char *name, const char *ext)
{
    static char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/%s%s", folder, name, ext);

    if (n < 0 || (size_t)n >= sizeof(path))
        fixture_die("%s/%s%s: path too long", folder, name, ext);
    return path;
}

static void fixture_add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;

    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL || !X509_add_ext(x, ext, -1))
        fixture_die("cannot add extension %s", value);
    X509_EXTENSION_free(ext);
}

/* A certificate for key, signed by issuer (itself when NULL), valid from yesterday for a year. */
static X509 *fixture_cert(EVP_PKEY *key, const char *cn, const char *san, long serial, X509 *issuer,
                          EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();

    if (x == NULL || !X509_set_version(x, 2) ||
        !ASN1_INTEGER_set(X509_get_serialNumber(x), serial) ||
        X509_gmtime_adj(X509_getm_notBefore(x), -86400) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 365L * 86400) == NULL || !X509_set_pubkey(x, key) ||
        !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                    (const unsigned char *)cn, -1, -1, 0) ||
        !X509_set_issuer_name(x, X509_get_subject_name(issuer != NULL ? issuer : x)))
        fixture_die("cannot make certificate %s", cn);
    if (san != NULL) {
        fixture_add_ext(x, issuer != NULL ? issuer : x, NID_subject_alt_name, san);
        fixture_add_ext(x, issuer != NULL ? issuer : x, NID_basic_constraints, "CA:FALSE");
    } else {
        fixture_add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
        fixture_add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    }
    if (!X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()))
        fixture_die("cannot sign certificate %s", cn);
    return x;
}

static void fixture_write_pem(const char *path, X509 *x, EVP_PKEY *key, X509_CRL *crl)
{
    BIO *bio = BIO_new_file(path, "w");

    if (bio == NULL || (x != NULL && !PEM_write_bio_X509(bio, x)) ||
        (key != NULL && !PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)) ||
        (crl != NULL && !PEM_write_bio_X509_CRL(bio, crl)) || BIO_free(bio) != 1)
        fixture_die("cannot write %s", path);
}

/* A CA for client certificates and its CRL (which revokes serial 99). */
static void fixture_client_ca(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (key == NULL)
        fixture_die("cannot make the CA key");
    X509 *ca = fixture_cert(key, "sluice fuzz client CA", NULL, 1, NULL, NULL);
    fixture_write_pem(fixture_path("ca", ".pem"), ca, NULL, NULL);

    X509_CRL *crl = X509_CRL_new();
    X509_REVOKED *revoked = X509_REVOKED_new();
    ASN1_INTEGER *serial = ASN1_INTEGER_new();
    ASN1_TIME *last = X509_gmtime_adj(NULL, -86400), *next = X509_gmtime_adj(NULL, 365L * 86400);
    if (crl == NULL || revoked == NULL || serial == NULL || last == NULL || next == NULL ||
        !ASN1_INTEGER_set(serial, 99) || !X509_REVOKED_set_serialNumber(revoked, serial) ||
        !X509_REVOKED_set_revocationDate(revoked, last) || !X509_CRL_set_version(crl, 1) ||
        !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) ||
        !X509_CRL_set1_lastUpdate(crl, last) || !X509_CRL_set1_nextUpdate(crl, next) ||
        !X509_CRL_add0_revoked(crl, revoked) || !X509_CRL_sort(crl) ||
        !X509_CRL_sign(crl, key, EVP_sha256()))
        fixture_die("cannot make the CRL");
    fixture_write_pem(fixture_path("crl", ".pem"), NULL, NULL, crl);
    ASN1_INTEGER_free(serial);
    ASN1_TIME_free(last);
    ASN1_TIME_free(next);
    X509_CRL_free(crl);
    X509_free(ca);
    EVP_PKEY_free(key);
}

static void fixture_server_certs(void)
{
    for (size_t i = 0; i < NCERTS; i++) {
        struct fixture_cert *c = &certs[i];
        char san[256];
        EVP_PKEY *key = c->rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
        if (key == NULL)
            fixture_die("cannot make the key of %s", c->file);
        snprintf(san, sizeof(san), "DNS:%s%s%s", c->names[0], c->names[1] ? ",DNS:" : "",
                 c->names[1] ? c->names[1] : "");
        c->leaf = fixture_cert(key, c->names[0], san, (long)i + 10, NULL, NULL);
        fixture_write_pem(fixture_path(c->file, ".pem"), c->leaf, NULL, NULL);
        fixture_write_pem(fixture_path(c->file, ".key"), NULL, key, NULL);
        EVP_PKEY_free(key);
    }
}

/* Two keys, one a line: the base64 of 80 random bytes (ticketkeys.c's format). */
static void fixture_ticket_keys(void)
{
    const char *path = fixture_path("tickets", ".key");
    FILE *f = fopen(path, "w");

    if (f == NULL)
        fixture_die("cannot create %s: %s", path, strerror(errno));
    for (int i = 0; i < 2; i++) {
        unsigned char key[80], text[4 * sizeof(key) / 3 + 4];
        if (RAND_bytes(key, sizeof(key)) != 1)
            fixture_die("no random bytes");
        EVP_EncodeBlock(text, key, sizeof(key));
        fprintf(f, "%s\n", (const char *)text);
    }
    if (fclose(f) != 0)
        fixture_die("cannot write %s: %s", path, strerror(errno));
}

static void fixture_cleanup(void)
{
    for (size_t i = 0; i < NFRONTENDS; i++)
        SSL_CTX_free(ctxs[i]); /* the default context frees the others of its frontend */
    conf_free(conf);
    ticketkeys_wipe();
    for (size_t i = 0; i < NCERTS; i++)
        X509_free(certs[i].leaf);
    for (size_t i = 0; i < sizeof(fixture_files) / sizeof(fixture_files[0]); i++)
        unlink(fixture_path(fixture_files[i], ""));
    rmdir(folder);
}

/* What the ClientHello offers for ALPN, when it is none or a list OpenSSL would take. */
static void note_client_alpn(SSL *ssl, struct session *s)
{
    const unsigned char *ext;
    size_t len;

    s->alpn_known = false;
    s->alpn_len = 0;
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
                                   &len)) {
        s->alpn_known = true;
        return;
    }
    if (len < 3 || ((size_t)ext[0] << 8 | ext[1]) != len - 2 || len - 2 > sizeof(s->alpn))
        return;
    for (size_t at = 2; at < len; at += 1 + (size_t)ext[at])
        if (ext[at] == 0 || at + 1 + ext[at] > len)
            return;
    memcpy(s->alpn, ext + 2, len - 2);
    s->alpn_len = len - 2;
    s->alpn_known = true;
}

/*
 * Parks every handshake once when asked, like a worker short of permits (handshake.c),
 * and notes the ALPN offer of each ClientHello (a second one follows a HelloRetryRequest).
 */
static int hello_cb(SSL *ssl, int *alert, void *arg)
{
    struct session *s = SSL_get_app_data(ssl);

    (void)alert;
    (void)arg;
    note_client_alpn(ssl, s);
    if ((s->flags & FLAG_PARK) && !s->parked) {
        s->parked = true;
        return SSL_CLIENT_HELLO_RETRY;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR");
    char err[1024];

    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_ERROR);
    snprintf(folder, sizeof(folder), "%s/sluice-fuzz-handshake-XXXXXX",
             tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
    if (mkdtemp(folder) == NULL)
        fixture_die("cannot make folder %s: %s", folder, strerror(errno));
    /*
     * OpenSSL's own atexit handler, registered when it starts, must run after ours (the
     * handlers run in reverse): once it has run, SSL_CTX_free leaks the ex_data.
     */
    if (!OPENSSL_init_ssl(0, NULL))
        fixture_die("cannot start OpenSSL");
    atexit(fixture_cleanup);
    fixture_server_certs();
    fixture_client_ca();
    fixture_ticket_keys();
    FILE *f = fopen(fixture_path("fuzz", ".conf"), "w");
    if (f == NULL || fputs(config_text, f) < 0 || fclose(f) != 0)
        fixture_die("cannot write %s/fuzz.conf", folder);
    if ((conf = conf_load(fixture_path("fuzz", ".conf"), err, sizeof(err))) == NULL ||
        ticketkeys_init(err, sizeof(err)) < 0)
        fixture_die("%s", err);
    for (size_t i = 0; i < NFRONTENDS; i++) {
        if ((ctxs[i] = tlsctx_build(&conf->frontends[i], err, sizeof(err))) == NULL)
            fixture_die("%s", err);
        SSL_CTX_set_client_hello_cb(ctxs[i], hello_cb, NULL);
    }
    return 0;
}

/* ------------------------------------------------------------------ checks */

static bool fixture_has_name(const struct fixture_cert *c, const char *name)
{
    for (size_t i = 0; i < 2; i++)
        if (c->names[i] != NULL && strcmp(c->names[i], name) == 0)
            return true;
    return false;
}

/*
 * The name a frontend's certificates serve for servername, as sluice.conf(5) has it:
 * lower case, one trailing dot dropped, an exact name, else "*" and the name after its
 * first label. False when none has it.
 */
static bool served_name(unsigned frontend, const char *servername, char *out, size_t outsize)
{
    size_t len = strlen(servername);

    if (len > 0 && servername[len - 1] == '.')
        len--;
    if (len == 0 || len > NAME_MAX_LEN || len + 2 > outsize)
        return false;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)servername[i]);
    out[len] = '\0';
    for (int wildcard = 0; wildcard < 2; wildcard++) {
        if (wildcard) {
            const char *dot = strchr(out, '.');
            if (dot == NULL || dot == out)
                return false;
            memmove(out + 1, dot, strlen(dot) + 1);
            out[0] = '*';
        }
        for (size_t c = 0; c < NCERTS; c++)
            if (certs[c].frontend == frontend && fixture_has_name(&certs[c], out))
                return true;
    }
    return false;
}

static const struct fixture_cert *served_cert(SSL *ssl)
{
    X509 *x = SSL_get_certificate(ssl);

    for (size_t c = 0; x != NULL && c < NCERTS; c++)
        if (X509_cmp(x, certs[c].leaf) == 0)
            return &certs[c];
    return NULL;
}

static bool alpn_offered(const struct session *s, const char *proto)
{
    size_t len = strlen(proto);

    for (size_t at = 0; at < s->alpn_len; at += 1 + (size_t)s->alpn[at])
        if (s->alpn[at] == len && memcmp(s->alpn + at + 1, proto, len) == 0)
            return true;
    return false;
}

/* The frontend's first protocol that the client offers, or none (sluice.conf(5): alpn). */
static void check_alpn(SSL *ssl, unsigned frontend, const struct session *s)
{
    const unsigned char *proto;
    const char *want = NULL;
    unsigned len;

    SSL_get0_alpn_selected(ssl, &proto, &len);
    for (size_t i = 0; i < 2 && want == NULL; i++)
        if (alpn[frontend][i] != NULL && alpn_offered(s, alpn[frontend][i]))
            want = alpn[frontend][i];
    if (s->alpn_known)
        FUZZ_CHECK(want != NULL ? strlen(want) == len && memcmp(want, proto, len) == 0 : len == 0,
                   "ALPN chose \"%.*s\", not \"%s\"", (int)len, len ? (const char *)proto : "",
                   want != NULL ? want : "(none)");
    for (size_t i = 0; len > 0 && i < 2; i++)
        if (alpn[frontend][i] != NULL && strlen(alpn[frontend][i]) == len &&
            memcmp(alpn[frontend][i], proto, len) == 0)
            return;
    FUZZ_CHECK(len == 0, "ALPN chose \"%.*s\", not the frontend's", (int)len, (const char *)proto);
}

/* The server has sent its ServerHello (not a HelloRetryRequest): what it chose must hold. */
static void check_answer(SSL *ssl, const struct session *s)
{
    unsigned frontend = s->flags & FLAG_STRICT ? 1 : 0;
    const char *servername = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char name[NAME_MAX_LEN + 2];
    bool known = servername != NULL && served_name(frontend, servername, name, sizeof(name));

    check_alpn(ssl, frontend, s);
    FUZZ_CHECK(known || frontend == 0, "sni-strict answered the name \"%s\"",
               servername != NULL ? servername : "(none)");
    if (SSL_session_reused(ssl))
        return; /* no certificate is sent */
    const struct fixture_cert *c = served_cert(ssl);
    FUZZ_CHECK(c != NULL && c->frontend == frontend, "served a certificate not of frontend %u",
               frontend);
    if (known)
        FUZZ_CHECK(fixture_has_name(c, name), "for \"%s\" served %s, which lacks %s", servername,
                   c->file, name);
    else
        FUZZ_CHECK(fixture_has_name(c, certs[0].names[0]), "for \"%s\" served %s, not a default",
                   servername != NULL ? servername : "(none)", c->file);
}

enum answer { ANSWER_NONE, ANSWER_SERVER_HELLO, ANSWER_HELLO_RETRY };

/* What a handshake record from the server starts with. */
static enum answer server_answer(const unsigned char *p, long len)
{
    static const unsigned char hrr_random[32] = {0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11,
                                                 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
                                                 0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e,
                                                 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c};

    /* record header (5), message type and length (4), legacy version (2), random (32) */
    if (len < 43 || p[0] != 0x16 || p[5] != 0x02)
        return ANSWER_NONE;
    return memcmp(p + 11, hrr_random, 32) == 0 ? ANSWER_HELLO_RETRY : ANSWER_SERVER_HELLO;
}

/* ------------------------------------------------------------------ the input */

/* Run the handshake on what has come: 0 when it wants more, -1 when it is over. */
static int drive(SSL *ssl, BIO *wbio, struct session *s)
{
    for (int round = 0; round < DRIVE_ROUNDS_MAX; round++) {
        unsigned char buf[4096];
        int rc, error;

        ERR_clear_error();
        if (SSL_is_init_finished(ssl))
            rc = SSL_read(ssl, buf, sizeof(buf));
        else
            rc = SSL_do_handshake(ssl);
        error = SSL_get_error(ssl, rc);
        char *out;
        long pending = BIO_get_mem_data(wbio, &out);
        enum answer answer = s->answered || pending <= 0
                                 ? ANSWER_NONE
                                 : server_answer((const unsigned char *)out, pending);
        if (answer == ANSWER_HELLO_RETRY) {
            /* The second ClientHello may meet a context SNI chose, without our callback. */
            s->alpn_known = false;
        } else if (answer == ANSWER_SERVER_HELLO) {
            s->answered = true;
            check_answer(ssl, s);
        }
        (void)BIO_reset(wbio);
        if (rc > 0 || error == SSL_ERROR_WANT_CLIENT_HELLO_CB)
            continue;
        return error == SSL_ERROR_WANT_READ ? 0 : -1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct session s = {0};
    const uint8_t *p = data + 1, *end = data + size;

    if (size == 0)
        return 0;
    s.flags = data[0];
    SSL *ssl = SSL_new(ctxs[s.flags & FLAG_STRICT ? 1 : 0]);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    if (ssl == NULL || rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        SSL_free(ssl);
        ERR_clear_error();
        return 0;
    }
    SSL_set_bio(ssl, rbio, wbio);
    SSL_set_app_data(ssl, &s);
    SSL_set_accept_state(ssl);
    while (p < end) {
        size_t len = (size_t)(end - p);
        if (len >= 2) {
            size_t want = (size_t)p[0] << 8 | p[1];
            p += 2;
            len = want < (size_t)(end - p) ? want : (size_t)(end - p);
        }
        if (len > 0 && BIO_write(rbio, p, (int)len) != (int)len)
            break;
        p += len;
        if (drive(ssl, wbio, &s) < 0)
            break;
    }
    SSL_free(ssl);
    ERR_clear_error();
    return 0;
}
