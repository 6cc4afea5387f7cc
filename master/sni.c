/*
 * Certificates chosen by the client's SNI. The plan is made in the master, before any
 * fork; the choosing runs in the workers, in OpenSSL's servername callback, where a
 * switch of SSL_CTX still changes the certificate the server presents.
 */
#include "config.h"

#include "master/sni.h"

#include <ctype.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNI_NAME_MAX 253 /* a DNS name in text form, without the trailing dot */

/* A name a certificate serves, with the set that serves it once planned. */
struct sni_name {
    char *name; /* lowercase; "*.example.com" for a wildcard */
    size_t cert;
    size_t set;
};

struct sni_map {
    struct sni_name *names; /* sorted by name, one entry per name once planned */
    size_t nnames, cap;
    struct sni_set *sets;
    size_t nsets;
    size_t default_set;
    bool strict;
    SSL_CTX **ctxs; /* one per set, once installed */
};

static int sni_ex_index = -1;

/* Whether text is a host name or a leading-label wildcard we can match. */
static bool sni_name_usable(const char *text, size_t len)
{
    if (len == 0 || len > SNI_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        bool wildcard = ch == '*' && i == 0 && len > 2 && text[1] == '.';
        if (!wildcard && !isalnum(ch) && ch != '-' && ch != '.' && ch != '_')
            return false;
    }
    return true;
}

static int sni_add_name(struct sni_map *map, const char *text, size_t len, size_t cert)
{
    if (!sni_name_usable(text, len))
        return 0; /* an IP address, an odd pattern: no client can ask for it by SNI */
    if (map->nnames == map->cap) {
        size_t cap = map->cap ? map->cap * 2 : 16;
        struct sni_name *names = realloc(map->names, cap * sizeof(*names));
        if (names == NULL)
            return -1;
        map->names = names;
        map->cap = cap;
    }
    char *name = malloc(len + 1);
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < len; i++)
        name[i] = (char)tolower((unsigned char)text[i]);
    name[len] = '\0';
    map->names[map->nnames++] = (struct sni_name){.name = name, .cert = cert};
    return 0;
}

/* The DNS names of the subjectAltName; the last CN only when there is none. */
static int sni_add_cert_names(struct sni_map *map, X509 *leaf, size_t cert)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    bool any_dns = false;
    int rc = 0;

    for (int i = 0; rc == 0 && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_DNS)
            continue;
        any_dns = true;
        rc = sni_add_name(map, (const char *)ASN1_STRING_get0_data(gn->d.dNSName),
                          (size_t)ASN1_STRING_length(gn->d.dNSName), cert);
    }
    GENERAL_NAMES_free(sans);
    if (rc < 0 || any_dns)
        return rc;
    const X509_NAME *subject = X509_get_subject_name(leaf);
    int last = -1;
    for (int i; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, last)) >= 0;)
        last = i;
    if (last < 0)
        return 0;
    unsigned char *cn = NULL;
    int len =
        ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, last)));
    if (len > 0 && memchr(cn, '\0', (size_t)len) == NULL)
        rc = sni_add_name(map, (const char *)cn, (size_t)len, cert);
    OPENSSL_free(cn);
    return rc;
}

static int sni_name_cmp(const void *a, const void *b)
{
    const struct sni_name *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : (x->cert > y->cert) - (x->cert < y->cert);
}

static int cert_key_type(const struct sni_cert *cert)
{
    return EVP_PKEY_get_base_id(X509_get0_pubkey(cert->leaf));
}

static const char *key_type_name(int type)
{
    switch (type) {
    case EVP_PKEY_EC:
        return "ECDSA";
    case EVP_PKEY_RSA:
        return "RSA";
    default:
        return OBJ_nid2sn(type);
    }
}

/* Add cert to set unless the set already has a certificate of its key type. */
static void sni_set_offer(struct sni_set *set, const struct sni_cert *certs, size_t cert)
{
    for (size_t i = 0; i < set->ncerts; i++)
        if (cert_key_type(&certs[set->certs[i]]) == cert_key_type(&certs[cert]))
            return;
    if (set->ncerts < SNI_MAX_KEY_TYPES)
        set->certs[set->ncerts++] = cert;
}

static bool sni_set_equal(const struct sni_set *a, const struct sni_set *b)
{
    return a->ncerts == b->ncerts &&
           memcmp(a->certs, b->certs, a->ncerts * sizeof(a->certs[0])) == 0;
}

static size_t sni_find_or_add_set(struct sni_map *map, const struct sni_set *set)
{
    for (size_t i = 0; i < map->nsets; i++)
        if (sni_set_equal(&map->sets[i], set))
            return i;
    map->sets[map->nsets] = *set;
    return map->nsets++;
}

/*
 * Collapse the sorted (name, cert) pairs to one entry per name, each with its set. The
 * pairs of a name come in certificate order, so the first certificate of a key type wins.
 */
static void sni_plan_sets(struct sni_map *map, const struct sni_cert *certs)
{
    size_t out = 0;

    for (size_t i = 0; i < map->nnames;) {
        struct sni_set set = {.ncerts = 0};
        size_t j = i;
        for (; j < map->nnames && strcmp(map->names[j].name, map->names[i].name) == 0; j++)
            sni_set_offer(&set, certs, map->names[j].cert);
        struct sni_name keep = map->names[i];
        for (size_t k = i + 1; k < j; k++)
            free(map->names[k].name);
        keep.set = sni_find_or_add_set(map, &set);
        map->names[out++] = keep;
        i = j;
    }
    map->nnames = out;
}

static const struct sni_name *sni_find(const struct sni_map *map, const char *name)
{
    const struct sni_name key = {.name = (char *)name};
    size_t lo = 0, hi = map->nnames;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key.name, map->names[mid].name);
        if (c == 0)
            return &map->names[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* The set serving the first certificate's first name, or the first certificate alone. */
static size_t sni_plan_default(struct sni_map *map, const char *first_name)
{
    const struct sni_name *found = first_name != NULL ? sni_find(map, first_name) : NULL;
    struct sni_set alone = {.certs = {0}, .ncerts = 1};

    return found != NULL ? found->set : sni_find_or_add_set(map, &alone);
}

static bool sni_cert_served(const struct sni_map *map, size_t cert)
{
    for (size_t s = 0; s < map->nsets; s++)
        for (size_t i = 0; i < map->sets[s].ncerts; i++)
            if (map->sets[s].certs[i] == cert)
                return true;
    return false;
}

static int sni_check_served(const struct sni_map *map, const struct sni_cert *certs, size_t ncerts,
                            char *err, size_t errsize)
{
    for (size_t i = 0; i < ncerts; i++) {
        if (sni_cert_served(map, i))
            continue;
        snprintf(err, errsize,
                 "%s:%d: cert %s is never served: it has no name an earlier certificate of "
                 "its key type (%s) does not already serve",
                 certs[i].conf->origin.file, certs[i].conf->origin.line, certs[i].conf->cert,
                 key_type_name(cert_key_type(&certs[i])));
        return -1;
    }
    return 0;
}

struct sni_map *sni_map_plan(const struct sni_cert *certs, size_t ncerts, bool strict, char *err,
                             size_t errsize)
{
    struct sni_map *map = calloc(1, sizeof(*map));
    char *first_name = NULL;

    /* Each name adds at most one set, and the default one more. */
    if (map == NULL)
        goto oom;
    map->strict = strict;
    for (size_t i = 0; i < ncerts; i++) {
        if (sni_add_cert_names(map, certs[i].leaf, i) < 0)
            goto oom;
        if (i == 0 && map->nnames > 0 && (first_name = strdup(map->names[0].name)) == NULL)
            goto oom;
    }
    map->sets = calloc(map->nnames + 1, sizeof(*map->sets));
    if (map->sets == NULL)
        goto oom;
    if (map->nnames > 0) /* names is NULL then, and qsort's base must not be */
        qsort(map->names, map->nnames, sizeof(*map->names), sni_name_cmp);
    sni_plan_sets(map, certs);
    map->default_set = sni_plan_default(map, first_name);
    free(first_name);
    if (sni_check_served(map, certs, ncerts, err, errsize) < 0) {
        sni_map_free(map);
        return NULL;
    }
    return map;
oom:
    free(first_name);
    sni_map_free(map);
    snprintf(err, errsize, "out of memory planning certificates by name");
    return NULL;
}

size_t sni_map_nsets(const struct sni_map *map)
{
    return map->nsets;
}

const struct sni_set *sni_map_set(const struct sni_map *map, size_t i)
{
    return &map->sets[i];
}

size_t sni_map_default(const struct sni_map *map)
{
    return map->default_set;
}

bool sni_map_trivial(const struct sni_map *map)
{
    return map->nsets == 1 && !map->strict;
}

void sni_map_free(struct sni_map *map)
{
    if (map == NULL)
        return;
    for (size_t i = 0; i < map->nnames; i++)
        free(map->names[i].name);
    free(map->names);
    free(map->sets);
    free(map->ctxs);
    free(map);
}

/* Frees the contexts the default one owns, when the default one is freed. */
static void sni_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct sni_map *map = ptr;

    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (map == NULL)
        return;
    for (size_t i = 0; map->ctxs != NULL && i < map->nsets; i++)
        if (i != map->default_set)
            SSL_CTX_free(map->ctxs[i]);
    sni_map_free(map);
}

/* The set for a client's server name: an exact name first, then a wildcard. */
static const struct sni_name *sni_lookup(const struct sni_map *map, const char *servername)
{
    char name[SNI_NAME_MAX + 2];
    size_t len = strlen(servername);

    if (len > 0 && servername[len - 1] == '.')
        len--; /* an absolute name: the same host */
    if (len == 0 || len > SNI_NAME_MAX)
        return NULL;
    for (size_t i = 0; i < len; i++)
        name[i] = (char)tolower((unsigned char)servername[i]);
    name[len] = '\0';
    const struct sni_name *found = sni_find(map, name);
    const char *dot = strchr(name, '.');
    if (found != NULL || dot == NULL || dot == name)
        return found;
    char wildcard[SNI_NAME_MAX + 2];
    snprintf(wildcard, sizeof(wildcard), "*%s", dot);
    return sni_find(map, wildcard);
}

static int sni_servername_cb(SSL *ssl, int *alert, void *arg)
{
    const struct sni_map *map = arg;
    const char *servername = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    const struct sni_name *found = servername != NULL ? sni_lookup(map, servername) : NULL;

    if (found == NULL && map->strict) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        if (servername != NULL)
            ERR_raise_data(ERR_LIB_SSL, SSL_R_TLSV1_UNRECOGNIZED_NAME,
                           "sni-strict: no certificate for \"%.253s\"", servername);
        else
            ERR_raise_data(ERR_LIB_SSL, SSL_R_TLSV1_UNRECOGNIZED_NAME,
                           "sni-strict: the client sent no server name");
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    /*
     * An unknown name gets the default set, chosen here rather than left as it is: after a
     * HelloRetryRequest this runs again for the second ClientHello, and the context the
     * first one's name chose must not serve a different name (found by t/fuzz).
     */
    SSL_CTX *ctx = map->ctxs[found != NULL ? found->set : map->default_set];
    if (ctx != SSL_get_SSL_CTX(ssl) && SSL_set_SSL_CTX(ssl, ctx) != ctx) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

int sni_map_install(struct sni_map *map, SSL_CTX **ctxs, char *err, size_t errsize)
{
    SSL_CTX *ctx = ctxs[map->default_set];

    if (sni_ex_index < 0 &&
        (sni_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_ex_free)) < 0) {
        snprintf(err, errsize, "cannot choose certificates by name: no ex_data index");
        return -1;
    }
    map->ctxs = malloc(map->nsets * sizeof(*map->ctxs));
    if (map->ctxs == NULL) {
        snprintf(err, errsize, "out of memory");
        return -1;
    }
    memcpy(map->ctxs, ctxs, map->nsets * sizeof(*map->ctxs));
    if (!SSL_CTX_set_ex_data(ctx, sni_ex_index, map)) {
        free(map->ctxs);
        map->ctxs = NULL;
        snprintf(err, errsize, "cannot choose certificates by name");
        return -1;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, map);
    return 0;
}
