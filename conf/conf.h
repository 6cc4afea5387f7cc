#ifndef SLUICE_CONF_H
#define SLUICE_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/addr.h"
#include "lib/log.h"

#define CONF_TLS_1_2 0x1u
#define CONF_TLS_1_3 0x2u

/* Where a value came from, for messages of the form FILE:LINE: message. */
struct conf_origin {
    const char *file;
    int line;
};

struct conf_cert {
    char *cert;
    char *key;
    char *ocsp; /* a DER OCSP response to staple; NULL or "" when none */
    struct conf_origin origin, ocsp_origin;
};

struct conf_tls {
    unsigned protocols; /* CONF_TLS_* bits */
    char *ciphers;
    char *ciphersuites;
    char *groups;
    bool session_tickets;
    char *ticket_key_file; /* "" when none: the master's own keys */
    struct conf_origin protocols_origin, ciphers_origin, ciphersuites_origin, groups_origin;
    struct conf_origin ticket_key_file_origin;
};

enum conf_verify_client { VERIFY_CLIENT_NONE, VERIFY_CLIENT_OPTIONAL, VERIFY_CLIENT_REQUIRE };
enum conf_proxy_protocol { PROXY_PROTOCOL_OFF, PROXY_PROTOCOL_V1, PROXY_PROTOCOL_V2 };

struct conf_frontend {
    char *listen_text;
    struct addr listen;
    char *backend_text;
    struct addr backend;
    enum conf_proxy_protocol proxy_protocol;
    bool proxy_crc; /* PP2_TYPE_CRC32C in the v2 header */
    bool accept_proxy;
    struct conf_cert *certs;
    size_t ncerts;
    unsigned char *alpn_wire; /* ALPN protocol list in wire format (length-prefixed) */
    size_t alpn_wire_len;
    char *client_ca;
    char *crl; /* "" when none */
    enum conf_verify_client verify_client;
    bool sni_strict; /* refuse a missing or unknown server name instead of the default */
    struct conf_tls tls;
    struct conf_origin origin, client_ca_origin, crl_origin;
};

struct conf {
    char *path;
    char *dir;
    char **included; /* names of @include'd files, for origins */
    size_t nincluded;

    unsigned workers;
    bool daemon;
    char *pidfile;
    char *user;
    char *group;
    char *chroot;
    enum log_level log_level;
    bool syslog;
    int syslog_facility;
    char *log_file;
    bool log_connections;
    char *stats_file;

    unsigned handshake_permits;
    double handshake_timeout;
    double backend_connect_timeout;
    double idle_timeout;
    double close_timeout;
    double drain_timeout;
    unsigned max_connections;
    unsigned backlog; /* 0: the system's somaxconn */
    double heartbeat_interval;
    double watchdog_timeout;
    bool spin_guard;
    unsigned spin_guard_threshold; /* spurious wake-ups per second that make a worker suspect */

    struct conf_tls tls;
    struct conf_frontend *frontends;
    size_t nfrontends;
};

/* Parse and validate FILE. NULL on error, with "FILE:LINE: message" in err. */
struct conf *conf_load(const char *path, char *err, size_t errsize);
void conf_free(struct conf *conf);

#endif
