#ifndef SLUICE_SOCKBIO_H
#define SLUICE_SOCKBIO_H

#include <openssl/bio.h>
#include <stdbool.h>

#include "worker/transport.h"

/*
 * The BIO between a client's SSL and its socket. It counts the bytes that really cross
 * the socket, remembers whether the last read drained it, and holds the records of one
 * wake-up until endpoint_flush: a handshake's session tickets, a response and its
 * close_notify, or up to four full records of a download leave in one send(2).
 */
BIO *sockbio_new(struct endpoint *ep);
/* Free the held records (at teardown). */
void sockbio_release(struct endpoint *ep);

/* Send what the endpoint holds. IO_DONE when nothing is left, IO_AGAIN to wait for EV_WRITE. */
enum io_status endpoint_flush(struct endpoint *ep);
static inline bool endpoint_output_pending(const struct endpoint *ep)
{
    return ep->out_len > 0;
}

#endif
