#include "config.h"

#include "worker/transport.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/log.h"

#define DISCARD_MAX (64 * 1024)

static size_t transport_clamp(size_t len)
{
    return len > INT_MAX ? INT_MAX : len;
}

static enum io_status tls_status(struct endpoint *ep, int rc, const char *op, int *want)
{
    int saved_errno = errno;
    int err = SSL_get_error(ep->ssl, rc);
    char reasons[128];

    switch (err) {
    case SSL_ERROR_WANT_READ:
        *want = EV_READ;
        return IO_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        *want = EV_WRITE;
        return IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return IO_EOF;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && saved_errno == 0)
            return IO_EOF;
        endpoint_failed(ep, "%s: %s", op,
                        ERR_peek_error() != 0 ? log_ssl_reasons(reasons, sizeof(reasons))
                                              : strerror(saved_errno));
        return IO_FAIL;
    default:
        endpoint_failed(ep, "%s: %s", op, log_ssl_reasons(reasons, sizeof(reasons)));
        return IO_FAIL;
    }
}

static enum io_status tls_read(struct endpoint *ep, char *buf, size_t len, size_t *n, int *want)
{
    ERR_clear_error();
    errno = 0;
    int rc = SSL_read(ep->ssl, buf, (int)transport_clamp(len));
    if (rc > 0) {
        *n = (size_t)rc;
        *want = ep->drained && !SSL_has_pending(ep->ssl) ? EV_READ : 0;
        return IO_DONE;
    }
    return tls_status(ep, rc, "TLS read", want);
}

static enum io_status tls_write(struct endpoint *ep, const char *buf, size_t len, size_t *n,
                                int *want)
{
    ERR_clear_error();
    errno = 0;
    int rc = SSL_write(ep->ssl, buf, (int)transport_clamp(len));
    if (rc > 0) {
        *n = (size_t)rc;
        *want = 0;
        return IO_DONE;
    }
    return tls_status(ep, rc, "TLS write", want);
}

static enum io_status tls_shutdown(struct endpoint *ep, int *want)
{
    ERR_clear_error();
    errno = 0;
    int rc = SSL_shutdown(ep->ssl);
    /* 0: our close_notify is out and the peer's has not come yet; that ends our side. */
    if (rc >= 0)
        return IO_DONE;
    enum io_status status = tls_status(ep, rc, "TLS shutdown", want);
    return status == IO_EOF ? IO_DONE : status;
}

static enum io_status plain_read(struct endpoint *ep, char *buf, size_t len, size_t *n, int *want)
{
    for (;;) {
        ssize_t rc = recv(ep->fd, buf, len, 0);
        if (rc > 0) {
            ep->wire_bytes += (size_t)rc;
            ep->drained = (size_t)rc < len;
            /*
             * A short read emptied the socket. Read again all the same, until such a read
             * has once found nothing: a backend that answers and closes sends its EOF
             * right behind the answer, and catching it now lets the response and the
             * close_notify leave in one segment. A backend that stays open between
             * answers would make that read an EAGAIN on every answer.
             */
            *n = (size_t)rc;
            *want = ep->drained && ep->pauses_open ? EV_READ : 0;
            return IO_DONE;
        }
        if (rc == 0) {
            ep->eof = true;
            return IO_EOF;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            ep->pauses_open |= ep->drained;
            *want = EV_READ;
            return IO_AGAIN;
        }
        endpoint_failed(ep, "read: %s", strerror(errno));
        return IO_FAIL;
    }
}

static enum io_status plain_write(struct endpoint *ep, const char *buf, size_t len, size_t *n,
                                  int *want)
{
    for (;;) {
        ssize_t rc = send(ep->fd, buf, len, MSG_NOSIGNAL);
        if (rc >= 0) {
            ep->wire_bytes += (size_t)rc;
            *n = (size_t)rc;
            /* Short: the socket buffer is full, and a second write would only say EAGAIN. */
            *want = (size_t)rc < len ? EV_WRITE : 0;
            return IO_DONE;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *want = EV_WRITE;
            return IO_AGAIN;
        }
        endpoint_failed(ep, "write: %s", strerror(errno));
        return IO_FAIL;
    }
}

static enum io_status plain_shutdown(struct endpoint *ep, int *want)
{
    (void)want;
    /* ENOTCONN: the peer is gone already, so there is no one left to tell. */
    if (shutdown(ep->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        endpoint_failed(ep, "shutdown: %s", strerror(errno));
        return IO_FAIL;
    }
    return IO_DONE;
}

void endpoint_failed(struct endpoint *ep, const char *fmt, ...)
{
    static char failure[160];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(failure, sizeof(failure), fmt, ap);
    va_end(ap);
    ep->why = failure;
}

const struct transport transport_tls = {tls_read, tls_write, tls_shutdown};
const struct transport transport_plain = {plain_read, plain_write, plain_shutdown};

unsigned long long endpoint_io_bytes(const struct endpoint *ep)
{
    return ep->wire_bytes;
}

void endpoint_discard_input(const struct endpoint *ep)
{
    char sink[4096];
    size_t total = 0;

    /* After the end of its stream a peer can send nothing more: no read to pay for. */
    while (!ep->eof && total < DISCARD_MAX) {
        ssize_t rc = recv(ep->fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (rc > 0)
            total += (size_t)rc;
        else if (rc < 0 && errno == EINTR)
            continue;
        else
            return;
    }
}
