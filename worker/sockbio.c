/*
 * A client's socket BIO. OpenSSL's own socket BIO sends every record as it is made, and
 * on loopback or a LAN each send(2) costs a segment, a wake-up of the peer and an ACK: a
 * TLS 1.3 connection that asks for one small response would cost five of them (the
 * server's flight, two tickets, the response, close_notify). Here records made during
 * one wake-up are held and leave together when the step ends (endpoint_flush), so the
 * same exchange costs three, and a download sends four records per segment. TLS 1.3's
 * tickets wait longer still, for the response's segment (endpoint_hold_output): two.
 * OpenSSL's BIO_flush is a no-op here for that reason: the end of the step flushes.
 * Records are held in one scratch buffer per worker, since only one step runs at a time;
 * a connection owns memory only for bytes the kernel would not take at the flush.
 */
#include "config.h"

#include "worker/sockbio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define TLS_RECORD_MAX (16384 + 256) /* plaintext limit plus the largest expansion */
#define SOCKBIO_HOLD_MAX (4 * TLS_RECORD_MAX)

static BIO_METHOD *sockbio_method;
static char *hold_scratch;
static const struct endpoint *hold_scratch_user; /* the endpoint whose step holds it */

static void sockbio_drop_output(struct endpoint *ep)
{
    if (ep->out == hold_scratch)
        hold_scratch_user = NULL;
    else
        free(ep->out);
    ep->out = NULL;
    ep->out_len = ep->out_cap = 0;
}

void sockbio_release(struct endpoint *ep)
{
    sockbio_drop_output(ep);
}

/* Sends held bytes and then data; returns how many of data's bytes left, or -1 (errno). */
static ssize_t sockbio_send(struct endpoint *ep, const char *data, size_t len)
{
    struct iovec iov[2] = {{ep->out, ep->out_len}, {(void *)data, len}};
    struct msghdr msg = {.msg_iov = ep->out_len > 0 ? iov : iov + 1,
                         .msg_iovlen = ep->out_len > 0 ? 2 : 1};
    ssize_t n;

    do
        n = sendmsg(ep->fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    ep->wire_bytes += (size_t)n;
    size_t sent = (size_t)n;
    if (sent < ep->out_len) {
        memmove(ep->out, ep->out + sent, ep->out_len - sent);
        ep->out_len -= sent;
        return 0;
    }
    sent -= ep->out_len;
    sockbio_drop_output(ep);
    return (ssize_t)sent;
}

/* Records held from an earlier step go into this step's scratch, ahead of its own. */
static void sockbio_resume_held(struct endpoint *ep, size_t len)
{
    ep->out_held = false;
    if (hold_scratch == NULL || hold_scratch_user != NULL || ep->out_len + len > SOCKBIO_HOLD_MAX)
        return; /* then sockbio_send sends them and the new record in one sendmsg */
    memcpy(hold_scratch, ep->out, ep->out_len);
    free(ep->out);
    ep->out = hold_scratch;
    ep->out_cap = SOCKBIO_HOLD_MAX;
    hold_scratch_user = ep;
}

/* Append to what this step holds; false when it does not fit (the caller sends instead). */
static bool sockbio_hold(struct endpoint *ep, const char *data, size_t len)
{
    if (ep->out_held)
        sockbio_resume_held(ep, len);
    if (ep->out == NULL) {
        if (hold_scratch == NULL && (hold_scratch = malloc(SOCKBIO_HOLD_MAX)) == NULL)
            return false;
        if (hold_scratch_user != NULL)
            return false;
        hold_scratch_user = ep;
        ep->out = hold_scratch;
        ep->out_cap = SOCKBIO_HOLD_MAX;
    }
    if (ep->out_len + len > ep->out_cap)
        return false;
    memcpy(ep->out + ep->out_len, data, len);
    ep->out_len += len;
    return true;
}

static int sockbio_write(BIO *bio, const char *data, size_t len, size_t *written)
{
    struct endpoint *ep = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (sockbio_hold(ep, data, len)) {
        *written = len;
        return 1;
    }
    ssize_t n = sockbio_send(ep, data, len);
    if (n > 0) {
        *written = (size_t)n;
        return 1;
    }
    /* Nothing of this record went out: OpenSSL offers it again once we say EV_WRITE. */
    if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_write(bio);
    return 0;
}

static int sockbio_read(BIO *bio, char *buf, size_t len, size_t *readbytes)
{
    struct endpoint *ep = BIO_get_data(bio);
    ssize_t n;

    BIO_clear_retry_flags(bio);
    /*
     * The last read emptied the socket and no readiness came since: recv(2) could only say
     * EAGAIN. OpenSSL asks anyway whenever it wants the next record, say right after the
     * ClientHello, whose answer the client is still waiting for. The wait for EV_READ that
     * follows sees any bytes that did come in between, since readiness is level-triggered.
     */
    if (ep->drained) {
        BIO_set_retry_read(bio);
        return 0;
    }
    do
        n = recv(ep->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        ep->wire_bytes += (size_t)n;
        ep->drained = (size_t)n < len;
        *readbytes = (size_t)n;
        return 1;
    }
    ep->drained = n < 0;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        BIO_set_retry_read(bio);
    /* n == 0 with errno 0 is how OpenSSL learns of an unexpected EOF. */
    if (n == 0) {
        ep->eof = true;
        errno = 0;
    }
    return 0;
}

static long sockbio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    struct endpoint *ep = BIO_get_data(bio);

    (void)num;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_WPENDING:
        return (long)ep->out_len;
    case BIO_C_GET_FD:
        if (ptr != NULL)
            *(int *)ptr = ep->fd;
        return ep->fd;
    default:
        return 0;
    }
}

static int sockbio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static BIO_METHOD *sockbio_get_method(void)
{
    if (sockbio_method != NULL)
        return sockbio_method;
    BIO_METHOD *meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sluice socket");
    if (meth == NULL || !BIO_meth_set_write_ex(meth, sockbio_write) ||
        !BIO_meth_set_read_ex(meth, sockbio_read) || !BIO_meth_set_ctrl(meth, sockbio_ctrl) ||
        !BIO_meth_set_create(meth, sockbio_create)) {
        BIO_meth_free(meth);
        return NULL;
    }
    sockbio_method = meth;
    return meth;
}

BIO *sockbio_new(struct endpoint *ep)
{
    BIO_METHOD *meth = sockbio_get_method();
    BIO *bio = meth != NULL ? BIO_new(meth) : NULL;

    if (bio != NULL)
        BIO_set_data(bio, ep);
    return bio;
}

/* What the kernel would not take moves from the scratch to memory of the endpoint's own. */
static bool sockbio_detach(struct endpoint *ep)
{
    if (ep->out != hold_scratch || ep->out_len == 0)
        return true;
    char *own = malloc(ep->out_len);
    if (own == NULL)
        return false;
    memcpy(own, ep->out, ep->out_len);
    hold_scratch_user = NULL;
    ep->out = own;
    ep->out_cap = ep->out_len;
    return true;
}

bool endpoint_hold_output(struct endpoint *ep)
{
    if (!sockbio_detach(ep))
        return false;
    ep->out_held = ep->out_len > 0;
    return true;
}

enum io_status endpoint_release_output(struct endpoint *ep)
{
    ep->out_held = false;
    return endpoint_flush(ep);
}

enum io_status endpoint_flush(struct endpoint *ep)
{
    if (ep->out_held)
        return IO_DONE;
    if (ep->out_len == 0) {
        sockbio_drop_output(ep);
        return IO_DONE;
    }
    if (sockbio_send(ep, NULL, 0) < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        endpoint_failed(ep, "write: %s", strerror(errno));
        return IO_FAIL;
    }
    if (ep->out_len == 0)
        return IO_DONE;
    if (!sockbio_detach(ep)) {
        endpoint_failed(ep, "no memory for %zu unsent bytes", ep->out_len);
        return IO_FAIL;
    }
    return IO_AGAIN;
}
