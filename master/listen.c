/*
 * Listening sockets are the master's: opened before any fork, handed to every worker,
 * and kept open across worker deaths so the connections queued in them are served.
 */
#include "config.h"

#include "master/listen.h"

#include <errno.h>
#include <limits.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"

/* The integer in a /proc/sys file, or fallback if it is missing or holds no int. */
static int listen_read_sysctl(const char *path, int fallback)
{
    char buf[32];
    FILE *f = fopen(path, "r");
    bool have = f != NULL && fgets(buf, sizeof(buf), f) != NULL;
    char *end = buf;
    long value = 0;

    if (f != NULL)
        fclose(f);
    if (have) {
        errno = 0; /* strtol, unlike fscanf, reports a value out of range */
        value = strtol(buf, &end, 10);
    }
    if (!have || end == buf || errno != 0 || value < INT_MIN || value > INT_MAX)
        return fallback;
    return (int)value;
}

int listen_backlog(unsigned configured)
{
    if (configured > 0)
        return (int)configured;
    int somaxconn = listen_read_sysctl("/proc/sys/net/core/somaxconn", SOMAXCONN);
    return somaxconn > 0 ? somaxconn : SOMAXCONN;
}

static int listen_set_options(int fd, const struct addr *addr)
{
    int on = 1;

    /*
     * One socket per worker slot, so the kernel spreads connections over the workers
     * (no thundering herd). A second sluice could join the group as well: the pidfile
     * lock is what keeps it out.
     */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0)
        return -1;
    /* Accepted sockets inherit it, which saves the workers a setsockopt per connection. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) < 0)
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

static int listen_open(const struct conf_frontend *fe, int backlog, char *err, size_t errsize)
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

static bool listen_same_addr(const struct addr *a, const struct addr *b)
{
    return a->len == b->len && a->any_dual_stack == b->any_dual_stack &&
           memcmp(&a->sa, &b->sa, a->len) == 0;
}

static struct listen_socket *listen_find(struct listen_set *set, const struct addr *addr,
                                         unsigned slot)
{
    for (size_t i = 0; i < set->n; i++)
        if (set->v[i].slot == slot && listen_same_addr(&set->v[i].addr, addr))
            return &set->v[i];
    return NULL;
}

static int listen_grow(struct listen_socket **v, size_t n, size_t *cap)
{
    if (n < *cap)
        return 0;
    size_t more = *cap ? *cap * 2 : 8;
    struct listen_socket *grown = realloc(*v, more * sizeof(*grown));
    if (grown == NULL)
        return -1;
    *v = grown;
    *cap = more;
    return 0;
}

static int listen_add(struct listen_set *set, const struct conf_frontend *fe, unsigned slot, int fd,
                      char *err, size_t errsize)
{
    if (listen_grow(&set->v, set->n, &set->cap) < 0) {
        snprintf(err, errsize, "out of memory for listening sockets");
        return -1;
    }
    set->v[set->n++] =
        (struct listen_socket){.addr = fe->listen, .slot = slot, .fd = fd, .refs = 1};
    return 0;
}

static bool listen_is_listening_tcp(int fd)
{
    int type = 0, listening = 0;
    socklen_t len = sizeof(type);

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
        return false;
    len = sizeof(listening);
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
}

int listen_inherit(struct listen_set *set, int fd, unsigned slot, char *err, size_t errsize)
{
    struct listen_socket ls = {.slot = slot, .fd = fd};
    socklen_t len = sizeof(ls.addr.sa);

    if (!listen_is_listening_tcp(fd) || getsockname(fd, (struct sockaddr *)&ls.addr.sa, &len) < 0 ||
        (ls.addr.sa.ss_family != AF_INET && ls.addr.sa.ss_family != AF_INET6)) {
        snprintf(err, errsize, "inherited descriptor %d is not a listening TCP socket", fd);
        return -1;
    }
    ls.addr.len = len;
    if (listen_grow(&set->inherited, set->ninherited, &set->inherited_cap) < 0) {
        snprintf(err, errsize, "out of memory for inherited listening sockets");
        return -1;
    }
    set->inherited[set->ninherited++] = ls;
    return 0;
}

static in_port_t listen_port(const struct sockaddr_storage *sa)
{
    return sa->ss_family == AF_INET ? ((const struct sockaddr_in *)sa)->sin_port
                                    : ((const struct sockaddr_in6 *)sa)->sin6_port;
}

/*
 * The kernel's view of a socket against the configured address. "*:PORT" is IPv6's any
 * address, or IPv4's where listen_socket fell back to it.
 */
static bool listen_bound_to(const struct addr *bound, const struct addr *configured)
{
    const struct sockaddr_storage *b = &bound->sa, *c = &configured->sa;

    if (listen_port(b) != listen_port(c))
        return false;
    if (b->ss_family == AF_INET && c->ss_family == AF_INET)
        return ((const struct sockaddr_in *)b)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)c)->sin_addr.s_addr;
    if (b->ss_family == AF_INET6 && c->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)b)->sin6_addr,
                      &((const struct sockaddr_in6 *)c)->sin6_addr, sizeof(struct in6_addr)) == 0;
    return configured->any_dual_stack && b->ss_family == AF_INET &&
           ((const struct sockaddr_in *)b)->sin_addr.s_addr == htonl(INADDR_ANY);
}

static int listen_take_inherited(struct listen_set *set, const struct addr *addr, unsigned slot)
{
    for (size_t i = 0; i < set->ninherited; i++) {
        if (set->inherited[i].slot != slot || !listen_bound_to(&set->inherited[i].addr, addr))
            continue;
        int fd = set->inherited[i].fd;
        set->inherited[i] = set->inherited[--set->ninherited];
        return fd;
    }
    return -1;
}

void listen_close_inherited(struct listen_set *set)
{
    char where[INET6_ADDRSTRLEN + 8]; /* "[V6]:PORT" */

    for (size_t i = 0; i < set->ninherited; i++) {
        const struct listen_socket *ls = &set->inherited[i];
        addr_format((const struct sockaddr *)&ls->addr.sa, ls->addr.len, where, sizeof(where));
        log_info("upgrade: closing the inherited listener %s of slot %u: not in the config", where,
                 ls->slot);
        if (close(ls->fd) < 0)
            log_errno(LOG_LEVEL_WARNING, "close listening socket");
    }
    free(set->inherited);
    set->inherited = NULL;
    set->ninherited = set->inherited_cap = 0;
}

/* An inherited socket, or a new one: -1 with err. */
static int listen_get(struct listen_set *set, const struct conf_frontend *fe, unsigned slot,
                      int backlog, char *err, size_t errsize)
{
    int fd = listen_take_inherited(set, &fe->listen, slot);

    if (fd < 0)
        return listen_open(fe, backlog, err, errsize);
    if (listen(fd, backlog) < 0)
        log_errno(LOG_LEVEL_WARNING, "listen %s: cannot set backlog %d", fe->listen_text, backlog);
    return fd;
}

int listen_acquire(struct listen_set *set, const struct conf_frontend *fe, unsigned slot,
                   int backlog, char *err, size_t errsize)
{
    struct listen_socket *ls = listen_find(set, &fe->listen, slot);

    if (ls != NULL) {
        /* listen(2) on a listening socket only changes its backlog: a reload may have. */
        if (listen(ls->fd, backlog) < 0)
            log_errno(LOG_LEVEL_WARNING, "listen %s: cannot set backlog %d", fe->listen_text,
                      backlog);
        ls->refs++;
        return ls->fd;
    }
    int fd = listen_get(set, fe, slot, backlog, err, errsize);
    if (fd < 0)
        return -1;
    if (listen_add(set, fe, slot, fd, err, errsize) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void listen_remove(struct listen_set *set, size_t i)
{
    if (close(set->v[i].fd) < 0)
        log_errno(LOG_LEVEL_WARNING, "close listening socket");
    set->v[i] = set->v[--set->n];
}

void listen_release(struct listen_set *set, int fd)
{
    for (size_t i = 0; i < set->n; i++) {
        if (set->v[i].fd == fd) {
            if (--set->v[i].refs == 0)
                listen_remove(set, i);
            return;
        }
    }
}

void listen_close_unless(struct listen_set *set, bool (*keep)(int fd, void *arg), void *arg)
{
    for (size_t i = 0; i < set->n;) {
        if (keep(set->v[i].fd, arg))
            i++;
        else
            listen_remove(set, i);
    }
}

/*
 * Classic BPF on a TCP socket sees the segment from its TCP header on: byte 13 holds the
 * flags. Drop a SYN without ACK (a new connection); keep everything else, so handshakes
 * under way still complete into the queue.
 */
static struct sock_filter listen_syn_filter[] = {
    BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
    BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12), /* SYN | ACK */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, 0),
    BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
};

void listen_drop_syns(struct listen_set *set)
{
    struct sock_fprog prog = {
        .len = sizeof(listen_syn_filter) / sizeof(listen_syn_filter[0]),
        .filter = listen_syn_filter,
    };
    char where[INET6_ADDRSTRLEN + 8]; /* "[V6]:PORT" */

    for (size_t i = 0; i < set->n; i++) {
        if (setsockopt(set->v[i].fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) == 0)
            continue;
        addr_format((const struct sockaddr *)&set->v[i].addr.sa, set->v[i].addr.len, where,
                    sizeof(where));
        log_errno(LOG_LEVEL_WARNING, "listen %s: cannot hold off new connections before closing",
                  where);
    }
}

void listen_close_all(struct listen_set *set)
{
    while (set->n > 0)
        listen_remove(set, set->n - 1);
    for (size_t i = 0; i < set->ninherited; i++)
        close(set->inherited[i].fd);
    free(set->v);
    free(set->inherited);
    *set = (struct listen_set){0};
}

void listen_check_migrate_req(void)
{
    /* Kernels before 5.14 have no such knob: nothing to advise. */
    if (listen_read_sysctl("/proc/sys/net/ipv4/tcp_migrate_req", 1) == 0)
        log_warning("net.ipv4.tcp_migrate_req is 0: when a reload lowers workers or drops a "
                    "frontend, connections still queued on the listeners it closes are reset; "
                    "set it to 1 (see contrib/sluice-sysctl.conf)");
}
