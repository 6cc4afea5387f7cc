/*
 * Fuzz target: the config loader, conf_load() and conf_free() (conf/conf.c).
 *
 * Each input is written as fuzz.conf into a private folder that also holds the files a
 * config may name (cert.pem, key.pem, ca.pem, crl.pem, ocsp.der, tickets.key), two
 * files to @include (fe.inc, a frontend's body; wrap.inc, an integer libconfig wraps)
 * and a FIFO (fifo), which no path may open: opening it would block.
 * A load must not crash, leak or hang, and must come back with a valid config or a
 * message. Checks that keep it within the folder:
 *   - host names are never resolved (getaddrinfo is wrapped to AI_NUMERICHOST): no DNS;
 *   - an input whose @include names anything but a plain name in the folder is refused
 *     (libconfig opens include_dir/NAME, so "../" reaches any file, a FIFO or /proc/kmsg
 *     would block); names like "" or "." stay in, for conf.c's own check to meet them;
 *   - cert, key, CA, CRL and OCSP paths may name any file: conf.c only opens regular
 *     files, and reads none of them.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "t/fuzz/fuzz.h"

#define INCLUDE "@include"
#define INCLUDE_LEN (sizeof(INCLUDE) - 1)

static char folder[PATH_MAX];
static char conf_path[PATH_MAX];

int __real_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res);
int __wrap_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res);

/* Linked with -Wl,--wrap=getaddrinfo: a name is refused as if unknown, an address parsed. */
int __wrap_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res)
{
    struct addrinfo numeric = {0};

    if (hints != NULL)
        numeric = *hints;
    numeric.ai_flags |= AI_NUMERICHOST;
    return __real_getaddrinfo(node, service, &numeric, res);
}

static void fixture_fail(const char *what, const char *path)
{
    fprintf(stderr, "fuzz_conf: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static void fixture_write(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0)
        fixture_fail("cannot create", path);
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fixture_fail("cannot write", path);
        p += n;
        len -= (size_t)n;
    }
    if (close(fd) < 0)
        fixture_fail("cannot close", path);
}

/* folder/name in path (PATH_MAX bytes). */
static void fixture_path(char *path, const char *name)
{
    int n = snprintf(path, PATH_MAX, "%s/%s", folder, name);

    if (n < 0 || n >= PATH_MAX) {
        fprintf(stderr, "fuzz_conf: %s/%s: path too long\n", folder, name);
        exit(1);
    }
}

static void fixture_file(const char *name, const char *text)
{
    char path[PATH_MAX];

    fixture_path(path, name);
    fixture_write(path, text, strlen(text));
}

static void fixture_cleanup(void)
{
    static const char *const names[] = {"fuzz.conf", "cert.pem", "key.pem", "ca.pem",
                                        "crl.pem",   "ocsp.der", "fe.inc",  "tickets.key",
                                        "wrap.inc",  "fifo"};
    char path[PATH_MAX];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        fixture_path(path, names[i]);
        unlink(path);
    }
    rmdir(folder);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR");

    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_ERROR);
    snprintf(folder, sizeof(folder), "%s/sluice-fuzz-conf-XXXXXX",
             tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
    if (mkdtemp(folder) == NULL)
        fixture_fail("cannot make folder", folder);
    atexit(fixture_cleanup);
    fixture_path(conf_path, "fuzz.conf");
    /* conf.c only opens these: their content does not matter. */
    fixture_file("cert.pem", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
    fixture_file("key.pem", "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n");
    fixture_file("ca.pem", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
    fixture_file("crl.pem", "-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n");
    fixture_file("ocsp.der", "\x30\x03\x0a\x01\x06");
    fixture_file("tickets.key", "# no keys\n");
    fixture_file("fe.inc", "listen = \"127.0.0.1:8443\";\nbackend = \"unix:app.sock\";\n"
                           "certs = ( { cert = \"cert.pem\"; key = \"key.pem\"; } );\n");
    fixture_file("wrap.inc", "backlog =\n  4294967297;\n");
    char fifo[PATH_MAX];
    fixture_path(fifo, "fifo");
    if (mkfifo(fifo, 0600) < 0)
        fixture_fail("cannot make FIFO", fifo);
    return 0;
}

static bool include_name_safe(const uint8_t *name, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
              (name[i] >= '0' && name[i] <= '9') || name[i] == '.' || name[i] == '_' ||
              name[i] == '-'))
            return false;
        if (name[i] == '.' && i + 1 < len && name[i + 1] == '.')
            return false;
    }
    return true;
}

/*
 * Whether every @include the input could hold names a file in the folder. libconfig 1.5
 * takes `^[ \t]*@include[ \t]+"NAME"`, NAME running to the next quote with backslashes
 * dropped; looking at every "@include" anywhere errs on the safe side.
 */
static bool includes_stay_inside(const uint8_t *data, size_t size)
{
    for (const uint8_t *at = data;
         (at = memmem(at, size - (size_t)(at - data), INCLUDE, INCLUDE_LEN)) != NULL;) {
        const uint8_t *p = at + INCLUDE_LEN, *end = data + size;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p == '"') {
            const uint8_t *name = ++p;
            while (p < end && *p != '"')
                p++;
            if (!include_name_safe(name, (size_t)(p - name)))
                return false;
        }
        at += INCLUDE_LEN;
    }
    return true;
}

static void check_duration(double d, double max)
{
    FUZZ_CHECK(isfinite(d) && d > 0 && d <= max, "duration %g", d);
}

/* "validation out": what conf_load promises about a config it accepted. */
static void check_conf(const struct conf *conf)
{
    FUZZ_CHECK(conf->workers >= 1 && conf->workers <= 1024, "workers %u", conf->workers);
    check_duration(conf->handshake_timeout, 86400);
    check_duration(conf->heartbeat_interval, 86400);
    FUZZ_CHECK(conf->watchdog_timeout > conf->heartbeat_interval, "watchdog %g <= heartbeat %g",
               conf->watchdog_timeout, conf->heartbeat_interval);
    FUZZ_CHECK(conf->nfrontends > 0, "no frontends");
    for (size_t i = 0; i < conf->nfrontends; i++) {
        const struct conf_frontend *fe = &conf->frontends[i];
        FUZZ_CHECK(fe->ncerts > 0 && fe->listen_text != NULL && fe->backend_text != NULL,
                   "frontend %zu incomplete", i);
        FUZZ_CHECK(fe->tls.protocols != 0, "frontend %zu: no protocol", i);
        for (size_t c = 0; c < fe->ncerts; c++)
            FUZZ_CHECK(fe->certs[c].cert[0] == '/' && fe->certs[c].key[0] == '/',
                       "frontend %zu: cert %zu not resolved: %s", i, c, fe->certs[c].cert);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[2048];

    if (!includes_stay_inside(data, size))
        return -1;
    fixture_write(conf_path, data, size);
    err[0] = '\0';
    struct conf *conf = conf_load(conf_path, err, sizeof(err));
    if (conf == NULL) {
        FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL,
                   "refused without a message");
        return 0;
    }
    check_conf(conf);
    conf_free(conf);
    return 0;
}
