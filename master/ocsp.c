/*
 * OCSP stapling from a file: the operator (or a cron job) fetches a DER response with
 * `openssl ocsp ... -respout FILE`, and the master reads and checks it whenever it builds
 * the TLS contexts (start-up and SIGHUP). A good response hangs on its leaf certificate
 * (X509 ex_data), so that the status callback, which runs in the workers during the
 * handshake once OpenSSL has chosen among a frontend's certificates, finds the one for the
 * certificate being sent.
 */
#include "config.h"

#include "master/ocsp.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"

/* A response is a few KB; anything near this is not one (and must not eat memory). */
#define OCSP_FILE_MAX (1024 * 1024)
/* How far the responder's clock may run ahead of ours (thisUpdate in the future). */
#define OCSP_CLOCK_SKEW 300
#define OCSP_WHERE_MAX 1024

/* A checked response, owned by its leaf certificate's ex_data. */
struct ocsp_staple {
    unsigned char *der;
    size_t len;
    time_t next_update; /* 0: the response gives none, it never goes stale */
    /* Written only in a worker (its own copy of the page): "expired" is logged once there. */
    bool expiry_logged;
    char where[OCSP_WHERE_MAX]; /* "CONFIG:LINE: ocsp FILE", for the workers' log line */
};

/* The certificate a response must be about, and what came with it in its file. */
struct ocsp_subject {
    const struct conf_cert *cert;
    X509 *leaf;
    /* The certificates after the leaf in the cert file (clang-format reads a product). */
    /* clang-format off */
    STACK_OF(X509) *chain;
    /* clang-format on */
    X509 *issuer; /* the leaf's issuer among them, NULL if absent */
};

/* The X509 ex_data slot for a leaf's staple; -1 until the first attach (in the master). */
static int ocsp_index = -1;

/* OpenSSL calls this from X509_free, when the context holding the leaf is freed. */
static void ocsp_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    struct ocsp_staple *staple = ptr;

    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (staple != NULL)
        OPENSSL_free(staple->der);
    free(staple);
}

static void ocsp_format_time(time_t when, char *buf, size_t size)
{
    struct tm tm;

    if (gmtime_r(&when, &tm) == NULL || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, size, "%lld", (long long)when);
}

/*
 * Runs in a worker for a client that asked for the status (status_request), after the
 * certificate was chosen: SSL_get_certificate is the leaf about to be sent.
 */
static int ocsp_status_cb(SSL *ssl, void *arg)
{
    X509 *leaf = SSL_get_certificate(ssl);
    struct ocsp_staple *staple = leaf != NULL ? X509_get_ex_data(leaf, ocsp_index) : NULL;
    unsigned char *copy;

    (void)arg;
    if (staple == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    if (staple->next_update != 0 && time(NULL) >= staple->next_update) {
        /* Clients reject a stale response: send none, and say so once, not per handshake. */
        if (!staple->expiry_logged) {
            char when[64];
            ocsp_format_time(staple->next_update, when, sizeof(when));
            log_warning("%s: the response expired at %s (nextUpdate); no longer stapled, "
                        "fetch a new one and reload",
                        staple->where, when);
            staple->expiry_logged = true;
        }
        return SSL_TLSEXT_ERR_NOACK;
    }
    /* OpenSSL frees what it is given, with the SSL: hand it a copy. */
    copy = OPENSSL_memdup(staple->der, staple->len);
    if (copy == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    if (!SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)staple->len)) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

static int ocsp_read_fd(int fd, const char *path, unsigned char **out, size_t *outlen, char *why,
                        size_t whysize)
{
    struct stat st;
    unsigned char *buf;
    size_t len = 0;

    if (fstat(fd, &st) < 0) {
        snprintf(why, whysize, "cannot stat %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, whysize, "%s is not a regular file", path);
        return -1;
    }
    if (st.st_size == 0 || st.st_size > OCSP_FILE_MAX) {
        snprintf(why, whysize, "%s holds %lld bytes, not a response (1 to %d)", path,
                 (long long)st.st_size, OCSP_FILE_MAX);
        return -1;
    }
    buf = OPENSSL_malloc((size_t)st.st_size);
    if (buf == NULL) {
        snprintf(why, whysize, "out of memory");
        return -1;
    }
    /* Up to the size seen by fstat: a file growing while we read is cut there. */
    while (len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(why, whysize, "cannot read %s: %s", path,
                     n < 0 ? strerror(errno) : "it shrank while being read");
            OPENSSL_free(buf);
            return -1;
        }
        len += (size_t)n;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

/* The whole file, at most OCSP_FILE_MAX bytes, with OPENSSL_malloc. */
static int ocsp_read_file(const char *path, unsigned char **out, size_t *outlen, char *why,
                          size_t whysize)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    int rc;

    if (fd < 0) {
        snprintf(why, whysize, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    rc = ocsp_read_fd(fd, path, out, outlen, why, whysize);
    if (close(fd) < 0 && rc == 0)
        log_errno(LOG_LEVEL_WARNING, "close %s", path);
    return rc;
}

/* The leaf's issuer among the certificates that came with it in the cert file. */
static X509 *ocsp_find_issuer(const struct ocsp_subject *subject)
{
    for (int i = 0; i < sk_X509_num(subject->chain); i++) {
        X509 *candidate = sk_X509_value(subject->chain, i);
        if (X509_check_issued(candidate, subject->leaf) == X509_V_OK)
            return candidate;
    }
    return NULL;
}

/*
 * The single response about leaf. Each one names its own hash algorithm for the
 * certificate id (SHA-1 usually, SHA-256 from some responders): compute ours with it.
 */
static OCSP_SINGLERESP *ocsp_find_single(OCSP_BASICRESP *basic, const struct ocsp_subject *subject)
{
    for (int i = 0; i < OCSP_resp_count(basic); i++) {
        OCSP_SINGLERESP *single = OCSP_resp_get0(basic, i);
        /* OCSP_id_get0_info only reads the id, but its prototype is not const. */
        OCSP_CERTID *theirs = (OCSP_CERTID *)OCSP_SINGLERESP_get0_id(single);
        ASN1_OBJECT *md_oid = NULL;
        const EVP_MD *md;
        OCSP_CERTID *ours;
        bool same;

        if (theirs == NULL || !OCSP_id_get0_info(NULL, &md_oid, NULL, NULL, theirs) ||
            (md = EVP_get_digestbyobj(md_oid)) == NULL)
            continue;
        ours = OCSP_cert_to_id(md, subject->leaf, subject->issuer);
        same = ours != NULL && OCSP_id_cmp(ours, theirs) == 0;
        OCSP_CERTID_free(ours);
        if (same)
            return single;
    }
    return NULL;
}

/*
 * Signed by the issuer itself, or by a responder the issuer certified for OCSP signing.
 * The issuer is the only trust anchor (a partial chain), so nothing above it matters.
 */
static int ocsp_verify_signature(OCSP_BASICRESP *basic, const struct ocsp_subject *subject,
                                 char *why, size_t whysize)
{
    X509_STORE *store = X509_STORE_new();
    char reasons[512];
    int ok;

    ERR_clear_error();
    ok = store != NULL && X509_STORE_add_cert(store, subject->issuer) &&
         X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN) &&
         OCSP_basic_verify(basic, subject->chain, store, 0) > 0;
    X509_STORE_free(store);
    if (!ok) {
        snprintf(why, whysize, "the signature does not check out against the issuer: %s",
                 log_ssl_reasons(reasons, sizeof(reasons)));
        return -1;
    }
    return 0;
}

static void ocsp_asn1_time_text(const ASN1_GENERALIZEDTIME *t, char *buf, size_t size)
{
    BIO *mem = BIO_new(BIO_s_mem());
    int n = 0;

    if (mem != NULL && ASN1_TIME_print(mem, t) > 0)
        n = BIO_read(mem, buf, (int)size - 1);
    buf[n > 0 ? n : 0] = '\0';
    BIO_free(mem);
    if (n <= 0)
        snprintf(buf, size, "?");
}

/*
 * Current: thisUpdate not after now (give or take the responder's clock), nextUpdate
 * still ahead (clients refuse a stale one). Sets *next_update (0 when there is none).
 */
static int ocsp_check_times(ASN1_GENERALIZEDTIME *this_update, ASN1_GENERALIZEDTIME *next_update,
                            time_t *next, char *why, size_t whysize)
{
    char text[64];
    int days, secs;

    *next = 0;
    if (next_update != NULL) {
        if (!ASN1_TIME_diff(&days, &secs, NULL, next_update)) {
            snprintf(why, whysize, "its nextUpdate is not a valid time");
            return -1;
        }
        if (days < 0 || secs < 0 || (days == 0 && secs == 0)) {
            ocsp_asn1_time_text(next_update, text, sizeof(text));
            snprintf(why, whysize, "it expired on %s (nextUpdate)", text);
            return -1;
        }
        *next = time(NULL) + (time_t)days * 86400 + secs;
    }
    ERR_clear_error();
    if (OCSP_check_validity(this_update, next_update, OCSP_CLOCK_SKEW, -1))
        return 0;
    if (ERR_GET_REASON(ERR_peek_last_error()) == OCSP_R_STATUS_NOT_YET_VALID) {
        ocsp_asn1_time_text(this_update, text, sizeof(text));
        snprintf(why, whysize, "it is not valid yet (thisUpdate %s)", text);
        ERR_clear_error();
    } else {
        snprintf(why, whysize, "its times do not check out: %s",
                 log_ssl_reasons(text, sizeof(text)));
    }
    return -1;
}

/* The certificate status. Revoked is stapled (see the man page), unknown is not. */
static int ocsp_check_status(OCSP_SINGLERESP *single, const struct conf_cert *cert, char *why,
                             size_t whysize)
{
    ASN1_GENERALIZEDTIME *revoked_at = NULL;
    int reason = -1;
    int status = OCSP_single_get0_status(single, &reason, &revoked_at, NULL, NULL);
    char text[64];

    if (status == V_OCSP_CERTSTATUS_GOOD)
        return 0;
    if (status == V_OCSP_CERTSTATUS_REVOKED) {
        ocsp_asn1_time_text(revoked_at, text, sizeof(text));
        log_warning("%s:%d: ocsp %s: certificate %s was REVOKED on %s (%s); stapling the "
                    "response, so clients learn it: replace the certificate",
                    cert->ocsp_origin.file, cert->ocsp_origin.line, cert->ocsp, cert->cert, text,
                    reason >= 0 ? OCSP_crl_reason_str(reason) : "no reason given");
        return 0;
    }
    snprintf(why, whysize, "the certificate status is %s", OCSP_cert_status_str(status));
    return -1;
}

/* The basic response: about leaf, signed for its issuer, current, and not "unknown". */
static int ocsp_check_basic(OCSP_BASICRESP *basic, const struct ocsp_subject *subject, time_t *next,
                            char *why, size_t whysize)
{
    ASN1_GENERALIZEDTIME *this_update = NULL, *next_update = NULL;
    OCSP_SINGLERESP *single = ocsp_find_single(basic, subject);
    const struct conf_cert *cert = subject->cert;

    if (single == NULL) {
        snprintf(why, whysize, "the response is for another certificate, not %s", cert->cert);
        return -1;
    }
    if (ocsp_verify_signature(basic, subject, why, whysize) < 0)
        return -1;
    if (OCSP_single_get0_status(single, NULL, NULL, &this_update, &next_update) < 0 ||
        this_update == NULL) {
        snprintf(why, whysize, "the response has no status for %s", cert->cert);
        return -1;
    }
    if (ocsp_check_times(this_update, next_update, next, why, whysize) < 0)
        return -1;
    return ocsp_check_status(single, cert, why, whysize);
}

/* Everything a response must be to be stapled for leaf, as it comes from the file. */
static int ocsp_check(OCSP_RESPONSE *resp, struct ocsp_subject *subject, time_t *next, char *why,
                      size_t whysize)
{
    int status = OCSP_response_status(resp);
    OCSP_BASICRESP *basic;
    int rc;

    if (status != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        snprintf(why, whysize, "the responder answered %s, not successful",
                 OCSP_response_status_str(status));
        return -1;
    }
    subject->issuer = ocsp_find_issuer(subject);
    if (subject->issuer == NULL) {
        snprintf(why, whysize,
                 "the issuer of %s is not in that file (put the intermediate "
                 "certificate after it)",
                 subject->cert->cert);
        return -1;
    }
    basic = OCSP_response_get1_basic(resp);
    if (basic == NULL) {
        snprintf(why, whysize, "not a basic OCSP response");
        return -1;
    }
    rc = ocsp_check_basic(basic, subject, next, why, whysize);
    OCSP_BASICRESP_free(basic);
    return rc;
}

static struct ocsp_staple *ocsp_load(SSL_CTX *ctx, X509 *leaf, const struct conf_cert *cert,
                                     char *why, size_t whysize)
{
    struct ocsp_subject subject = {cert, leaf, NULL, NULL};
    struct ocsp_staple *staple = calloc(1, sizeof(*staple));
    const unsigned char *p;
    OCSP_RESPONSE *resp;
    time_t next = 0;
    int rc;

    if (staple == NULL) {
        snprintf(why, whysize, "out of memory");
        return NULL;
    }
    if (ocsp_read_file(cert->ocsp, &staple->der, &staple->len, why, whysize) < 0) {
        free(staple);
        return NULL;
    }
    p = staple->der;
    resp = d2i_OCSP_RESPONSE(NULL, &p, (long)staple->len);
    if (resp == NULL || p != staple->der + staple->len) {
        snprintf(why, whysize, "not a DER OCSP response");
        rc = -1;
    } else {
        /* The chain of ctx's current certificate: leaf, selected just before. */
        if (!SSL_CTX_get0_chain_certs(ctx, &subject.chain))
            subject.chain = NULL;
        rc = ocsp_check(resp, &subject, &next, why, whysize);
    }
    OCSP_RESPONSE_free(resp);
    ERR_clear_error();
    if (rc < 0) {
        ocsp_ex_free(NULL, staple, NULL, 0, 0, NULL);
        return NULL;
    }
    staple->next_update = next;
    snprintf(staple->where, sizeof(staple->where), "%s:%d: ocsp %s", cert->ocsp_origin.file,
             cert->ocsp_origin.line, cert->ocsp);
    return staple;
}

static int ocsp_index_init(void)
{
    if (ocsp_index < 0)
        ocsp_index = X509_get_ex_new_index(0, NULL, NULL, NULL, ocsp_ex_free);
    return ocsp_index;
}

void ocsp_attach(SSL_CTX *ctx, X509 *leaf, const struct conf_cert *cert)
{
    struct ocsp_staple *staple;
    char why[1024], when[64];

    if (cert->ocsp == NULL || cert->ocsp[0] == '\0')
        return;
    if (ocsp_index_init() < 0) {
        log_ssl(LOG_LEVEL_WARNING, "%s:%d: ocsp %s: not stapled: no room for it",
                cert->ocsp_origin.file, cert->ocsp_origin.line, cert->ocsp);
        return;
    }
    /* Installed whatever the file holds: a certificate without a response gets NOACK. */
    SSL_CTX_set_tlsext_status_cb(ctx, ocsp_status_cb);
    /* The same X509 attached again (another context) replaces its response. */
    ocsp_ex_free(NULL, X509_get_ex_data(leaf, ocsp_index), NULL, 0, 0, NULL);
    X509_set_ex_data(leaf, ocsp_index, NULL);
    if (!SSL_CTX_select_current_cert(ctx, leaf)) {
        log_warning("%s:%d: ocsp %s: not stapled: certificate %s is not loaded",
                    cert->ocsp_origin.file, cert->ocsp_origin.line, cert->ocsp, cert->cert);
        return;
    }
    staple = ocsp_load(ctx, leaf, cert, why, sizeof(why));
    if (staple == NULL) {
        log_warning("%s:%d: ocsp %s: not stapled: %s", cert->ocsp_origin.file,
                    cert->ocsp_origin.line, cert->ocsp, why);
        return;
    }
    if (!X509_set_ex_data(leaf, ocsp_index, staple)) {
        log_ssl(LOG_LEVEL_WARNING, "%s: not stapled: cannot attach it to %s", staple->where,
                cert->cert);
        ocsp_ex_free(NULL, staple, NULL, 0, 0, NULL);
        return;
    }
    if (staple->next_update != 0)
        ocsp_format_time(staple->next_update, when, sizeof(when));
    log_info("%s: stapling it for %s, valid until %s", staple->where, cert->cert,
             staple->next_update != 0 ? when : "further notice (no nextUpdate)");
}
