/*
 * The configuration file: libconfig syntax, every key known, every value validated.
 * Errors come back as "FILE:LINE: message" so an operator can go straight to the line.
 */
#include "config.h"

#include "conf/conf.h"

#include <errno.h>
#include <grp.h>
#include <libconfig.h>
#include <limits.h>
#include <math.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#define DURATION_MAX 86400.0
#define IDLE_TIMEOUT_MAX 604800.0
#define DURATION_MIN 0.001
#define CONF_SOURCE_MAX (1024 * 1024)

struct parser {
    struct conf *conf;
    const char *path;
    char *err;
    size_t errsize;
};

struct key_rule {
    const char *name;
    int (*parse)(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                 void *base);
    size_t offset;
    double min, max;
};

static const char *setting_file(const struct parser *p, const config_setting_t *s)
{
    const char *file = config_setting_source_file(s);
    return file != NULL ? file : p->path;
}

static int conf_fail(struct parser *p, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int conf_fail(struct parser *p, const config_setting_t *s, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errsize, "%s:%d: %s", setting_file(p, s), config_setting_source_line(s),
             msg);
    return -1;
}

/* Origins outlive libconfig's tree (TLS set-up reports against them), so keep our own copy. */
static const char *conf_intern_file(struct parser *p, const char *file)
{
    struct conf *conf = p->conf;

    if (strcmp(file, conf->path) == 0)
        return conf->path;
    for (size_t i = 0; i < conf->nincluded; i++)
        if (strcmp(file, conf->included[i]) == 0)
            return conf->included[i];
    char **grown = realloc(conf->included, (conf->nincluded + 1) * sizeof(*grown));
    char *copy = strdup(file);
    if (grown == NULL || copy == NULL) {
        free(copy);
        if (grown != NULL)
            conf->included = grown;
        return conf->path;
    }
    conf->included = grown;
    conf->included[conf->nincluded++] = copy;
    return copy;
}

static struct conf_origin conf_origin_of(struct parser *p, const config_setting_t *s)
{
    struct conf_origin origin = {conf_intern_file(p, setting_file(p, s)),
                                 config_setting_source_line(s)};
    return origin;
}

static const char *setting_label(const config_setting_t *s)
{
    const char *name = config_setting_name(s);
    return name != NULL ? name : "value";
}

static int conf_strdup(struct parser *p, const config_setting_t *s, const char *value, char **out)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return conf_fail(p, s, "out of memory");
    free(*out);
    *out = copy;
    return 0;
}

/* The text of file from the start of line on, at most CONF_SOURCE_MAX bytes; NULL if unreadable. */
static char *conf_source_from_line(const char *file, int line)
{
    char *text = malloc(CONF_SOURCE_MAX + 1);
    FILE *f = fopen(file, "r");
    size_t len = 0;

    if (text == NULL || f == NULL) {
        free(text);
        if (f != NULL)
            fclose(f);
        return NULL;
    }
    len = fread(text, 1, CONF_SOURCE_MAX, f);
    fclose(f);
    text[len] = '\0';
    char *at = text;
    for (int n = 1; n < line && at != NULL; n++) {
        at = strchr(at, '\n');
        if (at != NULL)
            at++;
    }
    if (at == NULL) {
        free(text);
        return NULL;
    }
    memmove(text, at, strlen(at) + 1);
    return text;
}

/*
 * libconfig 1.5 silently wraps an integer literal that does not fit 32 bits
 * ("workers = 4294967297" reads as 1). Re-read the literal from the source, which
 * may continue on the lines after the name, and refuse it when it does not round-trip.
 */
static bool setting_int_wrapped(const struct parser *p, const config_setting_t *s, long long value)
{
    const char *file = config_setting_source_file(s);
    const char *name = config_setting_name(s);
    int line = config_setting_source_line(s);
    bool wrapped = false;
    char included[PATH_MAX], *text;

    /* An @include'd file is named as its directive wrote it: beside the config, not the cwd. */
    if (file != NULL && file[0] != '/' && strcmp(file, p->conf->path) != 0) {
        int n = snprintf(included, sizeof(included), "%s/%s", p->conf->dir, file);
        if (n < 0 || (size_t)n >= sizeof(included))
            return false;
        file = included;
    }
    if (file == NULL || name == NULL || line <= 0 ||
        (text = conf_source_from_line(file, line)) == NULL)
        return false;
    size_t namelen = strlen(name);
    for (char *at = strstr(text, name); at != NULL; at = strstr(at + 1, name)) {
        char *rest = at + namelen;
        rest += strspn(rest, " \t\r\n");
        if (*rest != '=' && *rest != ':')
            continue;
        rest++;
        rest += strspn(rest, " \t\r\n");
        char *end;
        errno = 0;
        int base = rest[0] == '0' && (rest[1] == 'x' || rest[1] == 'X') ? 16 : 10;
        long long literal = strtoll(rest, &end, base);
        if (end != rest)
            wrapped = errno == ERANGE || literal != value;
        break;
    }
    free(text);
    return wrapped;
}

static int setting_integer(struct parser *p, const config_setting_t *s, long long *out)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
        *out = config_setting_get_int(s);
        break;
    case CONFIG_TYPE_INT64:
        *out = config_setting_get_int64(s);
        break;
    default:
        return conf_fail(p, s, "%s must be an integer", setting_label(s));
    }
    if (setting_int_wrapped(p, s, *out))
        return conf_fail(p, s, "%s: number too large", setting_label(s));
    return 0;
}

static int parse_uint(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                      void *base)
{
    long long value = 0;

    if (setting_integer(p, s, &value) < 0)
        return -1;
    if (value < (long long)rule->min || value > (long long)rule->max)
        return conf_fail(p, s, "%s must be %.0f..%.0f", rule->name, rule->min, rule->max);
    *(unsigned *)((char *)base + rule->offset) = (unsigned)value;
    return 0;
}

static int parse_duration(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                          void *base)
{
    double value = 0;

    if (config_setting_type(s) == CONFIG_TYPE_FLOAT) {
        value = config_setting_get_float(s);
        if (!isfinite(value))
            return conf_fail(p, s, "%s must be a finite number of seconds", rule->name);
    } else {
        long long integer = 0;
        if (config_setting_type(s) != CONFIG_TYPE_INT &&
            config_setting_type(s) != CONFIG_TYPE_INT64)
            return conf_fail(p, s, "%s must be a number of seconds", rule->name);
        if (setting_integer(p, s, &integer) < 0)
            return -1;
        value = (double)integer;
    }
    if (value < rule->min || value > rule->max)
        return conf_fail(p, s, "%s must be between %g and %g seconds", rule->name, rule->min,
                         rule->max);
    /* cppcheck-suppress invalidPointerCast ; base + offset is the double field the rule names */
    *(double *)((char *)base + rule->offset) = value;
    return 0;
}

static int parse_bool(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                      void *base)
{
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return conf_fail(p, s, "%s must be true or false", rule->name);
    *(bool *)((char *)base + rule->offset) = config_setting_get_bool(s) != 0;
    return 0;
}

static int setting_string(struct parser *p, const config_setting_t *s, const char **out)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        conf_fail(p, s, "%s must be a string", setting_label(s));
        return -1; /* spelled out: clang's analyzer does not follow the variadic conf_fail */
    }
    *out = config_setting_get_string(s);
    return 0;
}

static int parse_string(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                        void *base)
{
    const char *value = NULL;

    if (setting_string(p, s, &value) < 0)
        return -1;
    if (value[0] == '\0' && rule->min > 0)
        return conf_fail(p, s, "%s must not be empty", rule->name);
    return conf_strdup(p, s, value, (char **)((char *)base + rule->offset));
}

/* Relative paths are relative to the config file's folder, not to the cwd at start. */
static int conf_resolve_path(struct parser *p, const config_setting_t *s, const char *value,
                             char **out)
{
    char buf[PATH_MAX];

    if (value[0] == '\0' || value[0] == '/')
        return conf_strdup(p, s, value, out);
    int n = snprintf(buf, sizeof(buf), "%s/%s", p->conf->dir, value);
    if (n < 0 || (size_t)n >= sizeof(buf))
        return conf_fail(p, s, "path \"%s\" is too long", value);
    return conf_strdup(p, s, buf, out);
}

static int parse_path(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                      void *base)
{
    const char *value = NULL;

    if (setting_string(p, s, &value) < 0)
        return -1;
    return conf_resolve_path(p, s, value, (char **)((char *)base + rule->offset));
}

/* A file sluice must read: a regular file (a FIFO would hang us), and we can open it. */
static int conf_check_readable(struct parser *p, const config_setting_t *s, const char *what,
                               const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return conf_fail(p, s, "%s %s: %s", what, path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return conf_fail(p, s, "%s %s: not a regular file", what, path);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return conf_fail(p, s, "%s %s: %s", what, path, strerror(errno));
    fclose(f);
    return 0;
}

static int parse_log_level(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                           void *base)
{
    const char *value = NULL;

    if (setting_string(p, s, &value) < 0)
        return -1;
    if (log_level_parse(value, (enum log_level *)((char *)base + rule->offset)) < 0)
        return conf_fail(p, s, "%s must be one of error, warning, info, debug", rule->name);
    return 0;
}

static int parse_facility(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                          void *base)
{
    static const struct {
        const char *name;
        int facility;
    } facilities[] = {
        {"daemon", LOG_DAEMON}, {"user", LOG_USER},     {"local0", LOG_LOCAL0},
        {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},
        {"local4", LOG_LOCAL4}, {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},
        {"local7", LOG_LOCAL7},
    };
    const char *value = NULL;

    if (setting_string(p, s, &value) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(facilities) / sizeof(facilities[0]); i++) {
        if (strcmp(value, facilities[i].name) == 0) {
            *(int *)((char *)base + rule->offset) = facilities[i].facility;
            return 0;
        }
    }
    return conf_fail(p, s, "%s must be daemon, user or local0..local7", rule->name);
}

static int parse_user(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                      void *base)
{
    const char *value = NULL;

    if (setting_string(p, s, &value) < 0)
        return -1;
    if (value[0] == '\0')
        return conf_fail(p, s, "%s must not be empty", rule->name);
    if (strcmp(rule->name, "user") == 0 ? getpwnam(value) == NULL : getgrnam(value) == NULL)
        return conf_fail(p, s, "%s \"%s\" does not exist", rule->name, value);
    return conf_strdup(p, s, value, (char **)((char *)base + rule->offset));
}

/* Look up each member of a group in rules; any other name is an error. */
static int conf_parse_group(struct parser *p, const config_setting_t *group,
                            const struct key_rule *rules, size_t nrules, void *base,
                            const char *const *handled_elsewhere)
{
    if (!config_setting_is_group(group))
        return conf_fail(p, group, "%s must be a group { ... }", setting_label(group));
    for (int i = 0; i < config_setting_length(group); i++) {
        const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(s);
        bool known = false;

        for (size_t r = 0; r < nrules && !known; r++) {
            if (strcmp(name, rules[r].name) == 0) {
                if (rules[r].parse(p, s, &rules[r], base) < 0)
                    return -1;
                known = true;
            }
        }
        for (size_t h = 0; handled_elsewhere != NULL && handled_elsewhere[h] && !known; h++)
            known = strcmp(name, handled_elsewhere[h]) == 0;
        if (!known)
            return conf_fail(p, s, "unknown key \"%s\"", name);
    }
    return 0;
}

static int parse_protocols(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                           void *base)
{
    struct conf_tls *tls = base;
    unsigned protocols = 0;

    if (!config_setting_is_array(s) && !config_setting_is_list(s))
        return conf_fail(p, s, "%s must be a list such as [ \"TLSv1.2\", \"TLSv1.3\" ]",
                         rule->name);
    for (int i = 0; i < config_setting_length(s); i++) {
        const char *name = config_setting_get_string_elem(s, i);
        if (name != NULL && strcmp(name, "TLSv1.2") == 0)
            protocols |= CONF_TLS_1_2;
        else if (name != NULL && strcmp(name, "TLSv1.3") == 0)
            protocols |= CONF_TLS_1_3;
        else
            return conf_fail(p, s, "%s: only \"TLSv1.2\" and \"TLSv1.3\" are supported",
                             rule->name);
    }
    if (protocols == 0)
        return conf_fail(p, s, "%s must name at least one protocol", rule->name);
    tls->protocols = protocols;
    tls->protocols_origin = conf_origin_of(p, s);
    return 0;
}

static int parse_tls_string(struct parser *p, const config_setting_t *s,
                            const struct key_rule *rule, void *base)
{
    struct conf_tls *tls = base;

    if (parse_string(p, s, rule, base) < 0)
        return -1;
    /* Remember where each cipher string came from: OpenSSL rejects them at build time. */
    struct conf_origin origin = conf_origin_of(p, s);
    if (strcmp(rule->name, "ciphers") == 0)
        tls->ciphers_origin = origin;
    else if (strcmp(rule->name, "ciphersuites") == 0)
        tls->ciphersuites_origin = origin;
    else
        tls->groups_origin = origin;
    return 0;
}

static int parse_ticket_key_file(struct parser *p, const config_setting_t *s,
                                 const struct key_rule *rule, void *base)
{
    if (parse_path(p, s, rule, base) < 0)
        return -1;
    /* The file itself is read with the TLS contexts (ticketkeys_install), also on HUP. */
    ((struct conf_tls *)base)->ticket_key_file_origin = conf_origin_of(p, s);
    return 0;
}

static const struct key_rule tls_rules[] = {
    {"protocols", parse_protocols, 0, 0, 0},
    {"ciphers", parse_tls_string, offsetof(struct conf_tls, ciphers), 1, 0},
    {"ciphersuites", parse_tls_string, offsetof(struct conf_tls, ciphersuites), 1, 0},
    {"groups", parse_tls_string, offsetof(struct conf_tls, groups), 1, 0},
    {"session-tickets", parse_bool, offsetof(struct conf_tls, session_tickets), 0, 0},
    {"ticket-key-file", parse_ticket_key_file, offsetof(struct conf_tls, ticket_key_file), 0, 0},
};

static int conf_tls_defaults(struct parser *p, const config_setting_t *s, struct conf_tls *tls)
{
    tls->protocols = CONF_TLS_1_2 | CONF_TLS_1_3;
    tls->session_tickets = true;
    if (conf_strdup(p, s, "ECDHE+AESGCM:ECDHE+CHACHA20", &tls->ciphers) < 0 ||
        conf_strdup(p, s,
                    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
                    &tls->ciphersuites) < 0 ||
        conf_strdup(p, s, "X25519:P-256", &tls->groups) < 0 ||
        conf_strdup(p, s, "", &tls->ticket_key_file) < 0)
        return -1;
    tls->protocols_origin = tls->ciphers_origin = conf_origin_of(p, s);
    tls->ciphersuites_origin = tls->groups_origin = conf_origin_of(p, s);
    return 0;
}

static int conf_tls_copy(struct parser *p, const config_setting_t *s, const struct conf_tls *from,
                         struct conf_tls *to)
{
    *to = *from;
    to->ciphers = to->ciphersuites = to->groups = to->ticket_key_file = NULL;
    if (conf_strdup(p, s, from->ciphers, &to->ciphers) < 0 ||
        conf_strdup(p, s, from->ciphersuites, &to->ciphersuites) < 0 ||
        conf_strdup(p, s, from->groups, &to->groups) < 0 ||
        conf_strdup(p, s, from->ticket_key_file, &to->ticket_key_file) < 0)
        return -1;
    return 0;
}

static void conf_tls_free(struct conf_tls *tls)
{
    free(tls->ciphers);
    free(tls->ciphersuites);
    free(tls->groups);
    free(tls->ticket_key_file);
}

static int parse_listen(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                        void *base)
{
    struct conf_frontend *fe = base;
    char why[512];

    if (parse_string(p, s, rule, base) < 0)
        return -1;
    if (addr_parse_inet(fe->listen_text, true, &fe->listen, why, sizeof(why)) < 0)
        return conf_fail(p, s, "listen: %s", why);
    return 0;
}

static int parse_backend(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                         void *base)
{
    struct conf_frontend *fe = base;
    char why[512];
    char *path = NULL;
    int rc;

    if (parse_string(p, s, rule, base) < 0)
        return -1;
    if (strncmp(fe->backend_text, "unix:", 5) != 0) {
        if (addr_parse_inet(fe->backend_text, false, &fe->backend, why, sizeof(why)) < 0)
            return conf_fail(p, s, "backend: %s (or \"unix:/PATH\")", why);
        return 0;
    }
    /* The socket need not exist yet: the backend may start after us (boot order). */
    if (conf_resolve_path(p, s, fe->backend_text + 5, &path) < 0)
        return -1;
    rc = addr_parse_unix(path, &fe->backend, why, sizeof(why));
    free(path);
    return rc < 0 ? conf_fail(p, s, "backend: %s", why) : 0;
}

static int parse_proxy_protocol(struct parser *p, const config_setting_t *s,
                                const struct key_rule *rule, void *base)
{
    static const char *const names[] = {
        [PROXY_PROTOCOL_OFF] = "off", [PROXY_PROTOCOL_V1] = "v1", [PROXY_PROTOCOL_V2] = "v2"};
    const char *value = NULL;

    if (setting_string(p, s, &value) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(value, names[i]) == 0) {
            ((struct conf_frontend *)base)->proxy_protocol = (enum conf_proxy_protocol)i;
            return 0;
        }
    }
    return conf_fail(p, s, "%s must be off, v1 or v2", rule->name);
}

static int parse_alpn(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                      void *base)
{
    struct conf_frontend *fe = base;
    size_t len = 0;

    if (!config_setting_is_array(s) && !config_setting_is_list(s))
        return conf_fail(p, s, "%s must be a list such as [ \"http/1.1\" ]", rule->name);
    unsigned char *wire = malloc((size_t)config_setting_length(s) * 256 + 1);
    if (wire == NULL)
        return conf_fail(p, s, "out of memory");
    for (int i = 0; i < config_setting_length(s); i++) {
        const char *proto = config_setting_get_string_elem(s, i);
        size_t plen = proto != NULL ? strlen(proto) : 0;
        if (plen == 0 || plen > 255) {
            free(wire);
            return conf_fail(p, s, "%s: each protocol must be a string of 1..255 bytes",
                             rule->name);
        }
        wire[len++] = (unsigned char)plen;
        memcpy(wire + len, proto, plen);
        len += plen;
    }
    free(fe->alpn_wire);
    fe->alpn_wire = wire;
    fe->alpn_wire_len = len;
    return 0;
}

static int parse_verify_client(struct parser *p, const config_setting_t *s,
                               const struct key_rule *rule, void *base)
{
    static const char *const names[] = {"none", "optional", "require"};
    const char *value = NULL;

    if (setting_string(p, s, &value) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(value, names[i]) == 0) {
            ((struct conf_frontend *)base)->verify_client = (enum conf_verify_client)i;
            return 0;
        }
    }
    return conf_fail(p, s, "%s must be none, optional or require", rule->name);
}

/* An optional file ("" for none) that must be readable when given; origin for its errors. */
static int parse_optional_file(struct parser *p, const config_setting_t *s,
                               const struct key_rule *rule, void *base, struct conf_origin *origin)
{
    char **path = (char **)((char *)base + rule->offset);

    if (parse_path(p, s, rule, base) < 0)
        return -1;
    *origin = conf_origin_of(p, s);
    return (*path)[0] != '\0' ? conf_check_readable(p, s, rule->name, *path) : 0;
}

static int parse_client_ca(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                           void *base)
{
    return parse_optional_file(p, s, rule, base, &((struct conf_frontend *)base)->client_ca_origin);
}

static int parse_crl(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                     void *base)
{
    return parse_optional_file(p, s, rule, base, &((struct conf_frontend *)base)->crl_origin);
}

/* Its content is checked with the TLS contexts (ocsp_attach): a bad one is only logged. */
static int parse_cert_ocsp(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                           void *base)
{
    return parse_optional_file(p, s, rule, base, &((struct conf_cert *)base)->ocsp_origin);
}

static const struct key_rule cert_rules[] = {
    {"cert", parse_path, offsetof(struct conf_cert, cert), 0, 0},
    {"key", parse_path, offsetof(struct conf_cert, key), 0, 0},
    {"ocsp", parse_cert_ocsp, offsetof(struct conf_cert, ocsp), 0, 0},
};

static int parse_certs(struct parser *p, const config_setting_t *s, const struct key_rule *rule,
                       void *base)
{
    struct conf_frontend *fe = base;
    int n = config_setting_length(s);

    if (!config_setting_is_list(s) || n == 0)
        return conf_fail(p, s, "%s must be a list ( { cert = \"...\"; key = \"...\"; } )",
                         rule->name);
    fe->certs = calloc((size_t)n, sizeof(*fe->certs));
    if (fe->certs == NULL)
        return conf_fail(p, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *entry = config_setting_get_elem(s, (unsigned)i);
        struct conf_cert *cert = &fe->certs[i];

        fe->ncerts++;
        cert->origin = conf_origin_of(p, entry);
        if (conf_parse_group(p, entry, cert_rules, sizeof(cert_rules) / sizeof(cert_rules[0]), cert,
                             NULL) < 0)
            return -1;
        if (cert->cert == NULL || cert->key == NULL)
            return conf_fail(p, entry, "each certs entry needs both cert and key");
        if (conf_check_readable(p, entry, "cert", cert->cert) < 0 ||
            conf_check_readable(p, entry, "key", cert->key) < 0)
            return -1;
    }
    return 0;
}

static int parse_frontend_tls(struct parser *p, const config_setting_t *s,
                              const struct key_rule *rule, void *base)
{
    (void)rule;
    return conf_parse_group(p, s, tls_rules, sizeof(tls_rules) / sizeof(tls_rules[0]),
                            &((struct conf_frontend *)base)->tls, NULL);
}

static const struct key_rule frontend_rules[] = {
    {"listen", parse_listen, offsetof(struct conf_frontend, listen_text), 1, 0},
    {"backend", parse_backend, offsetof(struct conf_frontend, backend_text), 1, 0},
    {"proxy-protocol", parse_proxy_protocol, 0, 0, 0},
    {"proxy-crc", parse_bool, offsetof(struct conf_frontend, proxy_crc), 0, 0},
    {"accept-proxy", parse_bool, offsetof(struct conf_frontend, accept_proxy), 0, 0},
    {"certs", parse_certs, 0, 0, 0},
    {"alpn", parse_alpn, 0, 0, 0},
    {"client-ca", parse_client_ca, offsetof(struct conf_frontend, client_ca), 0, 0},
    {"verify-client", parse_verify_client, 0, 0, 0},
    {"crl", parse_crl, offsetof(struct conf_frontend, crl), 0, 0},
    {"sni-strict", parse_bool, offsetof(struct conf_frontend, sni_strict), 0, 0},
    {"tls", parse_frontend_tls, 0, 0, 0},
};

static int conf_frontend_check(struct parser *p, const config_setting_t *s,
                               const struct conf_frontend *fe)
{
    if (fe->listen_text == NULL)
        return conf_fail(p, s, "frontend needs listen = \"HOST:PORT\"");
    if (fe->backend_text == NULL)
        return conf_fail(p, s, "frontend needs backend = \"unix:/PATH\" or \"HOST:PORT\"");
    if (fe->ncerts == 0)
        return conf_fail(p, s, "frontend needs certs = ( { cert = ...; key = ...; } )");
    if (fe->verify_client != VERIFY_CLIENT_NONE && fe->client_ca[0] == '\0')
        return conf_fail(p, s, "verify-client needs client-ca");
    if (fe->crl[0] != '\0' && fe->verify_client == VERIFY_CLIENT_NONE)
        return conf_fail(p, s, "crl needs verify-client = \"optional\" or \"require\"");
    if (fe->proxy_crc && fe->proxy_protocol != PROXY_PROTOCOL_V2)
        return conf_fail(p, s, "proxy-crc needs proxy-protocol = \"v2\"");
    for (size_t i = 0; i < (size_t)(fe - p->conf->frontends); i++) {
        if (addr_listen_conflict(&p->conf->frontends[i].listen, &fe->listen))
            return conf_fail(p, s, "listen \"%s\" overlaps \"%s\" of the frontend at line %d",
                             fe->listen_text, p->conf->frontends[i].listen_text,
                             p->conf->frontends[i].origin.line);
    }
    return 0;
}

static int conf_parse_frontends(struct parser *p, const config_setting_t *s)
{
    struct conf *conf = p->conf;
    int n;

    if (s == NULL) {
        snprintf(p->err, p->errsize, "%s: no frontends defined", p->path);
        return -1;
    }
    n = config_setting_length(s);
    if (!config_setting_is_list(s) || n == 0)
        return conf_fail(p, s, "frontends must be a non-empty list ( { ... }, { ... } )");
    conf->frontends = calloc((size_t)n, sizeof(*conf->frontends));
    if (conf->frontends == NULL)
        return conf_fail(p, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *entry = config_setting_get_elem(s, (unsigned)i);
        struct conf_frontend *fe = &conf->frontends[i];

        conf->nfrontends++;
        fe->origin = conf_origin_of(p, entry);
        fe->client_ca_origin = fe->origin;
        fe->crl_origin = fe->origin;
        if (conf_tls_copy(p, entry, &conf->tls, &fe->tls) < 0 ||
            conf_strdup(p, entry, "", &fe->client_ca) < 0 ||
            conf_strdup(p, entry, "", &fe->crl) < 0 ||
            conf_parse_group(p, entry, frontend_rules,
                             sizeof(frontend_rules) / sizeof(frontend_rules[0]), fe, NULL) < 0 ||
            conf_frontend_check(p, entry, fe) < 0)
            return -1;
    }
    return 0;
}

static int parse_global_tls(struct parser *p, const config_setting_t *s,
                            const struct key_rule *rule, void *base)
{
    (void)rule;
    return conf_parse_group(p, s, tls_rules, sizeof(tls_rules) / sizeof(tls_rules[0]),
                            &((struct conf *)base)->tls, NULL);
}

#define GLOBAL(name, fn, field, min, max)                                                          \
    {                                                                                              \
        name, fn, offsetof(struct conf, field), min, max                                           \
    }

static const struct key_rule global_rules[] = {
    GLOBAL("workers", parse_uint, workers, 1, 1024),
    GLOBAL("daemon", parse_bool, daemon, 0, 0),
    GLOBAL("pidfile", parse_path, pidfile, 0, 0),
    GLOBAL("user", parse_user, user, 0, 0),
    GLOBAL("group", parse_user, group, 0, 0),
    GLOBAL("chroot", parse_path, chroot, 0, 0),
    GLOBAL("log-level", parse_log_level, log_level, 0, 0),
    GLOBAL("syslog", parse_bool, syslog, 0, 0),
    GLOBAL("syslog-facility", parse_facility, syslog_facility, 0, 0),
    GLOBAL("log-file", parse_path, log_file, 0, 0),
    GLOBAL("log-connections", parse_bool, log_connections, 0, 0),
    GLOBAL("stats-file", parse_path, stats_file, 0, 0),
    GLOBAL("handshake-permits", parse_uint, handshake_permits, 1, 1000000),
    GLOBAL("handshake-timeout", parse_duration, handshake_timeout, DURATION_MIN, DURATION_MAX),
    GLOBAL("backend-connect-timeout", parse_duration, backend_connect_timeout, DURATION_MIN,
           DURATION_MAX),
    GLOBAL("idle-timeout", parse_duration, idle_timeout, DURATION_MIN, IDLE_TIMEOUT_MAX),
    GLOBAL("close-timeout", parse_duration, close_timeout, DURATION_MIN, DURATION_MAX),
    GLOBAL("drain-timeout", parse_duration, drain_timeout, DURATION_MIN, DURATION_MAX),
    GLOBAL("max-connections", parse_uint, max_connections, 1, 1000000),
    GLOBAL("backlog", parse_uint, backlog, 0, 65535),
    GLOBAL("heartbeat-interval", parse_duration, heartbeat_interval, DURATION_MIN, DURATION_MAX),
    GLOBAL("watchdog-timeout", parse_duration, watchdog_timeout, DURATION_MIN, DURATION_MAX),
    GLOBAL("spin-guard", parse_bool, spin_guard, 0, 0),
    GLOBAL("spin-guard-threshold", parse_uint, spin_guard_threshold, 100, 100000000),
    GLOBAL("tls", parse_global_tls, tls, 0, 0),
};

static int conf_defaults(struct parser *p, const config_setting_t *root)
{
    struct conf *conf = p->conf;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    conf->workers = cpus > 0 && cpus <= 1024 ? (unsigned)cpus : 1;
    conf->log_level = LOG_LEVEL_INFO;
    conf->syslog = true;
    conf->syslog_facility = LOG_DAEMON;
    conf->handshake_permits = 1024;
    conf->handshake_timeout = 10;
    conf->backend_connect_timeout = 5;
    conf->idle_timeout = 300;
    conf->close_timeout = 5;
    conf->drain_timeout = 30;
    conf->max_connections = 10000;
    conf->heartbeat_interval = 1;
    conf->watchdog_timeout = 5;
    conf->spin_guard = true;
    conf->spin_guard_threshold = 10000;
    if (conf_strdup(p, root, "/run/sluice.pid", &conf->pidfile) < 0 ||
        conf_strdup(p, root, "", &conf->chroot) < 0 ||
        conf_strdup(p, root, "", &conf->log_file) < 0 ||
        conf_strdup(p, root, "/run/sluice.stats", &conf->stats_file) < 0)
        return -1;
    return conf_tls_defaults(p, root, &conf->tls);
}

static int conf_cross_check(struct parser *p, const config_setting_t *root)
{
    struct conf *conf = p->conf;

    const config_setting_t *watchdog = config_setting_get_member(root, "watchdog-timeout");

    if (conf->watchdog_timeout <= conf->heartbeat_interval)
        return conf_fail(p, watchdog != NULL ? watchdog : root,
                         "watchdog-timeout must be longer than heartbeat-interval");
    return 0;
}

/* The folder as named, not a symlinked file's target: relative paths live beside the name. */
static int conf_set_paths(struct conf *conf, const char *path, char *err, size_t errsize)
{
    const char *slash = strrchr(path, '/');
    char *folder = slash == NULL   ? strdup(".")
                   : slash == path ? strdup("/")
                                   : strndup(path, (size_t)(slash - path));

    conf->path = strdup(path);
    if (folder == NULL || conf->path == NULL) {
        free(folder);
        snprintf(err, errsize, "%s: out of memory", path);
        return -1;
    }
    conf->dir = realpath(folder, NULL);
    free(folder);
    if (conf->dir == NULL) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

#define CONF_INCLUDE "@include"
#define CONF_INCLUDE_LEN (sizeof(CONF_INCLUDE) - 1)
#define CONF_INCLUDE_DEPTH_MAX 10 /* libconfig 1.5's own limit on nested files */

/* The whole of a file, NUL-terminated (it may hold other NULs); NULL if unreadable. */
static char *conf_read_all(const char *file, size_t *len)
{
    FILE *f = fopen(file, "r");
    char *text = NULL;
    size_t cap = 0, n = 0, got;

    if (f == NULL)
        return NULL;
    do {
        if (cap - n < 4096) {
            char *grown = realloc(text, cap = cap * 2 + 4096);
            if (grown == NULL) {
                free(text);
                fclose(f);
                return NULL;
            }
            text = grown;
        }
        n += got = fread(text + n, 1, cap - n - 1, f);
    } while (got > 0);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed) {
        free(text);
        return NULL;
    }
    text[n] = '\0';
    *len = n;
    return text;
}

static int conf_check_includes(struct parser *p, const char *file, int depth);

/* The @include at line of file, its name from name up to a quote (backslashes dropped). */
/* NOLINTNEXTLINE(misc-no-recursion): at most CONF_INCLUDE_DEPTH_MAX deep */
static int conf_check_include(struct parser *p, const char *file, int line, const char *name,
                              const char *end, int depth)
{
    const char *quote = memchr(name, '"', (size_t)(end - name));
    char *path = quote != NULL ? malloc(strlen(p->conf->dir) + (size_t)(quote - name) + 2) : NULL;
    struct stat st;
    int rc = 0;

    if (quote == NULL)
        return 0; /* no closing quote: libconfig includes nothing */
    if (path == NULL) {
        snprintf(p->err, p->errsize, "%s:%d: out of memory", file, line);
        return -1;
    }
    size_t len = strlen(p->conf->dir);
    memcpy(path, p->conf->dir, len);
    path[len++] = '/';
    for (const char *c = name; c < quote; c++)
        if (*c != '\\')
            path[len++] = *c;
    path[len] = '\0';
    bool exists = stat(path, &st) == 0;
    if (exists && !S_ISREG(st.st_mode)) {
        snprintf(p->err, p->errsize, "%s:%d: @include %s: not a regular file", file, line, path);
        rc = -1;
    } else if (exists && depth == CONF_INCLUDE_DEPTH_MAX) {
        /* Refused here, as libconfig would, before a file including itself costs 2^10 scans. */
        snprintf(p->err, p->errsize, "%s:%d: @include %s: nested more than %d deep", file, line,
                 path, CONF_INCLUDE_DEPTH_MAX);
        rc = -1;
    } else if (exists) {
        rc = conf_check_includes(p, path, depth + 1);
    }
    free(path);
    return rc;
}

/*
 * libconfig 1.5 opens an @include'd file without a look at it: a FIFO would block us (the
 * master too, on SIGHUP), and a folder or "" makes its scanner exit(2) ("input in flex
 * scanner failed"). So look first, finding them as it does: a line of blanks, @include,
 * blanks and a quoted name, opened as include_dir/NAME. One in a comment or a string is
 * looked at too, which is only stricter. A missing file is left to libconfig to report.
 */
/* NOLINTNEXTLINE(misc-no-recursion): at most CONF_INCLUDE_DEPTH_MAX deep */
static int conf_check_includes(struct parser *p, const char *file, int depth)
{
    size_t len;
    char *text = conf_read_all(file, &len);
    int rc = 0, line = 1;

    if (text == NULL)
        return 0;
    const char *end = text + len;
    for (const char *pos = text; pos < end && rc == 0; line++) {
        const char *eol = memchr(pos, '\n', (size_t)(end - pos));
        const char *next = eol != NULL ? eol + 1 : end;
        const char *q = pos + strspn(pos, " \t");
        if ((size_t)(end - q) > CONF_INCLUDE_LEN &&
            memcmp(q, CONF_INCLUDE, CONF_INCLUDE_LEN) == 0 &&
            (q[CONF_INCLUDE_LEN] == ' ' || q[CONF_INCLUDE_LEN] == '\t')) {
            q += CONF_INCLUDE_LEN + strspn(q + CONF_INCLUDE_LEN, " \t");
            if (q < end && *q == '"')
                rc = conf_check_include(p, file, line, q + 1, end, depth);
        }
        pos = next;
    }
    free(text);
    return rc;
}

static const char *const root_handled_elsewhere[] = {"frontends", NULL};

struct conf *conf_load(const char *path, char *err, size_t errsize)
{
    struct conf *conf = calloc(1, sizeof(*conf));
    struct parser p = {conf, path, err, errsize};
    config_t cfg;
    int rc = -1;

    if (conf == NULL) {
        snprintf(err, errsize, "%s: out of memory", path);
        return NULL;
    }
    config_init(&cfg);
    if (conf_set_paths(conf, path, err, errsize) < 0)
        goto out;
    config_set_include_dir(&cfg, conf->dir);
    /* Not a config on a pipe (sluice -t -f <(...)): it can be read only once. */
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && conf_check_includes(&p, path, 0) < 0)
        goto out;
    if (!config_read_file(&cfg, path)) {
        if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO)
            snprintf(err, errsize, "%s: %s", path, strerror(errno));
        else
            snprintf(err, errsize, "%s:%d: %s",
                     config_error_file(&cfg) ? config_error_file(&cfg) : path,
                     config_error_line(&cfg), config_error_text(&cfg));
        goto out;
    }
    const config_setting_t *root = config_root_setting(&cfg);
    p.path = conf->path;
    if (conf_defaults(&p, root) < 0 ||
        conf_parse_group(&p, root, global_rules, sizeof(global_rules) / sizeof(global_rules[0]),
                         conf, root_handled_elsewhere) < 0 ||
        conf_cross_check(&p, root) < 0 ||
        conf_parse_frontends(&p, config_setting_get_member(root, "frontends")) < 0)
        goto out;
    rc = 0;
out:
    config_destroy(&cfg);
    if (rc < 0) {
        conf_free(conf);
        return NULL;
    }
    return conf;
}

void conf_free(struct conf *conf)
{
    if (conf == NULL)
        return;
    for (size_t i = 0; i < conf->nfrontends; i++) {
        struct conf_frontend *fe = &conf->frontends[i];
        for (size_t c = 0; c < fe->ncerts; c++) {
            free(fe->certs[c].cert);
            free(fe->certs[c].key);
            free(fe->certs[c].ocsp);
        }
        free(fe->certs);
        free(fe->listen_text);
        free(fe->backend_text);
        free(fe->alpn_wire);
        free(fe->client_ca);
        free(fe->crl);
        conf_tls_free(&fe->tls);
    }
    free(conf->frontends);
    conf_tls_free(&conf->tls);
    for (size_t i = 0; i < conf->nincluded; i++)
        free(conf->included[i]);
    free(conf->included);
    free(conf->path);
    free(conf->dir);
    free(conf->pidfile);
    free(conf->user);
    free(conf->group);
    free(conf->chroot);
    free(conf->log_file);
    free(conf->stats_file);
    free(conf);
}
