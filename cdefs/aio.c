/*
 * aio.c - the readiness queue of aio.EventLoop (bitcoin_support/_aio_selector.py).
 *
 * The loop's I/O events are persistent libevent events with this C callback: libevent's round
 * appends one int per ready direction, with no Python call per event, and
 * LibeventSelector.select() takes the whole batch in one call. The queue is used on the loop's
 * thread only (the thread dispatching the base), so it needs no lock.
 */
#include "bitcoin_support.h"
#include "aio.h"

#include <limits.h>
#include <stdlib.h>

#include <event2/event.h>

struct bs_aio_ready {
    int *items;
    int len;
    int head; /* first entry not yet taken */
    int cap;
    int lost;
};

bs_aio_ready *bs_aio_ready_new(void)
{
    return calloc(1, sizeof(bs_aio_ready));
}

void bs_aio_ready_free(bs_aio_ready *r)
{
    if (r != NULL) {
        free(r->items);
        free(r);
    }
}

void bs_aio_ready_cb(LibEvent *e, void *arg)
{
    bs_aio_ready *r = arg;
    int fd, code;

    if (e->ev == NULL)
        return;
    fd = (int)event_get_fd(e->ev);
    code = ((e->fired & EV_READ) ? 1 : 0) | ((e->fired & EV_WRITE) ? 2 : 0);
    if (code == 0 || fd < 0 || fd > INT_MAX / 4)
        return;
    if (r->len == r->cap) {
        int cap = r->cap ? r->cap * 2 : 256;
        int *items = cap > 0 && (size_t)cap < ((size_t)-1) / sizeof(int)
                         ? realloc(r->items, (size_t)cap * sizeof(int))
                         : NULL;
        if (items == NULL) {
            r->lost = 1;
            return;
        }
        r->items = items;
        r->cap = cap;
    }
    r->items[r->len++] = fd * 4 + code;
}

int bs_aio_ready_take(bs_aio_ready *r, int *out, int cap, int *lost)
{
    int n = r->len - r->head;

    *lost = r->lost;
    r->lost = 0;
    if (n > cap)
        n = cap;
    if (n < 0)
        n = 0;
    for (int i = 0; i < n; i++)
        out[i] = r->items[r->head + i];
    r->head += n;
    if (r->head == r->len)
        r->head = r->len = 0;
    return n;
}
