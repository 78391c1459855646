/* aio.EventLoop's readiness queue (aio.c); the cffi declarations are in cdefs/event_aio.h. */
#ifndef BS_AIO_SHIM_H
#define BS_AIO_SHIM_H

typedef struct bs_aio_ready bs_aio_ready;

bs_aio_ready *bs_aio_ready_new(void);
void bs_aio_ready_free(bs_aio_ready *ready);
void bs_aio_ready_cb(LibEvent *ev, void *arg);
int bs_aio_ready_take(bs_aio_ready *ready, int *out, int cap, int *lost);

#endif
