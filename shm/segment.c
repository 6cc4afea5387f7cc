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

static size_t shm_layout(size_t *slots_offset, size_t *permits_offset)
{
    *slots_offset = sizeof(struct shm_header);
    *permits_offset = *slots_offset + SHM_SLOTS * sizeof(struct shm_slot);
    size_t size = *permits_offset + SHM_PERMITS_MAX * sizeof(uint32_t);
    long page = sysconf(_SC_PAGESIZE);
    size_t align = page > 0 ? (size_t)page : 4096;
    return (size + align - 1) / align * align;
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

static void shm_init_header(struct shm *shm, size_t slots_offset, size_t permits_offset,
                            unsigned permits)
{
    struct shm_header *h = shm->header;

    h->layout_version = SHM_LAYOUT_VERSION;
    h->header_size = sizeof(*h);
    h->slot_size = sizeof(struct shm_slot);
    h->nslots = SHM_SLOTS;
    h->permit_capacity = SHM_PERMITS_MAX;
    h->slots_offset = slots_offset;
    h->permits_offset = permits_offset;
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
    size_t slots_offset, permits_offset;
    size_t size = shm_layout(&slots_offset, &permits_offset);
    int fd = -1;

    if (path[0] != '\0' && (fd = shm_open_file(path, gid, size, err, errsize)) < 0)
        return -1;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE,
                      fd >= 0 ? MAP_SHARED : MAP_SHARED | MAP_ANONYMOUS, fd, 0);
    int saved = errno;
    if (fd >= 0)
        close(fd); /* the mapping keeps the file; workers must not inherit the fd */
    if (base == MAP_FAILED) {
        snprintf(err, errsize, "stats-file %s: mmap %zu bytes: %s", path[0] ? path : "(anonymous)",
                 size, strerror(saved));
        if (path[0] != '\0')
            unlink(path);
        return -1;
    }
    shm->header = base;
    shm->slots = (struct shm_slot *)((char *)base + slots_offset);
    shm->permit_cells = (_Atomic uint32_t *)((char *)base + permits_offset);
    shm->size = size;
    shm_init_header(shm, slots_offset, permits_offset, permits);
    return 0;
}

void shm_destroy(struct shm *shm, const char *path)
{
    if (shm->header == NULL)
        return;
    munmap(shm->header, shm->size);
    shm->header = NULL;
    if (path != NULL && path[0] != '\0')
        unlink(path);
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

    atomic_store(&s->state, SHM_SLOT_FREE);
    atomic_store(&s->pid, 0);
    atomic_store(&s->permits_held, 0);
}

void shm_set_permits(struct shm *shm, unsigned permits)
{
    struct shm_header *h = shm->header;

    if (permits > atomic_load(&h->permits_high_water))
        atomic_store(&h->permits_high_water, permits);
    atomic_store(&h->permits_total, permits);
}
