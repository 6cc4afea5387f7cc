/*
 * sluice-limits: the three per-core bounds that sluice's benchmark figures are read
 * against, measured in one process on one thread (pin it with taskset).
 *
 *   crypto  what a TLS 1.3 full handshake costs the server in cryptography alone: one
 *           CertificateVerify signature, one X25519 key share made and one derived, and
 *           the key schedule of RFC 8446 section 7.1 with its transcript hashes and
 *           Finished HMACs, every algorithm and key fetched once. No TLS stack can go
 *           below it.
 *   libssl  what OpenSSL's libssl costs the server per handshake with sluice's own
 *           SSL_CTX (built by master/tlsctx.c from the config given), talking to a client
 *           in the same thread through a BIO pair: no sockets, no event loop. What any
 *           OpenSSL-based proxy could at best reach.
 *   aead    AES-128-GCM sealing of 16 KB records: the bulk bound.
 *
 * Every figure is this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so other load on the
 * machine slows the run down but does not change the figures much.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "master/ticketkeys.h"
#include "master/tlsctx.h"

#define MAX_KEYS 8
#define SHA256_LEN 32
#define AEAD_RECORD 16384
#define AEAD_TAG 16
#define APP_RECORD 64
#define BIO_PAIR_SIZE 65536
#define HANDSHAKE_MAX_ROUNDS 16
#define WARMUP_HANDSHAKES 16

enum bound { BOUND_CRYPTO = 1, BOUND_LIBSSL = 2, BOUND_AEAD = 4 };

struct options {
    const char *config;
    double seconds;
    int tls_version;
    bool resume;
    unsigned bounds;
    unsigned frontend; /* index into conf->frontends */
};

/* ------------------------------------------------------------------ clocks, errors */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Fatal: the bounds are meaningless once any step fails. Appends OpenSSL's reasons. */
static void die(const char *fmt, ...)
{
    char reasons[512];
    va_list ap;

    fputs("sluice-limits: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (ERR_peek_error() != 0)
        fprintf(stderr, ": %s", log_ssl_reasons(reasons, sizeof(reasons)));
    fputc('\n', stderr);
    exit(1);
}

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;

    if (clock_gettime(clock, &ts) != 0)
        die("clock_gettime: %s", strerror(errno));
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void)
{
    return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

/*
 * What one pair of cpu_ns() calls adds to the interval it brackets (a system call: from
 * 0.2 to 2 us, depending on the machine): subtracted from the libssl figures, which
 * bracket each SSL call.
 */
static double cpu_clock_overhead_ns(void)
{
    enum { ROUNDS = 20000 };
    uint64_t sum = 0;

    for (int i = 0; i < ROUNDS; i++) {
        uint64_t t0 = cpu_ns();
        sum += cpu_ns() - t0;
    }
    return (double)sum / ROUNDS;
}

typedef int (*bench_op)(void *arg);

/*
 * Run op for about budget seconds of this thread's CPU, in batches that double until a
 * batch takes a millisecond (so the clock is read rarely); ns per op.
 */
static double measure(const char *what, bench_op op, void *arg, double budget)
{
    uint64_t limit = (uint64_t)(budget * 1e9), n = 0, batch = 1;

    for (int i = 0; i < 8; i++) /* warm caches and lazy initialisation */
        if (op(arg) < 0)
            die("%s failed", what);
    uint64_t start = cpu_ns(), spent = 0;
    while (spent < limit) {
        uint64_t before = spent;
        for (uint64_t i = 0; i < batch; i++)
            if (op(arg) < 0)
                die("%s failed", what);
        n += batch;
        spent = cpu_ns() - start;
        if (spent - before < 1000000 && batch < (1u << 20))
            batch *= 2;
    }
    return (double)spent / (double)n;
}

/* ------------------------------------------------------------------ crypto: signature */

struct signer {
    char name[32];
    EVP_PKEY *key;
    EVP_PKEY_CTX *ctx; /* sign_init'ed once: padding and digest set */
    const EVP_MD *md;
    EVP_MD_CTX *hash;
    size_t sig_max;
    unsigned char sig[1024];
    /* TLS 1.3 CertificateVerify input: 64 spaces, context string, 0, transcript hash */
    unsigned char content[64 + 34 + SHA256_LEN];
    long chain_der_bytes; /* the certificate chain's DER size, for the transcript */
};

static const char cv_context[] = "TLS 1.3, server CertificateVerify";

/* One CertificateVerify: hash the content, sign the hash. */
static int sign_op(void *arg)
{
    struct signer *s = arg;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned dlen;
    size_t siglen = s->sig_max;

    if (!EVP_DigestInit_ex2(s->hash, s->md, NULL) ||
        !EVP_DigestUpdate(s->hash, s->content, sizeof(s->content)) ||
        !EVP_DigestFinal_ex(s->hash, digest, &dlen))
        return -1;
    return EVP_PKEY_sign(s->ctx, s->sig, &siglen, digest, dlen) == 1 ? 0 : -1;
}

/* The signature scheme a TLS 1.3 server picks for this key; false if we do not model it. */
static bool signer_scheme(struct signer *s)
{
    int bits = EVP_PKEY_get_bits(s->key);

    if (EVP_PKEY_is_a(s->key, "EC")) {
        const char *md = bits <= 256 ? "SHA256" : bits <= 384 ? "SHA384" : "SHA512";
        snprintf(s->name, sizeof(s->name), "ecdsa-p%d", bits);
        s->md = EVP_MD_fetch(NULL, md, NULL);
        return s->md != NULL;
    }
    if (EVP_PKEY_is_a(s->key, "RSA")) {
        snprintf(s->name, sizeof(s->name), "rsa-%d-pss", bits); /* rsa_pss_rsae_sha256 */
        s->md = EVP_MD_fetch(NULL, "SHA256", NULL);
        return s->md != NULL;
    }
    return false;
}

static void signer_prepare(struct signer *s)
{
    s->ctx = EVP_PKEY_CTX_new_from_pkey(NULL, s->key, NULL);
    s->hash = EVP_MD_CTX_new();
    if (s->ctx == NULL || s->hash == NULL || EVP_PKEY_sign_init(s->ctx) != 1 ||
        EVP_PKEY_CTX_set_signature_md(s->ctx, s->md) != 1)
        die("%s: cannot set up signing", s->name);
    if (EVP_PKEY_is_a(s->key, "RSA") &&
        (EVP_PKEY_CTX_set_rsa_padding(s->ctx, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(s->ctx, RSA_PSS_SALTLEN_DIGEST) != 1))
        die("%s: cannot set RSA-PSS", s->name);
    memset(s->content, ' ', 64);
    memcpy(s->content + 64, cv_context, sizeof(cv_context)); /* with its 0 byte */
    if (RAND_bytes(s->content + 64 + sizeof(cv_context), SHA256_LEN) != 1)
        die("RAND_bytes");
    unsigned char digest[EVP_MAX_MD_SIZE];
    if (EVP_PKEY_sign(s->ctx, NULL, &s->sig_max, digest, (size_t)EVP_MD_get_size(s->md)) != 1 ||
        s->sig_max > sizeof(s->sig))
        die("%s: cannot size the signature", s->name);
}

static void signer_free(struct signer *s)
{
    EVP_PKEY_CTX_free(s->ctx);
    EVP_MD_CTX_free(s->hash);
    EVP_MD_free((EVP_MD *)s->md);
    EVP_PKEY_free(s->key);
}

/* DER bytes of every certificate in a PEM chain file (the server's Certificate message). */
static long chain_der_bytes(const char *path)
{
    BIO *in = BIO_new_file(path, "r");
    long total = 0;
    X509 *x;

    if (in == NULL)
        die("cert %s: cannot open", path);
    while ((x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
        total += i2d_X509(x, NULL);
        X509_free(x);
    }
    ERR_clear_error(); /* the read that ended the loop */
    BIO_free(in);
    if (total == 0)
        die("cert %s: no certificate", path);
    return total;
}

static EVP_PKEY *load_private_key(const char *path)
{
    BIO *in = BIO_new_file(path, "r");
    EVP_PKEY *key;

    if (in == NULL)
        die("key %s: cannot open", path);
    key = PEM_read_bio_PrivateKey(in, NULL, NULL, NULL);
    BIO_free(in);
    if (key == NULL)
        die("key %s: cannot read a private key", path);
    return key;
}

/* One signer per distinct key type among the certificates of every frontend. */
static size_t signers_from_conf(const struct conf *conf, struct signer *signers)
{
    size_t n = 0;

    for (size_t f = 0; f < conf->nfrontends; f++) {
        for (size_t c = 0; c < conf->frontends[f].ncerts; c++) {
            const struct conf_cert *cert = &conf->frontends[f].certs[c];
            struct signer *s = &signers[n];
            bool seen = false;

            memset(s, 0, sizeof(*s));
            s->key = load_private_key(cert->key);
            if (!signer_scheme(s)) {
                fprintf(stderr, "sluice-limits: key %s: only EC and RSA keys are measured\n",
                        cert->key);
                signer_free(s);
                continue;
            }
            for (size_t i = 0; i < n; i++)
                seen = seen || strcmp(signers[i].name, s->name) == 0;
            if (seen || n == MAX_KEYS) {
                signer_free(s);
                continue;
            }
            s->chain_der_bytes = chain_der_bytes(cert->cert);
            signer_prepare(s);
            n++;
        }
    }
    return n;
}

/* ------------------------------------------------------------------ crypto: X25519 */

struct keyshare {
    EVP_PKEY_CTX *keygen;     /* keygen_init'ed once */
    EVP_PKEY *own;            /* a server share, for the derivations */
    unsigned char peer[32];   /* a client share as it arrives on the wire */
    unsigned char secret[32]; /* the ECDHE shared secret */
};

/* The server's share: a fresh key pair and its public half for the ServerHello. */
static int keygen_op(void *arg)
{
    struct keyshare *k = arg;
    EVP_PKEY *key = NULL;
    unsigned char pub[32];
    size_t len = sizeof(pub);
    int ok =
        EVP_PKEY_keygen(k->keygen, &key) == 1 && EVP_PKEY_get_raw_public_key(key, pub, &len) == 1;

    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

/* The shared secret: the client's share parsed, then X25519 with the server's key. */
static int derive_op(void *arg)
{
    struct keyshare *k = arg;
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key_ex(NULL, "X25519", NULL, k->peer, 32);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->own, NULL);
    size_t len = sizeof(k->secret);
    int ok = peer != NULL && ctx != NULL && EVP_PKEY_derive_init(ctx) == 1 &&
             EVP_PKEY_derive_set_peer(ctx, peer) == 1 && EVP_PKEY_derive(ctx, k->secret, &len) == 1;

    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(peer);
    return ok ? 0 : -1;
}

static void keyshare_prepare(struct keyshare *k)
{
    EVP_PKEY *client = NULL;
    size_t len = sizeof(k->peer);

    k->keygen = EVP_PKEY_CTX_new_from_name(NULL, "X25519", NULL);
    if (k->keygen == NULL || EVP_PKEY_keygen_init(k->keygen) != 1 ||
        EVP_PKEY_keygen(k->keygen, &k->own) != 1 || EVP_PKEY_keygen(k->keygen, &client) != 1 ||
        EVP_PKEY_get_raw_public_key(client, k->peer, &len) != 1)
        die("cannot set up X25519");
    EVP_PKEY_free(client);
}

static void keyshare_free(struct keyshare *k)
{
    EVP_PKEY_CTX_free(k->keygen);
    EVP_PKEY_free(k->own);
}

/* ------------------------------------------------------------------ crypto: key schedule */

/*
 * Approximate sizes of the handshake messages other than Certificate and
 * CertificateVerify (taken from the chain and the signature): an OpenSSL ClientHello
 * with one X25519 share, a ServerHello with its share, EncryptedExtensions, and the two
 * Finished messages (4-byte header + 32).
 */
#define MSG_CLIENT_HELLO 300
#define MSG_SERVER_HELLO 128
#define MSG_ENCRYPTED_EXTENSIONS 10
#define MSG_FINISHED (4 + SHA256_LEN)

struct schedule {
    EVP_MAC_CTX *hmac; /* HMAC-SHA256, digest set once, re-keyed per use */
    const EVP_MD *sha256;
    EVP_MD_CTX *transcript, *snapshot;
    const unsigned char *ecdhe;
    /*
     * Without a PSK the Early Secret and Derive-Secret(Early Secret, "derived", "") are
     * constants, and so is Hash(""): computed once, as an ideal server would.
     */
    unsigned char derived_early[SHA256_LEN], empty_hash[SHA256_LEN];
    size_t cert_msg, cv_msg;                      /* Certificate and CertificateVerify sizes */
    unsigned char filler[4096];                   /* stands in for handshake message bytes */
    unsigned extracts, expands, hmacs, snapshots; /* per op, for the output line */
};

static int hmac2(struct schedule *s, const unsigned char *key, size_t keylen,
                 const unsigned char *a, size_t alen, const unsigned char *b, size_t blen,
                 unsigned char out[SHA256_LEN])
{
    size_t outlen;

    s->hmacs++;
    return EVP_MAC_init(s->hmac, key, keylen, NULL) && EVP_MAC_update(s->hmac, a, alen) &&
                   (blen == 0 || EVP_MAC_update(s->hmac, b, blen)) &&
                   EVP_MAC_final(s->hmac, out, &outlen, SHA256_LEN)
               ? 0
               : -1;
}

/* HKDF-Extract(salt, IKM) = HMAC(salt, IKM). */
static int hkdf_extract(struct schedule *s, const unsigned char *salt, const unsigned char *ikm,
                        unsigned char out[SHA256_LEN])
{
    s->extracts++;
    s->hmacs--; /* counted as an extract, not as a Finished HMAC */
    return hmac2(s, salt, SHA256_LEN, ikm, SHA256_LEN, NULL, 0, out);
}

/*
 * HKDF-Expand-Label(Secret, Label, Context, Length) for Length <= 32: one HMAC over the
 * HkdfLabel structure and the counter byte 1.
 */
static int hkdf_expand_label(struct schedule *s, const unsigned char *secret, const char *label,
                             const unsigned char *context, size_t context_len, size_t length,
                             unsigned char *out)
{
    unsigned char info[2 + 1 + 6 + 32 + 1 + SHA256_LEN + 1], t1[SHA256_LEN];
    size_t label_len = strlen(label), n = 0;

    if (label_len > 32 || context_len > SHA256_LEN || length > SHA256_LEN)
        return -1;
    info[n++] = 0;
    info[n++] = (unsigned char)length;
    info[n++] = (unsigned char)(6 + label_len);
    memcpy(info + n, "tls13 ", 6);
    memcpy(info + n + 6, label, label_len);
    n += 6 + label_len;
    info[n++] = (unsigned char)context_len;
    if (context_len > 0) /* memcpy from NULL is undefined even for 0 bytes */
        memcpy(info + n, context, context_len);
    n += context_len;
    info[n++] = 1;
    s->expands++;
    s->hmacs--;
    if (hmac2(s, secret, SHA256_LEN, info, n, NULL, 0, t1) < 0)
        return -1;
    memcpy(out, t1, length);
    return 0;
}

/* Derive-Secret(Secret, Label, Messages), with Messages already hashed. */
static int derive_secret(struct schedule *s, const unsigned char *secret, const char *label,
                         const unsigned char hash[SHA256_LEN], unsigned char out[SHA256_LEN])
{
    return hkdf_expand_label(s, secret, label, hash, SHA256_LEN, SHA256_LEN, out);
}

/* The write key and IV of one traffic secret (AES-128-GCM: 16 and 12 bytes). */
static int traffic_keys(struct schedule *s, const unsigned char secret[SHA256_LEN])
{
    unsigned char key[16], iv[12];

    return hkdf_expand_label(s, secret, "key", NULL, 0, sizeof(key), key) < 0 ||
                   hkdf_expand_label(s, secret, "iv", NULL, 0, sizeof(iv), iv) < 0
               ? -1
               : 0;
}

/* Feed len bytes of handshake messages into the transcript. */
static int transcript_add(struct schedule *s, size_t len)
{
    while (len > 0) {
        size_t n = len < sizeof(s->filler) ? len : sizeof(s->filler);
        if (!EVP_DigestUpdate(s->transcript, s->filler, n))
            return -1;
        len -= n;
    }
    return 0;
}

/* Transcript-Hash of the messages so far, the running hash left going on. */
static int transcript_hash(struct schedule *s, unsigned char out[SHA256_LEN])
{
    s->snapshots++;
    return EVP_MD_CTX_copy_ex(s->snapshot, s->transcript) &&
                   EVP_DigestFinal_ex(s->snapshot, out, NULL)
               ? 0
               : -1;
}

/* The handshake part: ClientHello..ServerHello, handshake secrets and keys. */
static int schedule_handshake(struct schedule *s, unsigned char hs[SHA256_LEN],
                              unsigned char c_hs[SHA256_LEN], unsigned char s_hs[SHA256_LEN])
{
    unsigned char h[SHA256_LEN];

    if (!EVP_DigestInit_ex2(s->transcript, s->sha256, NULL) ||
        transcript_add(s, MSG_CLIENT_HELLO + MSG_SERVER_HELLO) < 0 || transcript_hash(s, h) < 0)
        return -1;
    return hkdf_extract(s, s->derived_early, s->ecdhe, hs) < 0 ||
                   derive_secret(s, hs, "c hs traffic", h, c_hs) < 0 ||
                   derive_secret(s, hs, "s hs traffic", h, s_hs) < 0 || traffic_keys(s, s_hs) < 0 ||
                   traffic_keys(s, c_hs) < 0
               ? -1
               : 0;
}

/* EncryptedExtensions..server Finished: the CertificateVerify hash and our Finished. */
static int schedule_server_flight(struct schedule *s, const unsigned char s_hs[SHA256_LEN])
{
    unsigned char h[SHA256_LEN], finished_key[SHA256_LEN], verify[SHA256_LEN];

    return transcript_add(s, MSG_ENCRYPTED_EXTENSIONS + s->cert_msg) < 0 ||
                   transcript_hash(s, h) < 0 || /* what CertificateVerify signs */
                   transcript_add(s, s->cv_msg) < 0 || transcript_hash(s, h) < 0 ||
                   hkdf_expand_label(s, s_hs, "finished", NULL, 0, SHA256_LEN, finished_key) < 0 ||
                   hmac2(s, finished_key, SHA256_LEN, h, SHA256_LEN, NULL, 0, verify) < 0 ||
                   transcript_add(s, MSG_FINISHED) < 0
               ? -1
               : 0;
}

/* Master secret, application secrets and keys, the client's Finished, resumption. */
static int schedule_application(struct schedule *s, const unsigned char hs[SHA256_LEN],
                                const unsigned char c_hs[SHA256_LEN])
{
    static const unsigned char zeros[SHA256_LEN];
    unsigned char h[SHA256_LEN], derived[SHA256_LEN], ms[SHA256_LEN], c_ap[SHA256_LEN],
        s_ap[SHA256_LEN], exporter[SHA256_LEN], finished_key[SHA256_LEN], verify[SHA256_LEN],
        resumption[SHA256_LEN];

    return transcript_hash(s, h) < 0 || derive_secret(s, hs, "derived", s->empty_hash, derived) ||
                   hkdf_extract(s, derived, zeros, ms) < 0 ||
                   derive_secret(s, ms, "c ap traffic", h, c_ap) < 0 ||
                   derive_secret(s, ms, "s ap traffic", h, s_ap) < 0 ||
                   derive_secret(s, ms, "exp master", h, exporter) < 0 ||
                   traffic_keys(s, s_ap) < 0 || traffic_keys(s, c_ap) < 0 ||
                   hkdf_expand_label(s, c_hs, "finished", NULL, 0, SHA256_LEN, finished_key) < 0 ||
                   hmac2(s, finished_key, SHA256_LEN, h, SHA256_LEN, NULL, 0, verify) < 0 ||
                   transcript_add(s, MSG_FINISHED) < 0 || transcript_hash(s, h) < 0 ||
                   derive_secret(s, ms, "res master", h, resumption) < 0
               ? -1
               : 0;
}

/* The whole TLS 1.3 key schedule of one full handshake, server side, without PSK. */
static int schedule_op(void *arg)
{
    struct schedule *s = arg;
    unsigned char hs[SHA256_LEN], c_hs[SHA256_LEN], s_hs[SHA256_LEN];

    return schedule_handshake(s, hs, c_hs, s_hs) < 0 || schedule_server_flight(s, s_hs) < 0 ||
                   schedule_application(s, hs, c_hs) < 0
               ? -1
               : 0;
}

static void schedule_prepare(struct schedule *s, const struct keyshare *k)
{
    static const unsigned char zeros[SHA256_LEN];
    unsigned char early[SHA256_LEN];
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };

    s->hmac = mac == NULL ? NULL : EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac); /* the context holds its own reference */
    s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    s->transcript = EVP_MD_CTX_new();
    s->snapshot = EVP_MD_CTX_new();
    s->ecdhe = k->secret;
    if (s->hmac == NULL || !EVP_MAC_CTX_set_params(s->hmac, params) || s->sha256 == NULL ||
        s->transcript == NULL || s->snapshot == NULL ||
        !EVP_Digest("", 0, s->empty_hash, NULL, s->sha256, NULL) ||
        hkdf_extract(s, zeros, zeros, early) < 0 ||
        derive_secret(s, early, "derived", s->empty_hash, s->derived_early) < 0)
        die("cannot set up the key schedule");
    memset(s->filler, 0x16, sizeof(s->filler));
}

/* Sizes of Certificate (one entry per certificate, no extensions) and CertificateVerify. */
static void schedule_set_signer(struct schedule *s, const struct signer *sig)
{
    s->cert_msg = 4 + 1 + 3 + (size_t)sig->chain_der_bytes + 5 * 4; /* <= 4 certificates */
    s->cv_msg = 4 + 2 + 2 + sig->sig_max;
}

/* Counts and transcript length of one schedule_op, for the output line. */
static void schedule_count(struct schedule *s, size_t *transcript_bytes)
{
    s->extracts = s->expands = s->hmacs = s->snapshots = 0;
    if (schedule_op(s) < 0)
        die("the key schedule failed");
    *transcript_bytes = MSG_CLIENT_HELLO + MSG_SERVER_HELLO + MSG_ENCRYPTED_EXTENSIONS +
                        s->cert_msg + s->cv_msg + 2 * MSG_FINISHED;
}

static void schedule_free(struct schedule *s)
{
    EVP_MAC_CTX_free(s->hmac);
    EVP_MD_free((EVP_MD *)s->sha256);
    EVP_MD_CTX_free(s->transcript);
    EVP_MD_CTX_free(s->snapshot);
}

static void run_crypto(const struct conf *conf, double seconds)
{
    struct signer signers[MAX_KEYS];
    struct keyshare k = {0};
    struct schedule s = {0};
    size_t nsigners = signers_from_conf(conf, signers);

    if (nsigners == 0)
        die("%s: no EC or RSA key to measure", conf->path);
    keyshare_prepare(&k);
    schedule_prepare(&s, &k);
    /* Key shares do not depend on the certificate: measured once, for every line. */
    double keygen = measure("X25519 keygen", keygen_op, &k, seconds / 4);
    double derive = measure("X25519 derive", derive_op, &k, seconds / 4);
    for (size_t i = 0; i < nsigners; i++) {
        size_t transcript_bytes;

        schedule_set_signer(&s, &signers[i]);
        double sign = measure("sign", sign_op, &signers[i], seconds / 4);
        double schedule = measure("key schedule", schedule_op, &s, seconds / 4);
        schedule_count(&s, &transcript_bytes);
        double total = sign + keygen + derive + schedule;
        printf("bound=crypto key=%s sign_us=%.1f keygen_us=%.1f derive_us=%.1f "
               "schedule_us=%.1f total_us=%.1f handshakes_per_s=%.0f extracts=%u expands=%u "
               "hmacs=%u transcript_hashes=%u transcript_bytes=%zu\n",
               signers[i].name, sign / 1e3, keygen / 1e3, derive / 1e3, schedule / 1e3, total / 1e3,
               1e9 / total, s.extracts, s.expands, s.hmacs, s.snapshots, transcript_bytes);
        fflush(stdout);
    }
    for (size_t i = 0; i < nsigners; i++)
        signer_free(&signers[i]);
    schedule_free(&s);
    keyshare_free(&k);
}

/* ------------------------------------------------------------------ libssl */

/* CPU time spent inside one side's SSL calls, and how many calls (for the clock cost). */
struct meter {
    uint64_t ns;
    uint64_t calls;
};

struct tls_bench {
    SSL_CTX *server_ctx, *client_ctx;
    bool resume;
    int version;
    SSL_SESSION *session; /* the newest session the client got; offered with --resume */
    unsigned long tickets;
    const char *key; /* "ec" or "rsa": the server certificate's key */
    struct meter server, client;
};

static void meter_add(struct meter *m, uint64_t start)
{
    m->ns += cpu_ns() - start;
    m->calls++;
}

/* The client keeps only its newest session, as sluice-load's resume mode does. */
static int client_new_session(SSL *ssl, SSL_SESSION *session)
{
    struct tls_bench *b = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));

    if (SSL_SESSION_has_ticket(session))
        b->tickets++;
    SSL_SESSION_free(b->session);
    b->session = session;
    return 1; /* the session is ours now */
}

static SSL_CTX *client_ctx_new(struct tls_bench *b)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, b->version) ||
        !SSL_CTX_set_max_proto_version(ctx, b->version))
        die("cannot make the client's SSL_CTX");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* Like sluice-load's full mode: without --resume, no TLS 1.2 ticket is even asked for. */
    if (!b->resume)
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, client_new_session);
    SSL_CTX_set_app_data(ctx, b);
    return ctx;
}

/* One SSL_do_handshake call; true once this side has finished. */
static bool handshake_step(SSL *ssl, struct meter *m, const char *side)
{
    ERR_clear_error();
    uint64_t start = cpu_ns();
    int rc = SSL_do_handshake(ssl);
    meter_add(m, start);
    if (rc == 1)
        return true;
    int error = SSL_get_error(ssl, rc);
    if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE)
        die("the %s's handshake failed (SSL_get_error %d)", side, error);
    return false;
}

/* Both sides take turns, each consuming what the other wrote into the BIO pair. */
static void handshake(struct tls_bench *b, SSL *server, SSL *client)
{
    bool server_done = false, client_done = false;

    for (int round = 0; round < HANDSHAKE_MAX_ROUNDS; round++) {
        if (!client_done)
            client_done = handshake_step(client, &b->client, "client");
        if (!server_done)
            server_done = handshake_step(server, &b->server, "server");
        if (client_done && server_done)
            return;
    }
    die("the handshake did not finish in %d rounds", HANDSHAKE_MAX_ROUNDS);
}

/* The server's NewSessionTickets (TLS 1.3), taken in by one client read with no data. */
static void client_read_tickets(struct tls_bench *b, SSL *client)
{
    unsigned char buf[APP_RECORD];

    ERR_clear_error();
    uint64_t start = cpu_ns();
    int rc = SSL_read(client, buf, sizeof(buf));
    meter_add(&b->client, start);
    if (rc > 0 || SSL_get_error(client, rc) != SSL_ERROR_WANT_READ)
        die("the client's read after the handshake got more than tickets");
}

/* One small application record from writer to reader. */
static void transfer(SSL *writer, struct meter *wm, SSL *reader, struct meter *rm)
{
    unsigned char out[APP_RECORD], in[APP_RECORD];

    memset(out, 'x', sizeof(out));
    ERR_clear_error();
    uint64_t start = cpu_ns();
    int rc = SSL_write(writer, out, sizeof(out));
    meter_add(wm, start);
    if (rc != (int)sizeof(out))
        die("SSL_write: %d", rc);
    start = cpu_ns();
    rc = SSL_read(reader, in, sizeof(in));
    meter_add(rm, start);
    if (rc != (int)sizeof(in) || memcmp(in, out, sizeof(in)) != 0)
        die("SSL_read: %d", rc);
}

static SSL *client_new(struct tls_bench *b, BIO *bio)
{
    SSL *client = SSL_new(b->client_ctx);

    if (client == NULL)
        die("cannot make the client's SSL");
    SSL_set_bio(client, bio, bio);
    SSL_set_connect_state(client);
    if (b->resume && b->session != NULL) {
        /*
         * OpenSSL's client uses a TLS 1.3 ticket once (the session it resumed becomes not
         * resumable), and sluice's ticket callback sends no new ticket on a resumed
         * handshake: offer a copy, so that every measured handshake resumes. sluice's
         * tickets are stateless, so the server does the same work for a copy.
         */
        SSL_SESSION *copy = SSL_SESSION_dup(b->session);
        int ok = copy != NULL && SSL_set_session(client, copy);
        SSL_SESSION_free(copy);
        if (!ok)
            die("the client cannot offer its session");
    }
    return client;
}

/* The server's SSL made and set up as sluice's worker does it (handshake_start). */
static SSL *server_new(struct tls_bench *b, BIO *bio)
{
    uint64_t start = cpu_ns();
    SSL *server = SSL_new(b->server_ctx);
    if (server != NULL) {
        SSL_set_bio(server, bio, bio);
        SSL_set_accept_state(server);
    }
    meter_add(&b->server, start);
    if (server == NULL)
        die("cannot make the server's SSL");
    return server;
}

static void server_shutdown(struct tls_bench *b, SSL *server)
{
    ERR_clear_error();
    uint64_t start = cpu_ns();
    int rc = SSL_shutdown(server); /* sends close_notify, as sluice does at the end */
    meter_add(&b->server, start);
    if (rc < 0)
        die("SSL_shutdown: %d", rc);
}

static void server_free(struct tls_bench *b, SSL *server)
{
    uint64_t start = cpu_ns();
    SSL_free(server);
    meter_add(&b->server, start);
}

/*
 * The client reads the server's close_notify and answers it. Freed without that, OpenSSL
 * would mark its session as not resumable (ssl_clear_bad_session). Before the server's
 * SSL_free: that frees the BIO pair's buffers.
 */
static void client_close(struct tls_bench *b, SSL *client)
{
    unsigned char buf[APP_RECORD];

    ERR_clear_error();
    uint64_t start = cpu_ns();
    int rc = SSL_read(client, buf, sizeof(buf));
    int error = SSL_get_error(client, rc);
    int closed = SSL_shutdown(client);
    meter_add(&b->client, start);
    if (rc != 0 || error != SSL_ERROR_ZERO_RETURN || closed != 1)
        die("the client did not see the server's close_notify");
}

static void note_key(struct tls_bench *b, SSL *client)
{
    X509 *peer = SSL_get0_peer_certificate(client);
    int type = peer == NULL ? 0 : EVP_PKEY_get_base_id(X509_get0_pubkey(peer));

    if (b->key == NULL)
        b->key = type == EVP_PKEY_EC ? "ec" : type == EVP_PKEY_RSA ? "rsa" : "other";
}

/* One connection's whole life on the server: 1 if the handshake resumed. */
static int connection(struct tls_bench *b)
{
    BIO *server_bio, *client_bio;

    if (!BIO_new_bio_pair(&server_bio, BIO_PAIR_SIZE, &client_bio, BIO_PAIR_SIZE))
        die("BIO_new_bio_pair");
    SSL *client = client_new(b, client_bio);
    SSL *server = server_new(b, server_bio);
    handshake(b, server, client);
    if (SSL_version(server) != b->version)
        die("negotiated %s", SSL_get_version(server));
    int resumed = SSL_session_reused(server);
    note_key(b, client);
    client_read_tickets(b, client);
    transfer(client, &b->client, server, &b->server);
    transfer(server, &b->server, client, &b->client);
    server_shutdown(b, server);
    client_close(b, client);
    server_free(b, server);
    SSL_free(client);
    return resumed;
}

static void libssl_report(const struct tls_bench *b, const struct conf_frontend *fe,
                          unsigned long n, unsigned long resumed, double clock_cost)
{
    double server = ((double)b->server.ns - clock_cost * (double)b->server.calls) / (double)n;
    double client = ((double)b->client.ns - clock_cost * (double)b->client.calls) / (double)n;

    if (resumed != (b->resume ? n : 0))
        fprintf(stderr, "sluice-limits: %lu of %lu handshakes resumed, expected %s\n", resumed, n,
                b->resume ? "all" : "none");
    printf("bound=libssl tls=%s resume=%s key=%s server_us=%.1f handshakes_per_s=%.0f "
           "resumed=%lu handshakes=%lu tickets_per_handshake=%.2f client_us=%.1f "
           "frontend=%s\n",
           b->version == TLS1_3_VERSION ? "1.3" : "1.2", b->resume ? "yes" : "no", b->key,
           server / 1e3, 1e9 / server, resumed, n, (double)b->tickets / (double)n, client / 1e3,
           fe->listen_text);
    fflush(stdout);
}

static void run_libssl(const struct conf *conf, const struct options *o)
{
    const struct conf_frontend *fe = &conf->frontends[o->frontend];
    struct tls_bench b = {.resume = o->resume, .version = o->tls_version};
    char err[2048];
    unsigned long n = 0, resumed = 0;

    /* As the master does: keys made once (master_prepare), then the frontend's context. */
    if (ticketkeys_init(err, sizeof(err)) < 0 ||
        (b.server_ctx = tlsctx_build(fe, err, sizeof(err))) == NULL)
        die("%s", err);
    b.client_ctx = client_ctx_new(&b);
    for (int i = 0; i < WARMUP_HANDSHAKES; i++) /* also gives --resume its first session */
        connection(&b);
    memset(&b.server, 0, sizeof(b.server));
    memset(&b.client, 0, sizeof(b.client));
    b.tickets = 0;
    uint64_t end = clock_ns(CLOCK_MONOTONIC) + (uint64_t)(o->seconds * 1e9);
    do {
        resumed += (unsigned long)connection(&b);
        n++;
    } while (clock_ns(CLOCK_MONOTONIC) < end);
    libssl_report(&b, fe, n, resumed, cpu_clock_overhead_ns());
    SSL_SESSION_free(b.session);
    SSL_CTX_free(b.client_ctx);
    SSL_CTX_free(b.server_ctx);
    ticketkeys_wipe();
}

/* ------------------------------------------------------------------ aead */

struct aead {
    EVP_CIPHER_CTX *ctx; /* cipher and key set once */
    unsigned char iv[12];
    uint64_t seq;
    unsigned char header[5]; /* the record header, TLS 1.3's additional data */
    unsigned char *in, *out;
    unsigned char tag[AEAD_TAG];
};

/* Seal one record as TLS 1.3 does: nonce = IV xor sequence number, header as AAD. */
static int seal_op(void *arg)
{
    struct aead *a = arg;
    unsigned char nonce[sizeof(a->iv)];
    int n, last;

    memcpy(nonce, a->iv, sizeof(nonce));
    for (int i = 0; i < 8; i++)
        nonce[sizeof(nonce) - 1 - i] ^= (unsigned char)(a->seq >> (8 * i));
    a->seq++;
    return EVP_EncryptInit_ex2(a->ctx, NULL, NULL, nonce, NULL) &&
                   EVP_EncryptUpdate(a->ctx, NULL, &n, a->header, sizeof(a->header)) &&
                   EVP_EncryptUpdate(a->ctx, a->out, &n, a->in, AEAD_RECORD) &&
                   EVP_EncryptFinal_ex(a->ctx, a->out + n, &last) &&
                   EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_GET_TAG, AEAD_TAG, a->tag)
               ? 0
               : -1;
}

static void run_aead(double seconds)
{
    struct aead a = {.header = {0x17, 0x03, 0x03, (AEAD_RECORD + AEAD_TAG) >> 8,
                                (AEAD_RECORD + AEAD_TAG) & 0xff}};
    EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    unsigned char key[16];

    a.ctx = EVP_CIPHER_CTX_new();
    a.in = calloc(1, AEAD_RECORD);
    a.out = calloc(1, AEAD_RECORD + AEAD_TAG);
    if (cipher == NULL || a.ctx == NULL || a.in == NULL || a.out == NULL ||
        RAND_bytes(key, sizeof(key)) != 1 || RAND_bytes(a.iv, sizeof(a.iv)) != 1 ||
        !EVP_EncryptInit_ex2(a.ctx, cipher, key, a.iv, NULL))
        die("cannot set up AES-128-GCM");
    double ns = measure("AES-128-GCM", seal_op, &a, seconds);
    double bytes_per_s = AEAD_RECORD * 1e9 / ns;
    printf("bound=aead cipher=AES-128-GCM record=%d mbps=%.0f s_per_gb=%.3f record_us=%.2f\n",
           AEAD_RECORD, bytes_per_s / 1e6, 1e9 / bytes_per_s, ns / 1e3);
    fflush(stdout);
    OPENSSL_cleanse(key, sizeof(key));
    EVP_CIPHER_CTX_free(a.ctx);
    EVP_CIPHER_free(cipher);
    free(a.in);
    free(a.out);
}

/* ------------------------------------------------------------------ command line */

static void usage(FILE *out)
{
    fputs("usage: sluice-limits -f SLUICE_CONF [-d SECONDS] [--tls 1.2|1.3] [--resume]\n"
          "                     [--frontend N] [--only crypto|libssl|aead]\n"
          "\n"
          "Measures, on this thread's CPU time, the per-core bounds that sluice's benchmark\n"
          "figures are read against, and prints one logfmt line per bound on stdout. Pin it\n"
          "to one CPU with taskset for stable figures.\n"
          "\n"
          "  bound=crypto   a TLS 1.3 full handshake's cryptography, server side: the\n"
          "                 CertificateVerify signature (ECDSA with SHA-256 for P-256,\n"
          "                 RSA-PSS with SHA-256 for RSA) with the private key of each\n"
          "                 certificate in the config (one line per key type), one X25519\n"
          "                 share made (keygen_us) and one derived from a client's share\n"
          "                 (derive_us), and the RFC 8446 7.1 key schedule without PSK\n"
          "                 (schedule_us: HKDF-SHA256 extracts and expands, the traffic\n"
          "                 keys, the Finished HMACs and the transcript hashes; the counts\n"
          "                 and the transcript size are printed). total_us is the sum,\n"
          "                 handshakes_per_s = 1e6 / total_us.\n"
          "  bound=libssl   OpenSSL's whole server side of a connection with sluice's own\n"
          "                 SSL_CTX (master/tlsctx.c, the frontend's settings from the\n"
          "                 config): SSL_new, the handshake with a client in this process\n"
          "                 through a BIO pair (no sockets), the session tickets, one 64-byte\n"
          "                 record each way, close_notify and SSL_free. server_us is the\n"
          "                 server's CPU per connection (each server call timed, the clock's\n"
          "                 own cost taken off); client_us the client's, for comparison.\n"
          "  bound=aead     AES-128-GCM sealing of 16384-byte records (nonce, 5-byte AAD,\n"
          "                 tag): mbps (MB = 1e6 bytes) and s_per_gb (GB = 1e9 bytes).\n"
          "\n"
          "  -f FILE            the sluice config (needed for crypto and libssl)\n"
          "  -d SECONDS         CPU seconds per bound (default 3; crypto splits it between\n"
          "                     its four parts, libssl runs this long by the wall clock)\n"
          "  --tls 1.2|1.3      the libssl handshakes' version (default 1.3)\n"
          "  --resume           libssl: the client offers its newest session; every\n"
          "                     measured handshake must resume (resumed=handshakes)\n"
          "  --frontend N       libssl: the config's Nth frontend (default 1, the first)\n"
          "  --only BOUND       crypto, libssl or aead; default: all three\n"
          "  -h, --help         this text\n",
          out);
}

static int parse_positive(const char *text, double max, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(text, &end);
    return errno == 0 && end != text && *end == '\0' && *out > 0 && *out <= max ? 0 : -1;
}

static unsigned parse_bound(const char *text)
{
    if (strcmp(text, "crypto") == 0)
        return BOUND_CRYPTO;
    if (strcmp(text, "libssl") == 0)
        return BOUND_LIBSSL;
    if (strcmp(text, "aead") == 0)
        return BOUND_AEAD;
    return 0;
}

static int parse_option(int opt, const char *arg, struct options *o)
{
    double value;

    switch (opt) {
    case 'f':
        o->config = arg;
        return 0;
    case 'd':
        return parse_positive(arg, 3600, &o->seconds);
    case 'T':
        o->tls_version = strcmp(arg, "1.3") == 0   ? TLS1_3_VERSION
                         : strcmp(arg, "1.2") == 0 ? TLS1_2_VERSION
                                                   : 0;
        return o->tls_version == 0 ? -1 : 0;
    case 'R':
        o->resume = true;
        return 0;
    case 'F':
        if (parse_positive(arg, 100000, &value) < 0 || value != (unsigned)value)
            return -1;
        o->frontend = (unsigned)value - 1;
        return 0;
    case 'O':
        o->bounds = parse_bound(arg);
        return o->bounds == 0 ? -1 : 0;
    default:
        return -1;
    }
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"tls", required_argument, NULL, 'T'},      {"resume", no_argument, NULL, 'R'},
        {"frontend", required_argument, NULL, 'F'}, {"only", required_argument, NULL, 'O'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    int opt;

    *o = (struct options){.seconds = 3,
                          .tls_version = TLS1_3_VERSION,
                          .bounds = BOUND_CRYPTO | BOUND_LIBSSL | BOUND_AEAD};
    while ((opt = getopt_long(argc, argv, "f:d:h", longopts, NULL)) != -1) {
        if (opt == 'h') {
            usage(stdout);
            exit(0);
        }
        if (parse_option(opt, optarg, o) < 0) {
            if (optarg != NULL && opt != '?')
                fprintf(stderr, "sluice-limits: bad value \"%s\"\n", optarg);
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc || (o->config == NULL && (o->bounds & ~BOUND_AEAD))) {
        if (optind == argc)
            fputs("sluice-limits: -f SLUICE_CONF is needed for crypto and libssl\n", stderr);
        usage(stderr);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    struct options o;
    struct conf *conf = NULL;
    char err[2048];

    parse_options(argc, argv, &o);
    log_set_level(LOG_LEVEL_WARNING);
    if (o.bounds & (BOUND_CRYPTO | BOUND_LIBSSL)) {
        conf = conf_load(o.config, err, sizeof(err));
        if (conf == NULL)
            die("%s", err);
        if (o.frontend >= conf->nfrontends)
            die("%s has %zu frontends", o.config, conf->nfrontends);
    }
    if (o.bounds & BOUND_CRYPTO)
        run_crypto(conf, o.seconds);
    if (o.bounds & BOUND_LIBSSL)
        run_libssl(conf, &o);
    if (o.bounds & BOUND_AEAD)
        run_aead(o.seconds);
    conf_free(conf);
    if (fflush(stdout) != 0 || ferror(stdout))
        die("stdout: %s", strerror(errno));
    return 0;
}
