#ifndef SLUICE_SOCKBIO_H
#define SLUICE_SOCKBIO_H

#include <openssl/bio.h>
#include <stdbool.h>

#include "worker/transport.h"

/*
 * The BIO between a client's SSL and its socket. It counts the bytes that really cross
 * the socket, remembers whether the last read drained it, and holds the records of one
 * wake-up until endpoint_flush: a handshake's flight, a response and its close_notify, or
 * up to four full records of a download leave in one send(2). TLS 1.3's session tickets
 * are held longer, to leave with the first response (endpoint_hold_output).
 */
BIO *sockbio_new(struct endpoint *ep);
/* Free the held records (at teardown). */
void sockbio_release(struct endpoint *ep);

/* Send what the endpoint holds. IO_DONE when nothing is left, IO_AGAIN to wait for EV_WRITE. */
enum io_status endpoint_flush(struct endpoint *ep);
/*
 * Keep what this step wrote back from the flushes (out_held) until the next record written
 * joins it, or endpoint_release_output. False when there is no memory to keep it in.
 */
bool endpoint_hold_output(struct endpoint *ep);
/* Stop holding and send: endpoint_flush's results. */
enum io_status endpoint_release_output(struct endpoint *ep);
/* Records wait to be sent (held ones do not count: nothing is to be done for them). */
static inline bool endpoint_output_pending(const struct endpoint *ep)
{
    return ep->out_len > 0 && !ep->out_held;
}

#endif
