#ifndef SLUICE_ACCEPT_H
#define SLUICE_ACCEPT_H

struct worker;

int accept_start(struct worker *w);
/* Stop for good (drain): the listening sockets stay open but are no longer watched. */
void accept_stop(struct worker *w);
/* Re-evaluate whether to watch the listening sockets (capacity, backoff, drain). */
void accept_update(struct worker *w);
void accept_free(struct worker *w);

#endif
