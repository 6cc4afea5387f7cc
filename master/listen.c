#include "config.h"

#include "master/listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int listen_backlog(unsigned configured)
{
    int somaxconn = SOMAXCONN;

    if (configured > 0)
        return (int)configured;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &somaxconn) != 1 || somaxconn <= 0)
            somaxconn = SOMAXCONN;
        fclose(f);
    }
    return somaxconn;
}

static int listen_set_options(int fd, const struct addr *addr)
{
    int on = 1;

    /*
     * No SO_REUSEPORT while one process owns each address: with it, a second sluice
     * started by mistake would bind too and silently take a share of the connections.
     */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0)
        return -1;
    if (addr->sa.ss_family == AF_INET6) {
        int v6only = addr->any_dual_stack ? 0 : 1;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) < 0)
            return -1;
    }
    return 0;
}

/* "*:PORT" on a host without IPv6 falls back to IPv4's any address. */
static int listen_socket(struct addr *addr)
{
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd >= 0 || errno != EAFNOSUPPORT || !addr->any_dual_stack)
        return fd;
    in_port_t port = ((struct sockaddr_in6 *)&addr->sa)->sin6_port;
    struct sockaddr_in *sin = (struct sockaddr_in *)&addr->sa;
    memset(addr, 0, sizeof(*addr));
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_ANY);
    sin->sin_port = port;
    addr->len = sizeof(*sin);
    return socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

int listen_open(const struct conf_frontend *fe, int backlog, char *err, size_t errsize)
{
    struct addr addr = fe->listen;
    const char *step = "socket";
    int fd = listen_socket(&addr);

    if (fd < 0)
        goto fail;
    step = "setsockopt";
    if (listen_set_options(fd, &addr) < 0)
        goto fail;
    step = "bind";
    if (bind(fd, (struct sockaddr *)&addr.sa, addr.len) < 0)
        goto fail;
    step = "listen";
    if (listen(fd, backlog) < 0)
        goto fail;
    return fd;
fail:
    snprintf(err, errsize, "%s:%d: listen %s: %s: %s", fe->origin.file, fe->origin.line,
             fe->listen_text, step, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}
