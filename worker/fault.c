/* Test-only faults; this file is compiled only with --enable-fault-injection. */
#include "config.h"

#include "worker/fault.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "lib/log.h"
#include "worker/conn.h"
#include "worker/worker.h"

#define FAULT_HANG_AFTER 0.5 /* seconds after ready, so the master has seen the worker live */

/* "NAME:SLOT" hits every generation's SLOT, "NAME:SLOT:GENERATION" only that generation's. */
static bool fault_wanted(const char *name, unsigned slot, unsigned generation)
{
    const char *spec = getenv("SLUICE_FAULT");
    char any[64], one[64];

    if (spec == NULL)
        return false;
    snprintf(any, sizeof(any), "%s:%u", name, slot);
    snprintf(one, sizeof(one), "%s:%u:%u", name, slot, generation);
    return strcmp(spec, any) == 0 || strcmp(spec, one) == 0;
}

void fault_at_start(unsigned slot, unsigned generation)
{
    if (fault_wanted("start-exit", slot, generation)) {
        log_warning("fault injection: slot %u exits at start", slot);
        exit(3);
    }
}

static void fault_hang_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    (void)loop;
    (void)timer;
    (void)revents;
    log_warning("fault injection: hanging the loop");
    for (;;)
        ;
}

/* A level-triggered watcher on a readable descriptor nobody reads: the classic spin. */
static void fault_spin_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct worker *w = io->data;

    (void)loop;
    (void)revents;
    stats_add(&w->counters->wakeups, 1);
    stats_add(&w->counters->spurious_wakeups, 1);
}

static void fault_start_spin(struct worker *w)
{
    static ev_io spin;
    int fd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);

    if (fd < 0) {
        log_errno(LOG_LEVEL_ERROR, "fault injection: eventfd");
        return;
    }
    log_warning("fault injection: spinning on an always-readable descriptor");
    ev_io_init(&spin, fault_spin_cb, fd, EV_READ);
    spin.data = w;
    ev_io_start(w->loop, &spin);
    ev_unref(w->loop);
}

void fault_after_ready(struct worker *w)
{
    static ev_timer hang;

    if (fault_wanted("spin", w->spec->slot, w->spec->generation))
        fault_start_spin(w);
    if (!fault_wanted("hang", w->spec->slot, w->spec->generation))
        return;
    ev_timer_init(&hang, fault_hang_cb, FAULT_HANG_AFTER, 0);
    ev_timer_start(w->loop, &hang);
    ev_unref(w->loop);
}

int fault_extra_client_events(const struct conn *c)
{
    const char *sni = SSL_get_servername(c->client.ssl, TLSEXT_NAMETYPE_host_name);

    if (sni == NULL || strcmp(sni, FAULT_SPIN_SNI) != 0 ||
        !fault_wanted("conn-spin", c->worker->spec->slot, c->worker->spec->generation))
        return 0;
    return EV_WRITE;
}
