#ifndef SLUICE_PROXYPARSE_H
#define SLUICE_PROXYPARSE_H

/*
 * A PROXY protocol header from a load balancer (haproxy's doc/proxy-protocol.txt), version
 * 1 (a text line) or 2 (binary), read from the bytes a client connection received so far.
 * Pure: no I/O, no allocation, no global state, so a fuzz target can link it alone.
 */
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define PROXYPARSE_V1_MAX 107 /* the longest v1 line, CRLF included, as the spec bounds it */
/*
 * Our bound on a v2 header's address block and TLVs, after its 16 fixed bytes. The spec
 * allows 65535; balancers send the addresses and a few TLVs (haproxy, AWS and GCP send
 * well under 300 bytes), and a header we only skip past should not cost 64 KB a client.
 */
#define PROXYPARSE_V2_MAX_DATA 1024
#define PROXYPARSE_V2_FIXED 16
#define PROXYPARSE_MAX (PROXYPARSE_V2_FIXED + PROXYPARSE_V2_MAX_DATA) /* longest header taken */

enum proxyparse_status {
    PROXYPARSE_NEED_MORE, /* every byte given belongs to the header, which is not complete */
    PROXYPARSE_DONE,      /* the header is the first len bytes; what follows is the client's */
    PROXYPARSE_ERROR,     /* not a valid header: error says why */
};

struct proxyparse_result {
    enum proxyparse_status status;
    unsigned version; /* 1 or 2 once the first byte tells, else 0 */
    /*
     * NEED_MORE: the header has at most `more` bytes still to come (the given bytes plus
     * `more` never exceed PROXYPARSE_MAX); the next `certain` of them surely belong to it
     * and may be read outright. When certain is 0 the end is unknown (a v1 line before its
     * CR): look at what came (MSG_PEEK) and ask again before taking any of it.
     */
    size_t more, certain;
    /* DONE: */
    size_t len;
    bool local; /* keep the connection's own addresses: LOCAL, UNKNOWN, UNSPEC or AF_UNIX */
    struct sockaddr_storage src, dst; /* unless local: the client, and where it connected */
    /* ERROR: printable ASCII, naming the version and what is wrong */
    char error[160];
};

/* Parse the len bytes a connection received so far (len may be 0). */
void proxyparse(const void *data, size_t len, struct proxyparse_result *r);

#endif
