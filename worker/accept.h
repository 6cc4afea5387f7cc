#ifndef SLUICE_ACCEPT_H
#define SLUICE_ACCEPT_H

struct worker;

/* Start accepting on the worker's own slot. */
int accept_start(struct worker *w);
/* Also accept on another slot's sockets while that slot's worker is down, or stop. */
void accept_adopt(struct worker *w, unsigned slot);
void accept_release(struct worker *w, unsigned slot);
/* Accept what the kernel has queued on the sockets watched now (before a drain). */
void accept_take_queued(struct worker *w);
/* Stop for good (drain): the listening sockets stay open but are no longer watched. */
void accept_stop(struct worker *w);
/* Re-evaluate whether to watch the listening sockets (capacity, backoff, drain). */
void accept_update(struct worker *w);
void accept_free(struct worker *w);

#endif
