#ifndef SLUICE_DAEMON_H
#define SLUICE_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Forks into the background. The calling process stays in the foreground until the
 * daemon calls daemon_ready (then exits 0) or dies first (then exits 2; the daemon has
 * printed its error on the shared stderr). Returns 0 in the daemon (new session, cwd /,
 * umask 027, stdin /dev/null, stdout and stderr still the caller's), or -1 with the
 * reason in err when even the fork failed (still in the foreground process).
 */
int daemon_detach(char *err, size_t errsize);
/*
 * In the daemon once it serves: lets the foreground process exit 0, then daemon_quiet.
 * No-op when not detached, and in any process but the one daemon_detach returned in.
 */
void daemon_ready(void);
/*
 * When detached: stdout and stderr to /dev/null (a copy of stdin, so this works after a
 * chroot) and no more logging to stderr. No-op otherwise. For workers, once ready.
 */
void daemon_quiet(void);
/*
 * A new master started by a binary upgrade (USR2): ready_fd is its channel to the
 * previous master, which daemon_ready answers with 'R'; stderr is a pipe the previous
 * master reads until then, and stderr_fd the descriptor to give stderr back to.
 * detached: the previous master was a daemon (stdout and stderr are /dev/null).
 */
void daemon_adopt_channel(int ready_fd, int stderr_fd, bool detached);
/* Whether this process runs detached (daemon_detach, or adopted from a daemon). */
bool daemon_is_detached(void);
/* The daemon's end of the readiness channel (-1 if none): close it in every forked
 * child, or a child outliving a master that died before ready keeps the caller waiting. */
int daemon_pipe_fd(void);

#endif
