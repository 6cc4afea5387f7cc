/*
 * Fuzz target: the PROXY protocol parser (worker/proxyparse.c) behind accept-proxy.
 *
 * The input is what a client connection receives: a header, maybe, and the bytes after
 * it. It is parsed whole, and then read the way worker/proxyread.c reads a socket (take
 * `certain` bytes outright, else peek and take the header's part) while the bytes arrive
 * all at once, one at a time, and in pieces whose sizes come from the input. Every
 * answer is checked against the whole input's: a DONE is never longer than the bytes
 * given and always the same header; a NEED_MORE never lets the reader take a byte past
 * the header's end and bounds it correctly; an ERROR is final; and the reader, however
 * the bytes arrive, ends with the same verdict and exactly the header taken.
 */
#include "config.h"

#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>

#include "t/fuzz/fuzz.h"
#include "worker/proxyparse.h"

enum split { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_PIECES };

/* How many bytes arrive next, by the plan; pieces of 1..64 from a generator the input seeds. */
struct arrivals {
    enum split split;
    uint64_t state;
};

static size_t arrivals_next(struct arrivals *a, size_t left)
{
    size_t n = left;

    if (a->split == SPLIT_BYTES) {
        n = 1;
    } else if (a->split == SPLIT_PIECES) {
        a->state ^= a->state << 13; /* xorshift64 */
        a->state ^= a->state >> 7;
        a->state ^= a->state << 17;
        n = 1 + (size_t)(a->state % 64);
    }
    return n < left ? n : left;
}

static uint64_t input_hash(const uint8_t *data, size_t size)
{
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a; never 0 after the xor below */

    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 0x100000001b3u;
    return h | 1;
}

static bool error_printable(const struct proxyparse_result *r)
{
    const char *end = memchr(r->error, '\0', sizeof(r->error));

    if (end == NULL || end == r->error)
        return false;
    for (const char *c = r->error; c < end; c++)
        if (*c < 0x20 || *c > 0x7e)
            return false;
    return true;
}

static bool same_header(const struct proxyparse_result *a, const struct proxyparse_result *b)
{
    return a->len == b->len && a->version == b->version && a->local == b->local &&
           memcmp(&a->src, &b->src, sizeof(a->src)) == 0 &&
           memcmp(&a->dst, &b->dst, sizeof(a->dst)) == 0;
}

/* What any answer about n bytes must satisfy on its own. */
static void check_alone(const struct proxyparse_result *r, size_t n)
{
    FUZZ_CHECK(r->version <= 2, "version %u after %zu bytes", r->version, n);
    switch (r->status) {
    case PROXYPARSE_NEED_MORE:
        FUZZ_CHECK(r->more > 0 && r->certain <= r->more, "more %zu certain %zu", r->more,
                   r->certain);
        FUZZ_CHECK(n + r->more <= PROXYPARSE_MAX, "%zu bytes + more %zu > %d", n, r->more,
                   PROXYPARSE_MAX);
        break;
    case PROXYPARSE_DONE:
        FUZZ_CHECK(r->len > 0 && r->len <= n, "header of %zu bytes in %zu", r->len, n);
        FUZZ_CHECK(r->version == 2 ? r->len <= PROXYPARSE_MAX : r->len <= PROXYPARSE_V1_MAX,
                   "v%u header of %zu bytes", r->version, r->len);
        FUZZ_CHECK(r->version == 1 || r->version == 2, "DONE with version %u", r->version);
        FUZZ_CHECK(r->local || ((r->src.ss_family == AF_INET || r->src.ss_family == AF_INET6) &&
                                r->dst.ss_family == r->src.ss_family),
                   "addresses of families %d and %d", r->src.ss_family, r->dst.ss_family);
        break;
    case PROXYPARSE_ERROR:
        FUZZ_CHECK(error_printable(r), "error message not printable ASCII");
        break;
    default:
        FUZZ_CHECK(false, "status %d", (int)r->status);
    }
}

/* An answer about the first n bytes against the answer about all `size` of them. */
static void check_prefix(const struct proxyparse_result *r, size_t n,
                         const struct proxyparse_result *whole, size_t size)
{
    check_alone(r, n);
    if (whole->status == PROXYPARSE_DONE && n < whole->len) {
        FUZZ_CHECK(r->status == PROXYPARSE_NEED_MORE, "status %d at %zu of a %zu-byte header",
                   (int)r->status, n, whole->len);
        FUZZ_CHECK(n + r->certain <= whole->len, "certain %zu at %zu reads past a %zu-byte header",
                   r->certain, n, whole->len);
        FUZZ_CHECK(n + r->more >= whole->len, "more %zu at %zu short of a %zu-byte header", r->more,
                   n, whole->len);
    } else if (whole->status == PROXYPARSE_DONE) {
        FUZZ_CHECK(r->status == PROXYPARSE_DONE && same_header(r, whole),
                   "status %d at %zu, not the %zu-byte header of the whole", (int)r->status, n,
                   whole->len);
    } else if (whole->status == PROXYPARSE_NEED_MORE) {
        FUZZ_CHECK(r->status == PROXYPARSE_NEED_MORE, "status %d at %zu, NEED_MORE at %zu",
                   (int)r->status, n, size);
        FUZZ_CHECK(n + r->more >= size, "more %zu at %zu, yet all %zu bytes are header", r->more, n,
                   size);
        FUZZ_CHECK(n + r->certain <= size + whole->more, "certain %zu at %zu past the bound %zu",
                   r->certain, n, size + whole->more);
    } else {
        FUZZ_CHECK(r->status != PROXYPARSE_DONE, "DONE at %zu, ERROR at %zu", n, size);
    }
    if (r->status == PROXYPARSE_ERROR)
        FUZZ_CHECK(whole->status == PROXYPARSE_ERROR, "ERROR at %zu cured at %zu", n, size);
}

/* worker/proxyread.c's loop, with the bytes arriving by plan; the final answer in *r. */
static size_t read_like_worker(const uint8_t *data, size_t size, struct arrivals *a,
                               const struct proxyparse_result *whole, struct proxyparse_result *r)
{
    size_t arrived = arrivals_next(a, size), have = 0;

    for (;;) {
        proxyparse(data, have, r);
        check_prefix(r, have, whole, size);
        if (r->status != PROXYPARSE_NEED_MORE)
            return have;
        size_t avail = arrived - have;
        if (avail == 0) {
            if (arrived == size)
                return have;
            arrived += arrivals_next(a, size - arrived);
            continue;
        }
        if (r->certain > 0) {
            have += r->certain < avail ? r->certain : avail;
            continue;
        }
        struct proxyparse_result peek;
        size_t seen = r->more < avail ? r->more : avail;
        proxyparse(data, have + seen, &peek);
        check_prefix(&peek, have + seen, whole, size);
        size_t header = peek.status == PROXYPARSE_DONE ? peek.len - have : seen;
        FUZZ_CHECK(header > 0 && header <= seen, "takes %zu of %zu peeked bytes", header, seen);
        have += header;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxyparse_result whole, r;

    proxyparse(data, size, &whole);
    check_alone(&whole, size);
    for (enum split s = SPLIT_WHOLE; s <= SPLIT_PIECES; s++) {
        struct arrivals a = {s, input_hash(data, size)};
        size_t have = read_like_worker(data, size, &a, &whole, &r);
        FUZZ_CHECK(r.status == whole.status, "split %d ends with %d, whole with %d", (int)s,
                   (int)r.status, (int)whole.status);
        if (whole.status == PROXYPARSE_DONE)
            FUZZ_CHECK(have == whole.len, "split %d took %zu of a %zu-byte header", (int)s, have,
                       whole.len);
        else if (whole.status == PROXYPARSE_NEED_MORE)
            FUZZ_CHECK(have == size, "split %d took %zu of %zu header bytes", (int)s, have, size);
    }
    return 0;
}
