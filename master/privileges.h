#ifndef SLUICE_PRIVILEGES_H
#define SLUICE_PRIVILEGES_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "conf/conf.h"

/* Who workers become. Resolved by the master, before any chroot hides /etc/passwd. */
struct privileges {
    bool drop; /* false when the master is not root: workers keep its identity */
    uid_t uid;
    gid_t gid;
    char user[64];
    char *chroot; /* NULL: none */
};

/* Decide from conf (user, group, chroot) and the master's own identity. -1 with err. */
int privileges_resolve(const struct conf *conf, struct privileges *priv, char *err, size_t errsize);
/* In a new worker: chroot, then groups, gid and uid, for good. -1 with err. */
int privileges_drop(const struct privileges *priv, char *err, size_t errsize);
void privileges_free(struct privileges *priv);

#endif
