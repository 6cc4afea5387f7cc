#ifndef SLUICE_PIDFILE_H
#define SLUICE_PIDFILE_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Opens and flock()s path. Returns the fd (the lock lasts while any process holds the
 * open file description: a forked child shares it, so workers must close it), or -1
 * with "PATH: already running as pid N" (or another "PATH: reason") in err. A pidfile
 * left by a dead process is not locked and is simply taken over.
 */
int pidfile_acquire(const char *path, char *err, size_t errsize);
/* Replaces the content with "PID\n" of the caller (call it after daemon_detach). -1
 * with the reason (without the path) in err. */
int pidfile_write(int fd, char *err, size_t errsize);
/* Whether fd is still the file named path (a binary upgrade inherits fd). */
bool pidfile_is_linked(int fd, const char *path);
/* Unlinks path, then closes fd (so the lock is released last); only the owner calls it. */
void pidfile_remove(const char *path, int fd);

#endif
