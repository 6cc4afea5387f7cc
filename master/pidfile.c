/*
 * The pidfile is also the "one sluice per pidfile" lock: flock(2) rather than reading
 * the pid and probing it with kill(2), which a recycled pid fools. The kernel drops the
 * lock when the last holder dies, so a crash never leaves a file that blocks a restart.
 */
#include "config.h"

#include "master/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/log.h"

/* Enough tries to get past an owner unlinking the file while we lock it. */
#define PIDFILE_TRIES 5

/* The pid the file holds, or 0 when its content is not a pid (yet). */
static long pidfile_read_pid(int fd)
{
    char buf[32], *end;
    ssize_t n;

    do
        n = pread(fd, buf, sizeof(buf) - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    errno = 0;
    long pid = strtol(buf, &end, 10);
    if (errno != 0 || end == buf || (*end != '\n' && *end != '\0') || pid <= 0)
        return 0;
    return pid;
}

static void pidfile_busy(int fd, const char *path, char *err, size_t errsize)
{
    long pid = pidfile_read_pid(fd);

    if (pid > 0)
        snprintf(err, errsize, "%s: already running as pid %ld", path, pid);
    else
        snprintf(err, errsize, "%s: locked by another process", path);
}

/*
 * An owner exiting unlinks the file and then releases its lock, so we may have locked an
 * inode that no longer has a name, while a third process creates and locks a new one.
 */
bool pidfile_is_linked(int fd, const char *path)
{
    struct stat by_fd, by_path;

    if (fstat(fd, &by_fd) < 0 || lstat(path, &by_path) < 0)
        return false;
    return by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

static int pidfile_open(const char *path, char *err, size_t errsize)
{
    struct stat st;
    int fd;

    do
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errsize, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    return fd;
}

/* 1 when locked, 0 when another process holds it (err is set), -1 on error. */
static int pidfile_lock(int fd, const char *path, char *err, size_t errsize)
{
    int rc;

    do
        rc = flock(fd, LOCK_EX | LOCK_NB);
    while (rc < 0 && errno == EINTR);
    if (rc == 0)
        return 1;
    if (errno == EWOULDBLOCK) {
        pidfile_busy(fd, path, err, errsize);
        return 0;
    }
    snprintf(err, errsize, "%s: cannot lock: %s", path, strerror(errno));
    return -1;
}

int pidfile_acquire(const char *path, char *err, size_t errsize)
{
    for (int try = 0; try < PIDFILE_TRIES; try++) {
        int fd = pidfile_open(path, err, errsize);
        if (fd < 0)
            return -1;
        int locked = pidfile_lock(fd, path, err, errsize);
        if (locked == 1 && pidfile_is_linked(fd, path))
            return fd;
        close(fd);
        if (locked <= 0)
            return -1;
    }
    snprintf(err, errsize, "%s: keeps being replaced by another process", path);
    return -1;
}

int pidfile_write(int fd, char *err, size_t errsize)
{
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    size_t done = 0;

    if (ftruncate(fd, 0) < 0) {
        snprintf(err, errsize, "ftruncate: %s", strerror(errno));
        return -1;
    }
    while (done < (size_t)len) {
        ssize_t n = pwrite(fd, buf + done, (size_t)len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errsize, "write: %s", n < 0 ? strerror(errno) : "no progress");
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

void pidfile_remove(const char *path, int fd)
{
    if (fd < 0)
        return;
    /*
     * Unlink first, unlock last: a starter that opened the file before the unlink then
     * locks a nameless inode, which pidfile_is_linked notices.
     */
    if (unlink(path) < 0 && errno != ENOENT)
        log_errno(LOG_LEVEL_WARNING, "cannot remove %s", path);
    close(fd);
}
