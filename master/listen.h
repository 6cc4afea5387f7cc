#ifndef SLUICE_LISTEN_H
#define SLUICE_LISTEN_H

#include <stddef.h>

#include "conf/conf.h"

/* The listen backlog: the configured one, or the system's somaxconn for 0. */
int listen_backlog(unsigned configured);
/* A nonblocking listening socket for fe, or -1 with the reason in err. */
int listen_open(const struct conf_frontend *fe, int backlog, char *err, size_t errsize);

#endif
