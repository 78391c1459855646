/*
 * zeroafterfree.c - the wipe-on-free heap (Bitcoin Core: support/allocators/zeroafterfree.h):
 * aligned, zeroed blocks whose size lives in a header before them, wiped before free().
 */
#include "bitcoin_support.h"
#include "secure.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZAF_MAGIC 0x5a414642u /* "ZAFB" */

typedef struct {
    size_t size;
    uint32_t offset; /* from the start of the malloc'd block to the user pointer */
    uint32_t magic;
} zaf_header;

BS_EXPORT char *bs_zaf_alloc(size_t size, size_t align)
{
    if (align < sizeof(zaf_header))
        align = sizeof(zaf_header);
    if ((align & (align - 1)) != 0 || align > UINT32_MAX || size > SIZE_MAX - align) {
        errno = align > UINT32_MAX || (align & (align - 1)) ? EINVAL : ENOMEM;
        return NULL;
    }
    void *raw = NULL;
    int rc = posix_memalign(&raw, align, align + size);
    if (rc != 0) {
        errno = rc;
        return NULL;
    }
    /* Only the header and the block are touched: the alignment slack before the header costs
     * address space, not memory (it is never written, so it needs no wipe either). */
    char *user = (char *)raw + align;
    zaf_header *h = (zaf_header *)(void *)(user - sizeof *h);
    memset(h, 0, sizeof *h + size);
    h->size = size;
    h->offset = (uint32_t)align;
    h->magic = ZAF_MAGIC;
    return user;
}

BS_EXPORT void bs_zaf_free(void *ptr)
{
    if (ptr == NULL)
        return;
    zaf_header *h = (zaf_header *)(void *)((char *)ptr - sizeof *h);
    if (h->magic != ZAF_MAGIC) {
        fprintf(stderr, "bitcoin_support: bs_zaf_free(%p): not a live block\n", ptr);
        abort();
    }
    char *raw = (char *)ptr - h->offset;
    bs_memory_cleanse(h, sizeof *h + h->size);
    free(raw);
}
