#ifndef SLUICE_STAT_RENDER_H
#define SLUICE_STAT_RENDER_H

/*
 * sluicestat's three outputs. Each writes one complete look to out; the caller checks
 * out for errors once it is flushed.
 */
#include <stdio.h>

#include "stat/snapshot.h"

/* The default: a header line, one row per live slot, a total row. */
void table_print(FILE *out, const struct snapshot *snap, const struct snapshot_rows *rows);

/* Prometheus text exposition 0.0.4, per worker number. */
void prom_print(FILE *out, const struct snapshot *snap, const struct snapshot_worker *workers);
/* All there is to say once the master is gone. */
void prom_print_down(FILE *out);

/* One JSON object on one line: the master, the table's rows, the totals. */
void json_print(FILE *out, const struct snapshot *snap, const struct snapshot_rows *rows,
                const struct snapshot_worker *workers);

#endif
