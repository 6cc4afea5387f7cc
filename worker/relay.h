#ifndef SLUICE_RELAY_H
#define SLUICE_RELAY_H

struct conn;
struct endpoint;

/* Backend connected: relay both directions. -1 when the connection closed. */
int relay_start(struct conn *c);
/* Readiness on one side. -1 when the connection closed. */
int relay_on_io(struct conn *c, struct endpoint *ep, int revents);
/* Free the relay buffers (at teardown). */
void relay_release(struct conn *c);
/* The first answer is late: send the held client records on their own. -1 if c closed. */
int relay_send_held(struct conn *c);

#endif
