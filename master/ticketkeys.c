/*
 * RFC 5077 style tickets: a 16-byte key name, AES-256-CBC for the state and HMAC-SHA256
 * over it, through OpenSSL's EVP ticket callback. The keys are the master's own (random,
 * made once) or read from a ticket-key-file: one key a line, the base64 of 80 bytes
 * (name, HMAC key, AES key), blank lines and '#' comments ignored.
 */
#include "config.h"

#include "master/ticketkeys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/log.h"

#define TICKETKEYS_NAME_LEN 16
#define TICKETKEYS_HMAC_LEN 32
#define TICKETKEYS_AES_LEN 32
#define TICKETKEYS_KEY_LEN (TICKETKEYS_NAME_LEN + TICKETKEYS_HMAC_LEN + TICKETKEYS_AES_LEN)
/* The base64 of a key: 27 groups of 4 characters, the last one padded (108). */
#define TICKETKEYS_FILE_MAX (1024 * 1024)
#define TICKETKEYS_KEY_CHARS ((TICKETKEYS_KEY_LEN + 2) / 3 * 4)

struct ticket_key {
    unsigned char name[TICKETKEYS_NAME_LEN];
    unsigned char hmac_key[TICKETKEYS_HMAC_LEN];
    unsigned char aes_key[TICKETKEYS_AES_LEN];
};

struct ticketkeys {
    struct ticket_key *keys; /* keys[0] encrypts, all decrypt */
    size_t nkeys;
    bool from_file; /* belongs to its SSL_CTX: wiped and freed with it */
};

/*
 * File scope because OpenSSL's callback has no argument to carry them; written by the
 * master before any fork, read-only afterwards.
 */
static struct ticket_key master_key;
static struct ticketkeys master_keys = {&master_key, 1, false};
static bool master_key_ready;
/* The SSL_CTX ex_data slot that points to a context's keys; -1 until the first install. */
static int ticketkeys_index = -1;
/* Fetched once: OpenSSL 3.0 looks an algorithm up by name on every use otherwise. */
static EVP_CIPHER *ticket_cipher;

/* A ticket-key-file being read. */
struct keyfile {
    const struct conf_tls *tls;
    char *err;
    size_t errsize;
    struct ticketkeys *set;
    size_t cap;
    char text[TICKETKEYS_KEY_CHARS + 1]; /* the base64 of the key being read */
    size_t len;
    int first_line; /* where that key started */
};

static int ticketkeys_fetch_cipher(char *err, size_t errsize)
{
    if (ticket_cipher == NULL &&
        (ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL)) == NULL) {
        snprintf(err, errsize, "cannot make session-ticket keys: no AES-256-CBC");
        return -1;
    }
    return 0;
}

int ticketkeys_init(char *err, size_t errsize)
{
    if (RAND_bytes((unsigned char *)&master_key, sizeof(master_key)) != 1) {
        snprintf(err, errsize, "cannot make session-ticket keys: the random generator failed");
        return -1;
    }
    if (ticketkeys_fetch_cipher(err, errsize) < 0)
        return -1;
    master_key_ready = true;
    return 0;
}

static void ticketkeys_free_set(struct ticketkeys *set)
{
    if (set == NULL || !set->from_file)
        return;
    OPENSSL_clear_free(set->keys, set->nkeys * sizeof(*set->keys));
    free(set); /* NOLINT(clang-analyzer-unix.Malloc): master_keys is never from_file */
}

/* OpenSSL calls this from SSL_CTX_free. */
static void ticketkeys_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                               void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    ticketkeys_free_set(ptr);
}

static int ticketkeys_set_mac(EVP_MAC_CTX *hctx, const struct ticket_key *key)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)key->hmac_key,
                                          sizeof(key->hmac_key)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };

    return EVP_MAC_CTX_set_params(hctx, params);
}

/*
 * Returns 1 (ticket accepted), 2 (accepted, and send a new one), 0 (unknown key: full
 * handshake) or -1 (error). The keys hang on the context the connection was made with
 * (an SNI switch to another context must install the same keys there).
 */
static int ticketkeys_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int encrypt)
{
    const struct ticketkeys *set = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticketkeys_index);
    const struct ticket_key *key;
    size_t i = 0;

    if (set == NULL || set->nkeys == 0)
        return encrypt ? -1 : 0;
    if (encrypt) {
        key = &set->keys[0];
        if (RAND_bytes(iv, 16) != 1)
            return -1;
        memcpy(key_name, key->name, sizeof(key->name));
        if (!ticketkeys_set_mac(hctx, key) ||
            !EVP_EncryptInit_ex(cctx, ticket_cipher, NULL, key->aes_key, iv))
            return -1;
        return 1;
    }
    while (i < set->nkeys && CRYPTO_memcmp(key_name, set->keys[i].name, TICKETKEYS_NAME_LEN) != 0)
        i++;
    if (i == set->nkeys)
        return 0;
    key = &set->keys[i];
    if (!ticketkeys_set_mac(hctx, key) ||
        !EVP_DecryptInit_ex(cctx, ticket_cipher, NULL, key->aes_key, iv))
        return -1;
    /*
     * A ticket under an older key is renewed, so clients move to the first key before the
     * old one leaves the file. A TLS 1.3 client uses a ticket once (RFC 8446 C.4), and
     * OpenSSL sends none after a resumption unless asked: without a new one the client's
     * next connection is a full handshake. A TLS 1.2 ticket stays valid.
     */
    return i > 0 || SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
}

static int ticketkeys_file_fail(struct keyfile *kf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Something about the file as a whole: reported against the config line. */
static int ticketkeys_file_fail(struct keyfile *kf, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(kf->err, kf->errsize, "%s:%d: ticket-key-file %s: %s",
             kf->tls->ticket_key_file_origin.file, kf->tls->ticket_key_file_origin.line,
             kf->tls->ticket_key_file, msg);
    return -1;
}

static int ticketkeys_line_fail(struct keyfile *kf, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Something about one line: reported against the key file's line. */
static int ticketkeys_line_fail(struct keyfile *kf, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(kf->err, kf->errsize, "%s:%d: %s (ticket-key-file of %s:%d)", kf->tls->ticket_key_file,
             line, msg, kf->tls->ticket_key_file_origin.file, kf->tls->ticket_key_file_origin.line);
    return -1;
}

/* Opened without following a FIFO into a hang; a key file anyone may write is refused. */
static FILE *ticketkeys_open(struct keyfile *kf)
{
    const char *path = kf->tls->ticket_key_file;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

    if (fd < 0) {
        ticketkeys_file_fail(kf, "%s", strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0) {
        ticketkeys_file_fail(kf, "%s", strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        ticketkeys_file_fail(kf, "not a regular file");
        close(fd);
        return NULL;
    }
    /* Keys are 108 characters each: anything this big is the wrong file, not keys. */
    if (st.st_size > TICKETKEYS_FILE_MAX) {
        ticketkeys_file_fail(kf, "%lld bytes: more than a key file holds (%d at most)",
                             (long long)st.st_size, TICKETKEYS_FILE_MAX);
        close(fd);
        return NULL;
    }
    if (st.st_mode & S_IWOTH) {
        ticketkeys_file_fail(kf, "writable by anyone (mode %04o): chmod 600 it",
                             (unsigned)(st.st_mode & 07777));
        close(fd);
        return NULL;
    }
    if (st.st_mode & (S_IRGRP | S_IROTH))
        log_warning("%s:%d: ticket-key-file %s is readable by %s (mode %04o): whoever reads "
                    "it can decrypt every session; chmod 600 it",
                    kf->tls->ticket_key_file_origin.file, kf->tls->ticket_key_file_origin.line,
                    path, st.st_mode & S_IROTH ? "others" : "its group",
                    (unsigned)(st.st_mode & 07777));
    FILE *f = fdopen(fd, "r");
    if (f == NULL) {
        ticketkeys_file_fail(kf, "%s", strerror(errno));
        close(fd);
    }
    return f;
}

#define TICKETKEYS_BASE64 "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

/* Padded base64 (RFC 4648 §4), decoded by OpenSSL: the number of bytes, or -1. */
static long ticketkeys_b64_decode(const char *in, size_t len, unsigned char *out, size_t outsize)
{
    size_t pad = 0;

    if (len == 0 || len % 4 != 0 || len / 4 * 3 > outsize || len > INT_MAX)
        return -1;
    while (pad < 2 && in[len - 1 - pad] == '=')
        pad++;
    /* '=' anywhere but in the last two places is not padding. */
    if (memchr(in, '=', len - pad) != NULL)
        return -1;
    int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
    return n < 0 ? -1 : (long)n - (long)pad; /* OpenSSL counts the padding as bytes */
}

static int ticketkeys_add(struct keyfile *kf)
{
    unsigned char raw[TICKETKEYS_KEY_CHARS / 4 * 3];
    struct ticketkeys *set = kf->set;
    long n = ticketkeys_b64_decode(kf->text, kf->len, raw, sizeof(raw));
    int rc = 0;

    if (n != TICKETKEYS_KEY_LEN) {
        rc = n < 0 ? ticketkeys_line_fail(kf, kf->first_line, "a key is not base64")
                   : ticketkeys_line_fail(kf, kf->first_line,
                                          "a key is the base64 of %d bytes, this one has %ld",
                                          TICKETKEYS_KEY_LEN, n);
        goto out;
    }
    for (size_t i = 0; i < set->nkeys; i++)
        if (memcmp(set->keys[i].name, raw, TICKETKEYS_NAME_LEN) == 0) {
            rc = ticketkeys_line_fail(kf, kf->first_line,
                                      "this key has the name (first 16 bytes) of key %zu", i + 1);
            goto out;
        }
    if (set->nkeys == kf->cap) {
        /* Grown by hand: realloc would leave a copy of the keys behind, unwiped. */
        size_t cap = kf->cap == 0 ? 4 : kf->cap * 2;
        struct ticket_key *keys = OPENSSL_zalloc(cap * sizeof(*keys));
        if (keys == NULL) {
            rc = ticketkeys_file_fail(kf, "out of memory");
            goto out;
        }
        if (set->nkeys > 0)
            memcpy(keys, set->keys, set->nkeys * sizeof(*keys));
        OPENSSL_clear_free(set->keys, kf->cap * sizeof(*keys));
        set->keys = keys;
        kf->cap = cap;
    }
    struct ticket_key *key = &set->keys[set->nkeys++];
    memcpy(key->name, raw, sizeof(key->name));
    memcpy(key->hmac_key, raw + TICKETKEYS_NAME_LEN, sizeof(key->hmac_key));
    memcpy(key->aes_key, raw + TICKETKEYS_NAME_LEN + TICKETKEYS_HMAC_LEN, sizeof(key->aes_key));
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(kf->text, sizeof(kf->text));
    kf->len = 0;
    return rc;
}

/*
 * One line, without its end. A key's 108 characters may be wrapped over several lines,
 * as `openssl rand -base64 80` prints them (64 + 44).
 */
static int ticketkeys_line(struct keyfile *kf, int lineno, char *line)
{
    size_t len = strlen(line);

    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
        len--;
    while (len > 0 && (*line == ' ' || *line == '\t'))
        line++, len--;
    if (len == 0 || *line == '#') {
        if (kf->len > 0)
            return ticketkeys_line_fail(kf, kf->first_line,
                                        "a key is the base64 of %d bytes (%d characters), this "
                                        "one ends after %zu",
                                        TICKETKEYS_KEY_LEN, TICKETKEYS_KEY_CHARS, kf->len);
        return 0;
    }
    size_t valid = strspn(line, TICKETKEYS_BASE64);
    if (valid < len)
        return ticketkeys_line_fail(kf, lineno, "not base64 (column %zu)", valid + 1);
    if (kf->len == 0)
        kf->first_line = lineno;
    if (kf->len + len > TICKETKEYS_KEY_CHARS)
        return ticketkeys_line_fail(kf, kf->first_line,
                                    "a key is the base64 of %d bytes (%d characters), this one "
                                    "has more",
                                    TICKETKEYS_KEY_LEN, TICKETKEYS_KEY_CHARS);
    memcpy(kf->text + kf->len, line, len);
    kf->len += len;
    return kf->len == TICKETKEYS_KEY_CHARS ? ticketkeys_add(kf) : 0;
}

static int ticketkeys_read_lines(struct keyfile *kf, FILE *f)
{
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;

    errno = 0;
    while (rc == 0 && getline(&line, &cap, f) >= 0) {
        line[strcspn(line, "\n")] = '\0';
        rc = ticketkeys_line(kf, ++lineno, line);
    }
    if (rc == 0 && ferror(f))
        rc = ticketkeys_file_fail(kf, "%s", strerror(errno ? errno : EIO));
    if (rc == 0)
        rc = ticketkeys_line(kf, lineno + 1, (char[]){""}); /* a key cut short at the end */
    if (rc == 0 && kf->set->nkeys == 0)
        rc = ticketkeys_file_fail(kf, "no key in it (one a line, the base64 of %d bytes)",
                                  TICKETKEYS_KEY_LEN);
    if (line != NULL)
        OPENSSL_cleanse(line, cap);
    free(line);
    OPENSSL_cleanse(kf->text, sizeof(kf->text));
    return rc;
}

static struct ticketkeys *ticketkeys_read(const struct conf_tls *tls, char *err, size_t errsize)
{
    struct keyfile kf = {.tls = tls, .err = err, .errsize = errsize};

    kf.set = calloc(1, sizeof(*kf.set));
    if (kf.set == NULL) {
        ticketkeys_file_fail(&kf, "out of memory");
        return NULL;
    }
    kf.set->from_file = true;
    FILE *f = ticketkeys_open(&kf);
    int rc = f == NULL ? -1 : ticketkeys_read_lines(&kf, f);
    if (f != NULL)
        fclose(f);
    if (rc < 0) {
        OPENSSL_clear_free(kf.set->keys, kf.cap * sizeof(*kf.set->keys));
        free(kf.set);
        return NULL;
    }
    return kf.set;
}

int ticketkeys_install(SSL_CTX *ctx, const struct conf_tls *tls, char *err, size_t errsize)
{
    struct ticketkeys *set = &master_keys;

    if (!master_key_ready && ticketkeys_init(err, errsize) < 0)
        return -1;
    if (ticketkeys_index < 0 && (ticketkeys_index = SSL_CTX_get_ex_new_index(
                                     0, NULL, NULL, NULL, ticketkeys_ex_free)) < 0) {
        snprintf(err, errsize, "cannot install session-ticket keys: no ex_data index");
        return -1;
    }
    /* cppcheck-suppress redundantInitialization ; set is replaced only for a key file */
    if (tls->ticket_key_file[0] != '\0' && (set = ticketkeys_read(tls, err, errsize)) == NULL)
        return -1;
    ticketkeys_free_set(SSL_CTX_get_ex_data(ctx, ticketkeys_index));
    if (!SSL_CTX_set_ex_data(ctx, ticketkeys_index, set)) {
        ticketkeys_free_set(set);
        snprintf(err, errsize, "cannot install session-ticket keys");
        return -1;
    }
    if (!SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticketkeys_cb)) {
        snprintf(err, errsize, "cannot install the session-ticket key callback");
        return -1;
    }
    return 0;
}

void ticketkeys_wipe(void)
{
    OPENSSL_cleanse(&master_key, sizeof(master_key));
    master_key_ready = false;
    EVP_CIPHER_free(ticket_cipher);
    ticket_cipher = NULL;
}
