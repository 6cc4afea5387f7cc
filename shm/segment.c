/*
 * The shared segment's life in the master: created before any fork, so every worker
 * inherits the same mapping, and removed at exit.
 */
#include "config.h"

#include "shm/segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct shm_offsets {
    size_t slots, totals, permits, size;
};

static struct shm_offsets shm_layout(void)
{
    struct shm_offsets o;

    o.slots = sizeof(struct shm_header);
    o.totals = o.slots + SHM_SLOTS * sizeof(struct shm_slot);
    o.permits = o.totals + SHM_SLOTS_PER_GENERATION * sizeof(struct shm_worker_totals);
    size_t size = o.permits + SHM_PERMITS_MAX * sizeof(uint32_t);
    long page = sysconf(_SC_PAGESIZE);
    size_t align = page > 0 ? (size_t)page : 4096;
    o.size = (size + align - 1) / align * align;
    return o;
}

static void shm_place(struct shm *shm, void *base, const struct shm_offsets *o)
{
    shm->header = base;
    shm->slots = (struct shm_slot *)((char *)base + o->slots);
    shm->totals = (struct shm_worker_totals *)((char *)base + o->totals);
    shm->permit_cells = (_Atomic uint32_t *)((char *)base + o->permits);
    shm->size = o->size;
}

/* A file created afresh: a reader never sees a previous run's slots. */
static int shm_open_file(const char *path, gid_t gid, size_t size, char *err, size_t errsize)
{
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errsize, "stats-file %s: cannot replace it: %s", path, strerror(errno));
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errsize, "stats-file %s: %s", path, strerror(errno));
        return -1;
    }
    const char *step = NULL;
    if (gid != (gid_t)-1 && fchown(fd, (uid_t)-1, gid) < 0)
        step = "fchown";
    else if (fchmod(fd, 0640) < 0) /* whatever the umask */
        step = "fchmod";
    else if (ftruncate(fd, (off_t)size) < 0)
        step = "ftruncate";
    if (step != NULL) {
        snprintf(err, errsize, "stats-file %s: %s: %s", path, step, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

int64_t shm_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void shm_init_header(struct shm *shm, const struct shm_offsets *o, unsigned permits)
{
    struct shm_header *h = shm->header;

    h->layout_version = SHM_LAYOUT_VERSION;
    h->header_size = sizeof(*h);
    h->slot_size = sizeof(struct shm_slot);
    h->nslots = SHM_SLOTS;
    h->permit_capacity = SHM_PERMITS_MAX;
    h->counters_size = sizeof(struct shm_counters);
    h->totals_count = SHM_SLOTS_PER_GENERATION;
    h->slots_offset = o->slots;
    h->permits_offset = o->permits;
    h->totals_offset = o->totals;
    h->file_size = o->size;
    atomic_store(&h->master_pid, (int32_t)getpid());
    atomic_store(&h->started_ms, shm_now_ms());
    shm_set_permits(shm, permits);
    /* The magic last: a reader that sees it sees a complete header. */
    atomic_thread_fence(memory_order_release);
    h->magic = SHM_MAGIC;
}

int shm_create(struct shm *shm, const char *path, gid_t gid, unsigned permits, char *err,
               size_t errsize)
{
    struct shm_offsets o = shm_layout();
    int fd = -1;

    if (path[0] != '\0' && (fd = shm_open_file(path, gid, o.size, err, errsize)) < 0)
        return -1;
    void *base = mmap(NULL, o.size, PROT_READ | PROT_WRITE,
                      fd >= 0 ? MAP_SHARED : MAP_SHARED | MAP_ANONYMOUS, fd, 0);
    int saved = errno;
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        shm->file_dev = st.st_dev;
        shm->file_ino = st.st_ino;
    }
    if (fd >= 0)
        close(fd); /* the mapping keeps the file; workers must not inherit the fd */
    if (base == MAP_FAILED) {
        snprintf(err, errsize, "stats-file %s: mmap %zu bytes: %s", path[0] ? path : "(anonymous)",
                 o.size, strerror(saved));
        if (path[0] != '\0')
            unlink(path);
        return -1;
    }
    shm_place(shm, base, &o);
    shm_init_header(shm, &o, permits);
    return 0;
}

void shm_destroy(struct shm *shm, const char *path)
{
    if (shm->header == NULL)
        return;
    munmap(shm->header, shm->size);
    shm->header = NULL;
    struct stat st;
    /* After a binary upgrade the name belongs to the new master's file. */
    if (path != NULL && path[0] != '\0' && lstat(path, &st) == 0 && st.st_dev == shm->file_dev &&
        st.st_ino == shm->file_ino)
        unlink(path);
}

int shm_publish(const char *from, const char *to, char *err, size_t errsize)
{
    if (rename(from, to) == 0)
        return 0;
    snprintf(err, errsize, "stats-file: cannot rename %s to %s: %s", from, to, strerror(errno));
    return -1;
}

void shm_slot_begin(struct shm *shm, unsigned slot, unsigned generation)
{
    struct shm_slot *s = &shm->slots[slot];

    atomic_store(&s->generation, generation);
    atomic_store(&s->started_ms, shm_now_ms());
    atomic_store(&s->heartbeat_ms, 0);
    atomic_store(&s->permits_held, 0);
    atomic_store(&s->state, SHM_SLOT_STARTING);
}

void shm_slot_set_pid(struct shm *shm, unsigned slot, pid_t pid)
{
    atomic_store(&shm->slots[slot].pid, (int32_t)pid);
}

void shm_slot_set_state(struct shm *shm, unsigned slot, enum shm_slot_state state)
{
    atomic_store(&shm->slots[slot].state, state);
}

void shm_slot_end(struct shm *shm, unsigned slot)
{
    struct shm_slot *s = &shm->slots[slot];
    _Atomic uint32_t *seq = &shm->header->fold_seq;
    uint32_t before = atomic_load_explicit(seq, memory_order_relaxed);

    /* The seqlock's write side: readers that overlap the fold see seq move and copy again. */
    atomic_store_explicit(seq, before + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    stats_fold(&shm->totals[shm_worker_number(slot)].retired, &s->counters);
    atomic_store(&s->state, SHM_SLOT_FREE);
    atomic_store(&s->pid, 0);
    atomic_store(&s->permits_held, 0);
    atomic_store(&s->active_handshakes, 0);
    atomic_store(&s->active_connections, 0);
    atomic_store_explicit(seq, before + 2, memory_order_release);
}

void shm_count_restart(struct shm *shm, unsigned slot)
{
    atomic_fetch_add(&shm->totals[shm_worker_number(slot)].restarts, 1);
}

static int shm_check_header(const struct shm_header *h, size_t file_size, const char *path,
                            char *err, size_t errsize)
{
    struct shm_offsets o = shm_layout();

    if (h->magic != SHM_MAGIC) {
        snprintf(err, errsize, "%s: not a sluice stats file (no sluice magic number)", path);
        return -1;
    }
    if (h->layout_version != SHM_LAYOUT_VERSION) {
        snprintf(err, errsize,
                 "%s: stats layout version %u, this program reads version %u: use the "
                 "sluicestat of the sluice that wrote it",
                 path, h->layout_version, SHM_LAYOUT_VERSION);
        return -1;
    }
    if (h->header_size != sizeof(*h) || h->slot_size != sizeof(struct shm_slot) ||
        h->nslots != SHM_SLOTS || h->counters_size != sizeof(struct shm_counters) ||
        h->totals_count != SHM_SLOTS_PER_GENERATION || h->slots_offset != o.slots ||
        h->totals_offset != o.totals || h->permits_offset != o.permits || h->file_size != o.size) {
        snprintf(err, errsize, "%s: corrupt stats file (its layout fields do not match version %u)",
                 path, SHM_LAYOUT_VERSION);
        return -1;
    }
    if (file_size < o.size) {
        snprintf(err, errsize, "%s: truncated stats file (%zu bytes, %zu expected)", path,
                 file_size, o.size);
        return -1;
    }
    return 0;
}

static int shm_map_read(int fd, const char *path, size_t size, void **base, char *err,
                        size_t errsize)
{
    *base = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (*base == MAP_FAILED) {
        snprintf(err, errsize, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int shm_open_read(struct shm *shm, const char *path, char *err, size_t errsize)
{
    struct shm_offsets o = shm_layout();
    struct stat st;
    void *base;
    int rc = -1;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0)
        snprintf(err, errsize, "%s: fstat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        snprintf(err, errsize, "%s: not a regular file", path);
    else if ((size_t)st.st_size < sizeof(struct shm_header))
        snprintf(err, errsize, "%s: truncated stats file (%lld bytes, %zu expected)", path,
                 (long long)st.st_size, o.size);
    else if (shm_map_read(fd, path, (size_t)st.st_size, &base, err, errsize) == 0) {
        rc = shm_check_header(base, (size_t)st.st_size, path, err, errsize);
        if (rc == 0) {
            shm_place(shm, base, &o);
            shm->size = (size_t)st.st_size;
        } else
            munmap(base, (size_t)st.st_size);
    }
    close(fd);
    return rc;
}

void shm_close_read(struct shm *shm)
{
    if (shm->header != NULL)
        munmap(shm->header, shm->size);
    shm->header = NULL;
}

void shm_set_permits(struct shm *shm, unsigned permits)
{
    struct shm_header *h = shm->header;

    if (permits > atomic_load(&h->permits_high_water))
        atomic_store(&h->permits_high_water, permits);
    atomic_store(&h->permits_total, permits);
}
