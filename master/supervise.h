#ifndef SLUICE_SUPERVISE_H
#define SLUICE_SUPERVISE_H

#include "master/master.h"

/* Watch for dead and silent workers. */
void supervise_init(struct master *m);
/* Fork a worker into every slot of gen. */
void supervise_start(struct master *m, struct generation *gen);
/* Tell gen's workers to stop accepting and drain; it is freed once the last one exits. */
void supervise_retire(struct master *m, struct generation *gen);
/* TERM/INT (drain) or QUIT (at once): stop every worker; the loop ends when all are gone. */
void supervise_shutdown(struct master *m, bool drain);
/*
 * A binary upgrade's new master serves on the same sockets: close our copies (not
 * holding off SYNs: they are the new master's now) and drain every worker.
 */
void supervise_hand_over(struct master *m);
/* How long a new generation may take to serve every slot. */
double supervise_start_deadline(const struct conf *conf);
/* Hand every worker a new log file descriptor. */
void supervise_send_log_file(struct master *m, int fd);
/* The master was busy (a reload): do not hold its own delay against the workers. */
void supervise_grace(struct master *m);
bool supervise_any_alive(const struct master *m);
void supervise_stop(struct master *m);

#endif
