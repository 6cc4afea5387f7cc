/*
 * Workers never run as root unless told to: started as root without user/group, they
 * become nobody/nogroup. The master keeps root to bind sockets and read keys on reload.
 */
#include "config.h"

#include "master/privileges.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/log.h"

#define DEFAULT_USER "nobody"
#define DEFAULT_GROUP "nogroup"

static int privileges_group(const struct conf *conf, const struct passwd *pw, gid_t *gid, char *err,
                            size_t errsize)
{
    const char *name = conf->group;

    if (name == NULL && conf->user != NULL) {
        *gid = pw->pw_gid;
        return 0;
    }
    if (name == NULL)
        name = DEFAULT_GROUP;
    struct group *gr = getgrnam(name);
    if (gr == NULL) {
        snprintf(err, errsize, "%s: group \"%s\" does not exist%s", conf->path, name,
                 conf->group == NULL ? " (the default for workers started as root; set group)"
                                     : "");
        return -1;
    }
    *gid = gr->gr_gid;
    return 0;
}

static int privileges_chroot(const struct conf *conf, struct privileges *priv, char *err,
                             size_t errsize)
{
    struct stat st;

    if (conf->chroot == NULL || conf->chroot[0] == '\0')
        return 0;
    if (geteuid() != 0) {
        snprintf(err, errsize, "%s: chroot \"%s\" needs sluice to start as root", conf->path,
                 conf->chroot);
        return -1;
    }
    if (stat(conf->chroot, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errsize, "%s: chroot \"%s\": %s", conf->path, conf->chroot,
                 errno != 0 && !S_ISDIR(st.st_mode) ? strerror(errno) : "not a folder");
        return -1;
    }
    priv->chroot = strdup(conf->chroot);
    if (priv->chroot == NULL) {
        snprintf(err, errsize, "out of memory");
        return -1;
    }
    return 0;
}

int privileges_resolve(const struct conf *conf, struct privileges *priv, char *err, size_t errsize)
{
    *priv = (struct privileges){.drop = false};
    if (privileges_chroot(conf, priv, err, errsize) < 0)
        return -1;
    if (geteuid() != 0) {
        struct passwd *self = getpwuid(geteuid());
        if (conf->user != NULL && (self == NULL || strcmp(self->pw_name, conf->user) != 0))
            log_warning("user \"%s\" ignored: sluice was not started as root, so workers keep "
                        "its identity",
                        conf->user);
        return 0;
    }
    const char *user = conf->user != NULL ? conf->user : DEFAULT_USER;
    struct passwd *pw = getpwnam(user);
    if (pw == NULL) {
        snprintf(err, errsize, "%s: user \"%s\" does not exist%s", conf->path, user,
                 conf->user == NULL ? " (the default for workers started as root; set user)" : "");
        privileges_free(priv);
        return -1;
    }
    priv->uid = pw->pw_uid;
    snprintf(priv->user, sizeof(priv->user), "%s", user);
    if (privileges_group(conf, pw, &priv->gid, err, errsize) < 0) {
        privileges_free(priv);
        return -1;
    }
    priv->drop = priv->uid != 0 || priv->gid != 0;
    return 0;
}

int privileges_drop(const struct privileges *priv, char *err, size_t errsize)
{
    const char *step = NULL;

    if (priv->chroot != NULL && (chroot(priv->chroot) < 0 || chdir("/") < 0))
        step = "chroot";
    else if (priv->drop && setgroups(1, &priv->gid) < 0)
        step = "setgroups";
    else if (priv->drop && setgid(priv->gid) < 0)
        step = "setgid";
    else if (priv->drop && setuid(priv->uid) < 0)
        step = "setuid";
    if (step != NULL) {
        snprintf(err, errsize, "%s: %s", step, strerror(errno));
        return -1;
    }
    /* Paranoia that costs nothing: a drop that can be undone did not happen. */
    if (priv->drop && priv->uid != 0 && setuid(0) == 0) {
        snprintf(err, errsize, "setuid: root could be regained after dropping to %s", priv->user);
        return -1;
    }
    return 0;
}

void privileges_free(struct privileges *priv)
{
    free(priv->chroot);
    priv->chroot = NULL;
}
