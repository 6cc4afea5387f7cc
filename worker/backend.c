#include "config.h"

#include "worker/backend.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "worker/conn.h"
#include "worker/relay.h"
#include "worker/sockbio.h"
#include "worker/worker.h"

static int backend_fail(struct conn *c, int err)
{
    /* A Unix listener with a full queue answers EAGAIN: say so, it is not "try again". */
    conn_close(c, END_BACKEND_CONNECT_FAILED, "%s: %s", c->fe->conf->backend_text,
               err == EAGAIN ? "listen queue full" : strerror(err));
    return -1;
}

int backend_connect(struct conn *c)
{
    const struct addr *addr = &c->fe->conf->backend;
    int family = addr->sa.ss_family;

    conn_set_state(c, CONN_CONNECTING);
    /* Made at accept as the descriptor reserve, unless this host could not make one. */
    if (c->backend.fd < 0)
        c->backend.fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->backend.fd < 0)
        return backend_fail(c, errno);
    int fd = c->backend.fd;
    c->backend.ops = &transport_plain;
    if (family != AF_UNIX) {
        int on = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) < 0)
            conn_log(c, LOG_LEVEL_WARNING, "backend TCP_NODELAY: %s", strerror(errno));
    }
    int rc;
    do
        rc = connect(fd, (const struct sockaddr *)&addr->sa, addr->len);
    while (rc < 0 && errno == EINTR && family == AF_UNIX);
    if (rc == 0)
        return relay_start(c);
    /* EINTR on a TCP connect: the handshake goes on in the background, like EINPROGRESS. */
    if (errno != EINPROGRESS && errno != EINTR)
        return backend_fail(c, errno);
    /* No answer can come before the connect does: held session tickets leave now. */
    if (endpoint_release_output(&c->client) == IO_FAIL) {
        conn_close(c, END_CLIENT_ERROR, "%s", c->client.why);
        return -1;
    }
    /* The client waits: what it sends now stays in its socket until the relay starts. */
    conn_watch(c, &c->client, 0);
    conn_watch(c, &c->backend, EV_WRITE);
    return 0;
}

int backend_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->backend.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == EINPROGRESS)
        return 0;
    if (err != 0)
        return backend_fail(c, err);
    conn_watch(c, &c->backend, 0);
    return relay_start(c);
}
