#ifndef SLUICE_GENERATION_H
#define SLUICE_GENERATION_H

#include <stdbool.h>
#include <stddef.h>

#include "master/master.h"

/*
 * Build everything a generation serves with, before any of its workers is forked: TLS
 * contexts (certificates and keys checked) and its slot sockets (reused when already
 * open). Takes ownership of conf. NULL with "FILE:LINE: message" in err; nothing leaks.
 * *socket_failed (when not NULL) tells a socket that could not be opened from a bad
 * certificate or key.
 */
struct generation *generation_build(struct master *m, struct conf *conf, char *err, size_t errsize,
                                    bool *socket_failed);
/* Release the generation's sockets (closing those no other generation uses) and memory. */
void generation_free(struct master *m, struct generation *gen);
/* Whether fd is one of gen's listening sockets. */
bool generation_uses_fd(const struct generation *gen, int fd);

#endif
