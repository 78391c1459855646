/*
 * cleanse.c - the optimizer-proof wipe (Bitcoin Core: support/cleanse.cpp).
 */
#include "bitcoin_support.h"
#include "secure.h"

#include <string.h>

BS_EXPORT void bs_memory_cleanse(void *ptr, size_t len)
{
    if (ptr == NULL || len == 0)
        return;
    memset(ptr, 0, len);
    /* The barrier says the zeroed memory may be read afterwards, so the memset cannot go. */
    __asm__ __volatile__("" : : "r"(ptr) : "memory");
}
