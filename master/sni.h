#ifndef SLUICE_SNI_H
#define SLUICE_SNI_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

/* At most one certificate per key type serves a name: OpenSSL picks among them. */
#define SNI_MAX_KEY_TYPES 8

/* A frontend's certificate as the plan sees it: its leaf (for names and key type). */
struct sni_cert {
    X509 *leaf;
    const struct conf_cert *conf;
};

/* The certificates one SSL_CTX serves: the same names, one per key type. */
struct sni_set {
    size_t certs[SNI_MAX_KEY_TYPES]; /* indices into the frontend's certificates */
    size_t ncerts;
};

struct sni_map;

/*
 * Plan a frontend's contexts from its certificates' names (DNS SANs; the CN only when
 * there is none): for each name, the first certificate of each key type that has it. Each
 * distinct choice is a set, served by one SSL_CTX. The default set (no SNI, or no match)
 * is the one serving the first certificate's first name. NULL with "FILE:LINE: message"
 * in err when a certificate would never be served.
 */
struct sni_map *sni_map_plan(const struct sni_cert *certs, size_t ncerts, bool strict, char *err,
                             size_t errsize);
size_t sni_map_nsets(const struct sni_map *map);
const struct sni_set *sni_map_set(const struct sni_map *map, size_t i);
size_t sni_map_default(const struct sni_map *map);
/*
 * Make ctxs[default] choose among ctxs (one per set, in set order) by the client's SNI,
 * refusing unknown or absent names when strict. On success the default context owns the
 * map and the other contexts; on failure the caller still owns everything.
 */
int sni_map_install(struct sni_map *map, SSL_CTX **ctxs, char *err, size_t errsize);
/* Whether the plan needs no choosing: one set and not strict. */
bool sni_map_trivial(const struct sni_map *map);
/* Free a map that was not installed (its contexts are the caller's). */
void sni_map_free(struct sni_map *map);

#endif
