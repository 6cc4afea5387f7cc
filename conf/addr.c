#include "config.h"

#include "conf/addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

static int addr_parse_port(const char *text, in_port_t *port)
{
    char *end;

    if (*text < '0' || *text > '9')
        return -1;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno != 0 || *end != '\0' || value == 0 || value > 65535)
        return -1;
    *port = htons((in_port_t)value);
    return 0;
}

static int addr_split(const char *text, char *host, size_t hostsize, const char **port, char *why,
                      size_t whysize)
{
    const char *colon;
    size_t hostlen;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(why, whysize, "\"%s\": expected \"[IPV6]:PORT\"", text);
            return -1;
        }
        hostlen = (size_t)(close - text - 1);
        text++;
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL || strchr(text, ':') != colon) {
            snprintf(why, whysize, "\"%s\": expected \"HOST:PORT\" (IPv6 as \"[ADDR]:PORT\")",
                     text);
            return -1;
        }
        hostlen = (size_t)(colon - text);
    }
    if (hostlen == 0 || hostlen >= hostsize) {
        snprintf(why, whysize, "\"%s\": missing or overlong host", text);
        return -1;
    }
    memcpy(host, text, hostlen);
    host[hostlen] = '\0';
    *port = colon + 1;
    return 0;
}

static void addr_set_any(struct addr *out, in_port_t port)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->sa;

    memset(out, 0, sizeof(*out));
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_any;
    sin6->sin6_port = port;
    out->len = sizeof(*sin6);
    out->any_dual_stack = true;
}

static int addr_resolve(const char *host, in_port_t port, struct addr *out, char *why,
                        size_t whysize)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res;

    /* Numeric addresses must not depend on which families are configured right now. */
    struct in6_addr probe;
    if (inet_pton(AF_INET, host, &probe) == 1 || inet_pton(AF_INET6, host, &probe) == 1)
        hints.ai_flags = AI_NUMERICHOST;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        snprintf(why, whysize, "cannot resolve host \"%s\": %s", host, gai_strerror(rc));
        return -1;
    }
    memset(out, 0, sizeof(*out));
    memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    if (out->sa.ss_family == AF_INET)
        ((struct sockaddr_in *)&out->sa)->sin_port = port;
    else
        ((struct sockaddr_in6 *)&out->sa)->sin6_port = port;
    freeaddrinfo(res);
    return 0;
}

int addr_parse_inet(const char *text, bool allow_any, struct addr *out, char *why, size_t whysize)
{
    char host[256];
    const char *porttext;
    in_port_t port;

    if (addr_split(text, host, sizeof(host), &porttext, why, whysize) < 0)
        return -1;
    if (addr_parse_port(porttext, &port) < 0) {
        snprintf(why, whysize, "\"%s\": port must be a number 1..65535", text);
        return -1;
    }
    if (strcmp(host, "*") == 0) {
        if (!allow_any) {
            snprintf(why, whysize, "\"%s\": \"*\" is only valid in listen", text);
            return -1;
        }
        addr_set_any(out, port);
        return 0;
    }
    return addr_resolve(host, port, out, why, whysize);
}

int addr_parse_unix(const char *path, struct addr *out, char *why, size_t whysize)
{
    struct sockaddr_un *sun = (struct sockaddr_un *)&out->sa;
    size_t len = strlen(path);

    if (len == 0 || len >= sizeof(sun->sun_path)) {
        snprintf(why, whysize, "unix socket path \"%s\" must be 1..%zu bytes long", path,
                 sizeof(sun->sun_path) - 1);
        return -1;
    }
    memset(out, 0, sizeof(*out));
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, len + 1);
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    return 0;
}

static in_port_t addr_port(const struct addr *a)
{
    return a->sa.ss_family == AF_INET ? ((const struct sockaddr_in *)&a->sa)->sin_port
                                      : ((const struct sockaddr_in6 *)&a->sa)->sin6_port;
}

static bool addr_is_any(const struct addr *a)
{
    if (a->sa.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->sa)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&a->sa)->sin6_addr);
}

static bool addr_same_host(const struct addr *a, const struct addr *b)
{
    if (a->sa.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->sa)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)&b->sa)->sin_addr.s_addr;
    return IN6_ARE_ADDR_EQUAL(&((const struct sockaddr_in6 *)&a->sa)->sin6_addr,
                              &((const struct sockaddr_in6 *)&b->sa)->sin6_addr);
}

bool addr_listen_conflict(const struct addr *a, const struct addr *b)
{
    if (addr_port(a) != addr_port(b))
        return false;
    if (a->any_dual_stack || b->any_dual_stack)
        return true;
    if (a->sa.ss_family != b->sa.ss_family)
        return false;
    return addr_is_any(a) || addr_is_any(b) || addr_same_host(a, b);
}

void addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];

    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        snprintf(buf, size, "%s:%u", host, ntohs(sin->sin_port));
        return;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        snprintf(buf, size, "[%s]:%u", host, ntohs(sin6->sin6_port));
        return;
    }
    case AF_UNIX: {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
        if (len <= offsetof(struct sockaddr_un, sun_path))
            snprintf(buf, size, "unix:(unnamed)");
        else
            snprintf(buf, size, "unix:%s", sun->sun_path);
        return;
    }
    default:
        snprintf(buf, size, "(family %d)", sa->sa_family);
    }
}
