#ifndef SLUICE_ADDR_H
#define SLUICE_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct addr {
    struct sockaddr_storage sa;
    socklen_t len;
    bool any_dual_stack; /* "*:PORT": IPv6 any with V6ONLY off, IPv4 when IPv6 is absent */
};

/* Parse "HOST:PORT", "[V6]:PORT" or "*:PORT" (when allow_any). 0, or -1 with why set. */
int addr_parse_inet(const char *text, bool allow_any, struct addr *out, char *why, size_t whysize);
/* Parse an absolute Unix socket path. */
int addr_parse_unix(const char *path, struct addr *out, char *why, size_t whysize);
/* Whether two listen addresses cannot both be bound: same port, and one covers the other. */
bool addr_listen_conflict(const struct addr *a, const struct addr *b);
/* "1.2.3.4:5", "[::1]:5" or "unix:/path" */
void addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t size);

#endif
