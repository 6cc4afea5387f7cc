/* Test-only faults; this file is compiled only with --enable-fault-injection. */
#include "config.h"

#include "worker/fault.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

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

void fault_after_ready(struct ev_loop *loop, unsigned slot, unsigned generation)
{
    static ev_timer hang;

    if (!fault_wanted("hang", slot, generation))
        return;
    ev_timer_init(&hang, fault_hang_cb, FAULT_HANG_AFTER, 0);
    ev_timer_start(loop, &hang);
    ev_unref(loop);
}
