#ifndef SLUICE_BACKEND_H
#define SLUICE_BACKEND_H

struct conn;

/* Start the nonblocking connect to the frontend's backend. -1 when the connection closed. */
int backend_connect(struct conn *c);
/* The backend socket became writable while connecting. -1 when the connection closed. */
int backend_connected(struct conn *c);

#endif
