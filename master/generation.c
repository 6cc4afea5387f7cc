/*
 * A generation is one config's worth of workers. A reload builds generation g+1 fully
 * before it touches generation g, so a bad certificate or an address that cannot be
 * bound costs nothing but a logged error.
 */
#include "config.h"

#include "master/generation.h"

#include <stdio.h>
#include <stdlib.h>

#include "master/tlsctx.h"

static void generation_free_frontends(struct master *m, struct generation *gen)
{
    for (size_t i = 0; gen->frontends != NULL && i < gen->nfrontends; i++) {
        struct frontend *fe = &gen->frontends[i];
        SSL_CTX_free(fe->ctx);
        for (unsigned s = 0; fe->listen_fds != NULL && s < gen->nslots; s++)
            if (fe->listen_fds[s] >= 0)
                listen_release(&m->sockets, fe->listen_fds[s]);
        free(fe->listen_fds);
    }
    free(gen->frontends);
    gen->frontends = NULL;
}

static int generation_build_frontend(struct master *m, struct generation *gen, size_t i,
                                     int backlog, char *err, size_t errsize, bool *socket_failed)
{
    const struct conf_frontend *conf = &gen->conf->frontends[i];
    struct frontend *fe = &gen->frontends[i];

    fe->conf = conf;
    fe->listen_fds = malloc(gen->nslots * sizeof(*fe->listen_fds));
    if (fe->listen_fds == NULL) {
        snprintf(err, errsize, "out of memory");
        return -1;
    }
    for (unsigned s = 0; s < gen->nslots; s++)
        fe->listen_fds[s] = -1;
    fe->ctx = tlsctx_build(conf, err, errsize);
    if (fe->ctx == NULL)
        return -1;
    for (unsigned s = 0; s < gen->nslots; s++) {
        fe->listen_fds[s] = listen_acquire(&m->sockets, conf, s, backlog, err, errsize);
        if (fe->listen_fds[s] < 0) {
            *socket_failed = true;
            return -1;
        }
    }
    return 0;
}

static void generation_init_procs(struct master *m, struct generation *gen)
{
    for (unsigned s = 0; s < gen->nslots; s++) {
        struct proc *p = &gen->procs[s];
        p->master = m;
        p->gen = gen;
        p->slot = s;
        p->control_fd = -1;
        p->adopted_by = -1;
    }
}

struct generation *generation_build(struct master *m, struct conf *conf, char *err, size_t errsize,
                                    bool *socket_failed)
{
    struct generation *gen = calloc(1, sizeof(*gen));
    bool ignored;

    if (socket_failed == NULL)
        socket_failed = &ignored;
    *socket_failed = false;
    if (gen == NULL) {
        snprintf(err, errsize, "out of memory");
        conf_free(conf);
        return NULL;
    }
    gen->conf = conf;
    gen->nslots = conf->workers;
    gen->nfrontends = conf->nfrontends;
    gen->frontends = calloc(conf->nfrontends, sizeof(*gen->frontends));
    gen->procs = calloc(gen->nslots, sizeof(*gen->procs));
    if (gen->frontends == NULL || gen->procs == NULL) {
        snprintf(err, errsize, "out of memory");
        generation_free(m, gen);
        return NULL;
    }
    generation_init_procs(m, gen);
    int backlog = listen_backlog(conf->backlog);
    for (size_t i = 0; i < gen->nfrontends; i++) {
        if (generation_build_frontend(m, gen, i, backlog, err, errsize, socket_failed) < 0) {
            generation_free(m, gen);
            return NULL;
        }
    }
    return gen;
}

void generation_free(struct master *m, struct generation *gen)
{
    if (gen == NULL)
        return;
    generation_free_frontends(m, gen);
    free(gen->procs);
    conf_free(gen->conf);
    free(gen);
}

bool generation_uses_fd(const struct generation *gen, int fd)
{
    for (size_t i = 0; gen != NULL && i < gen->nfrontends; i++)
        for (unsigned s = 0; s < gen->nslots; s++)
            if (gen->frontends[i].listen_fds[s] == fd)
                return true;
    return false;
}
