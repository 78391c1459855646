/*
 * aio.h - aio.EventLoop's readiness queue (aio.c): persistent I/O events whose C callback
 * appends "fd * 4 + direction" (1 read, 2 write) to a growable array, which
 * LibeventSelector.select() takes in one call. One copy for C and cffi (see event.h).
 */
#ifndef BS_AIO_H
#define BS_AIO_H

#include "event.h"

typedef struct bs_aio_ready bs_aio_ready;

bs_aio_ready *bs_aio_ready_new(void);
void bs_aio_ready_free(bs_aio_ready *ready);
/* The EventCallback of the loop's I/O events; arg is the bs_aio_ready. */
void bs_aio_ready_cb(LibEvent *ev, void *arg);
/* Move up to cap entries into out; returns how many. *lost is set to 1 (and cleared in the
   queue) if an append failed for want of memory since the last call: every registered
   descriptor must then be treated as ready. */
int bs_aio_ready_take(bs_aio_ready *ready, int *out, int cap, int *lost);

#endif
