/*
 * Permit cells: a claim is one compare-and-swap from 0 to the owner's slot number + 1.
 * No lock, so a worker that dies mid-claim cannot wedge anyone: either its number is in
 * the cell (the master frees it) or it is not (nothing was taken).
 */
#include "config.h"

#include "shm/permits.h"

#include <stdbool.h>

static uint32_t permits_held_in(const struct shm *shm, uint32_t from, uint32_t to)
{
    uint32_t held = 0;

    for (uint32_t i = from; i < to && i < SHM_PERMITS_MAX; i++)
        held += atomic_load_explicit(&shm->permit_cells[i], memory_order_relaxed) != 0;
    return held;
}

/*
 * After a reload lowered handshake-permits, handshakes may still hold cells past the new
 * total: they count against it until they end, or the pool would over-admit meanwhile.
 */
static bool permits_over_total(const struct shm *shm, uint32_t total)
{
    uint32_t high = atomic_load_explicit(&shm->header->permits_high_water, memory_order_relaxed);
    uint32_t beyond = high > total ? permits_held_in(shm, total, high) : 0;

    return beyond > 0 && permits_held_in(shm, 0, total) + beyond >= total;
}

uint32_t permits_take(struct shm *shm, unsigned slot, uint32_t *hint)
{
    uint32_t total = atomic_load_explicit(&shm->header->permits_total, memory_order_relaxed);
    uint32_t owner = slot + 1;

    if (total > SHM_PERMITS_MAX)
        total = SHM_PERMITS_MAX;
    if (permits_over_total(shm, total))
        return PERMIT_NONE;
    for (uint32_t i = 0; i < total; i++) {
        uint32_t cell = (*hint + i) % total;
        uint32_t expected = 0;
        if (atomic_load_explicit(&shm->permit_cells[cell], memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong_explicit(&shm->permit_cells[cell], &expected, owner,
                                                    memory_order_acquire, memory_order_relaxed)) {
            *hint = cell + 1;
            atomic_fetch_add_explicit(&shm->slots[slot].permits_held, 1, memory_order_relaxed);
            return cell;
        }
    }
    return PERMIT_NONE;
}

void permits_release(struct shm *shm, unsigned slot, uint32_t cell)
{
    atomic_store_explicit(&shm->permit_cells[cell], 0, memory_order_release);
    atomic_fetch_sub_explicit(&shm->slots[slot].permits_held, 1, memory_order_relaxed);
}

unsigned permits_reclaim(struct shm *shm, unsigned slot)
{
    uint32_t owner = slot + 1;
    unsigned freed = 0;

    uint32_t scan = atomic_load(&shm->header->permits_high_water);

    for (uint32_t i = 0; i < scan && i < SHM_PERMITS_MAX; i++) {
        uint32_t expected = owner;
        if (atomic_load_explicit(&shm->permit_cells[i], memory_order_relaxed) == owner &&
            atomic_compare_exchange_strong(&shm->permit_cells[i], &expected, 0))
            freed++;
    }
    atomic_store(&shm->slots[slot].permits_held, 0);
    return freed;
}
