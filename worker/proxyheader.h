#ifndef SLUICE_PROXYHEADER_H
#define SLUICE_PROXYHEADER_H

#include <stddef.h>
#include <stdint.h>

struct conn;

/*
 * The PROXY protocol header (haproxy's proxy-protocol.txt) that a frontend with
 * proxy-protocol = "v1" or "v2" sends its backend before any client byte: the client's
 * and the frontend's addresses, and for v2 the TLS facts as TLVs. Writes it into buf and
 * returns its length; 0 when it does not fit in cap bytes (or the frontend sends none).
 */
size_t proxyheader_build(const struct conn *c, void *buf, size_t cap);
/* CRC32c (Castagnoli) of len bytes, as PP2_TYPE_CRC32C wants it. */
uint32_t proxyheader_crc32c(const void *data, size_t len);

#endif
