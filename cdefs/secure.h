/*
 * secure.h - secure memory: the locked pool (lockedpool.c), the wipe-on-free heap
 * (zeroafterfree.c) and UTF-8 checking (utf8.c), besides the public bs_memory_cleanse
 * (cleanse.c), bs_secure_allocate and bs_secure_deallocate of bitcoin_support.h.
 * One copy for C and cffi (see event.h). No libevent here: C hosts use this without it.
 */
#ifndef BS_SECURE_H
#define BS_SECURE_H

#include <stddef.h>

#include "bitcoin_support.h"

typedef struct {
    size_t used;          /* bytes handed out (chunks and dedicated mappings) */
    size_t free;          /* bytes free inside arenas */
    size_t total;         /* bytes mapped by the pool */
    size_t locked;        /* bytes really locked with mlock */
    size_t chunks_used;
    size_t chunks_free;
} bs_pool_stats_t;

/* Python side of the pool: pointer or NULL (errno ENOMEM); free returns 0 or -1 (not ours). */
char *bs_pool_alloc(size_t size, size_t align);
int bs_pool_free(void *ptr);
void bs_pool_get_stats(bs_pool_stats_t *out);
size_t bs_pool_arena_size(void);
/* Called once, at the first mlock failure (Python logs it: see _secure.py). */
void bs_pool_set_warning_hook(void (*hook)(int err, size_t size));

/* Wipe-on-free heap: aligned, zeroed; the size lives in a header before the block. */
char *bs_zaf_alloc(size_t size, size_t align);
void bs_zaf_free(void *ptr);

/* Length of the longest valid UTF-8 prefix of s[0..n) (n when all of it is valid). */
size_t bs_utf8_valid_prefix(const unsigned char *s, size_t n);

#ifndef BS_CDEF
#include "export.h"
#endif

#endif
