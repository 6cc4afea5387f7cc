#ifndef SLUICE_PERMIT_H
#define SLUICE_PERMIT_H

/*
 * A worker's side of the handshake permits: a connection takes one when its ClientHello
 * is in and gives it back when the handshake ends; without a free one it is parked (no
 * watcher, its deadline still running) and resumed in arrival order when one frees.
 */
#include <stdbool.h>

struct conn;
struct worker;

void permit_init(struct worker *w);
/* True when c holds a permit now; false when it was parked instead. */
bool permit_acquire(struct conn *c);
/* Give back c's permit, or take it out of the queue; safe to call for any connection. */
void permit_release(struct conn *c);
void permit_stop(struct worker *w);

#endif
