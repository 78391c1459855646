/* Declarations shared by the shim's C files and the cffi module; not part of the public API. */
#ifndef BS_SHIM_H
#define BS_SHIM_H

#include <stddef.h>

typedef struct {
    size_t used;
    size_t free;
    size_t total;
    size_t locked;
    size_t chunks_used;
    size_t chunks_free;
} bs_pool_stats_t;

#define BS_EXPORT __attribute__((visibility("default")))

char *bs_pool_alloc(size_t size, size_t align);
int bs_pool_free(void *ptr);
void bs_pool_get_stats(bs_pool_stats_t *out);
size_t bs_pool_arena_size(void);
void bs_pool_set_warning_hook(void (*hook)(int err, size_t size));
char *bs_zaf_alloc(size_t size, size_t align);
void bs_zaf_free(void *ptr);
size_t bs_utf8_valid_prefix(const unsigned char *s, size_t n);

#include "event_shim.h" /* the libevent handle records (event.c) */
#include "http_shim.h"  /* the evhttp request records (http.c) */
#include "aio_shim.h"   /* aio.EventLoop's readiness queue (aio.c) */

#endif
