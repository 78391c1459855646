/*
 * test_pool.c - the locked pool, the wipe and the wipe-on-free heap, tested from C.
 *
 * Modelled on Bitcoin Core's arena_tests (src/test/allocator_tests.cpp): fill an arena, free
 * forwards and backwards, interleaved frees, then 5,000 pseudo-random steps (the same LFSR)
 * that must end with total == free. Built by tests/test_pool_c.py against cdefs/lockedpool.c
 * and the other secure-memory files with ASan and UBSan, and run again under valgrind. Exit
 * status 0 means every check held.
 */
#include "bitcoin_support.h"
#include "secure.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);          \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

static bs_pool_stats_t stats(void)
{
    bs_pool_stats_t s;
    bs_pool_get_stats(&s);
    return s;
}

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

/* Allocate, check the chunk is zeroed and aligned, and fill it with a tag. */
static char *alloc_filled(size_t n, unsigned char tag)
{
    char *p = bs_pool_alloc(n, 16);
    CHECK(p != NULL);
    if (p == NULL)
        return NULL;
    CHECK(((uintptr_t)p & 15u) == 0);
    CHECK(all_zero((unsigned char *)p, n));
    memset(p, tag, n);
    return p;
}

static void free_checked(char *p, size_t n, unsigned char tag)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] != tag) {
            CHECK(!"chunk contents changed while it was live");
            break;
        }
    CHECK(bs_pool_free(p) == 0);
}

static void test_basics(size_t arena)
{
    bs_pool_stats_t s0 = stats();
    CHECK(s0.used == 0 && s0.total == 0);

    char *chunk = alloc_filled(1000, 1);
    bs_pool_stats_t s = stats();
    CHECK(s.used == 1008); /* rounded up to 16 */
    CHECK(s.total == arena);
    CHECK(s.locked == arena);
    free_checked(chunk, 1000, 1);
    s = stats();
    CHECK(s.used == 0 && s.free == arena && s.total == arena);
    CHECK(bs_pool_free(chunk) == -1); /* double free: an error, nothing changes */
    CHECK(bs_pool_free(chunk + 16) == -1);
    int on_stack;
    CHECK(bs_pool_free(&on_stack) == -1);
    CHECK(bs_pool_free(NULL) == -1);
    CHECK(stats().free == arena);

    char *a0 = alloc_filled(128, 2), *a1 = alloc_filled(256, 3), *a2 = alloc_filled(512, 4);
    CHECK(stats().used == 896);
    free_checked(a0, 128, 2);
    CHECK(stats().used == 768);
    free_checked(a1, 256, 3);
    CHECK(stats().used == 512);
    char *a3 = alloc_filled(128, 5);
    CHECK(stats().used == 640);
    free_checked(a2, 512, 4);
    CHECK(stats().used == 128);
    free_checked(a3, 128, 5);
    s = stats();
    CHECK(s.used == 0 && s.chunks_used == 0 && s.chunks_free == 1);
    CHECK(s.total == arena && s.free == arena);

    char *zero = bs_pool_alloc(0, 16); /* size 0 still gets a unique chunk */
    CHECK(zero != NULL && stats().used == 16);
    CHECK(bs_pool_free(zero) == 0);
}

static void test_fill_and_free_both_ways(size_t arena)
{
    size_t n = arena / 1024;
    char **addr = calloc(n + 1, sizeof *addr);
    for (size_t x = 0; x < n; x++)
        addr[x] = alloc_filled(1024, (unsigned char)x);
    bs_pool_stats_t s = stats();
    CHECK(s.free == 0 && s.total == arena && s.chunks_used == n);
    addr[n] = alloc_filled(1024, 0xEE); /* the full arena is joined by a second one */
    CHECK(stats().total == 2 * arena);
    free_checked(addr[n], 1024, 0xEE);
    for (size_t x = 0; x < n; x++)
        free_checked(addr[x], 1024, (unsigned char)x);
    s = stats();
    CHECK(s.total == arena && s.free == arena); /* one empty arena kept, the other released */

    for (size_t x = 0; x < n; x++)
        addr[x] = alloc_filled(1024, (unsigned char)x);
    for (size_t x = 0; x < n; x++)
        free_checked(addr[n - 1 - x], 1024, (unsigned char)(n - 1 - x));
    s = stats();
    CHECK(s.total == arena && s.free == arena && s.chunks_free == 1);
    free(addr);
}

static void test_interleaved(size_t arena)
{
    enum { N = 2048 };
    char *addr[N];
    for (int x = 0; x < N; x++)
        addr[x] = alloc_filled((size_t)x + 1, (unsigned char)(x * 7));
    for (int x = 0; x < N; x++) {
        int i = ((x * 23) % N) ^ 242;
        free_checked(addr[i], (size_t)i + 1, (unsigned char)(i * 7));
    }
    bs_pool_stats_t s = stats();
    CHECK(s.used == 0 && s.total == s.free && s.total == arena);
}

static void test_random_walk(size_t arena)
{
    enum { N = 2048 };
    char *addr[N] = {0};
    size_t size[N] = {0};
    uint32_t s = 0x12345678;
    for (int x = 0; x < 5000; x++) {
        unsigned idx = s & (N - 1);
        if (s & 0x80000000u) {
            free_checked(addr[idx], size[idx], (unsigned char)idx);
            addr[idx] = NULL;
        } else if (addr[idx] == NULL) {
            size[idx] = (s >> 16) & 2047;
            addr[idx] = alloc_filled(size[idx], (unsigned char)idx);
        }
        int lsb = s & 1;
        s >>= 1;
        if (lsb)
            s ^= 0xf00f00f0u;
    }
    for (int i = 0; i < N; i++)
        free_checked(addr[i], size[i], (unsigned char)i);
    bs_pool_stats_t st = stats();
    CHECK(st.used == 0 && st.chunks_used == 0);
    CHECK(st.total == st.free && st.total == arena);
}

static void test_freed_chunk_is_wiped(void)
{
    char *victim = alloc_filled(96, 0xA5);
    char *pin = alloc_filled(16, 0x11); /* keeps the arena in use: it stays mapped */
    CHECK(bs_pool_free(victim) == 0);
    CHECK(all_zero((unsigned char *)victim, 96));
    free_checked(pin, 16, 0x11);
}

static void test_alignment_and_dedicated(size_t arena)
{
    for (size_t align = 1; align <= 65536; align <<= 1) {
        char *p = bs_pool_alloc(40, align);
        CHECK(p != NULL && (uintptr_t)p % (align < 16 ? 16 : align) == 0);
        CHECK(bs_pool_free(p) == 0);
    }
    CHECK(bs_pool_alloc(16, 48) == NULL); /* not a power of two */

    bs_pool_stats_t before = stats();
    size_t big_size = 2 * arena + 1;
    char *big = alloc_filled(big_size, 0x3C);
    bs_pool_stats_t s = stats();
    CHECK(s.total - before.total >= big_size);
    CHECK(s.locked - before.locked == s.total - before.total);
    CHECK(s.chunks_used == before.chunks_used + 1);
    CHECK(bs_pool_free(big + 16) == -1);
    free_checked(big, big_size, 0x3C);
    CHECK(bs_pool_free(big) == -1);
    s = stats();
    CHECK(s.total == before.total && s.used == before.used);
}

static void test_cleanse_zaf_utf8(void)
{
    unsigned char buf[64];
    memset(buf, 0xA5, sizeof buf);
    bs_memory_cleanse(buf + 8, 40);
    CHECK(buf[7] == 0xA5 && all_zero(buf + 8, 40) && buf[48] == 0xA5);
    bs_memory_cleanse(NULL, 0);
    bs_memory_cleanse(buf, 0);
    CHECK(buf[0] == 0xA5);

    for (size_t align = 1; align <= 4096; align <<= 1) {
        char *z = bs_zaf_alloc(100, align);
        CHECK(z != NULL && (uintptr_t)z % align == 0 && all_zero((unsigned char *)z, 100));
        memset(z, 0x5A, 100);
        bs_zaf_free(z);
    }
    CHECK(bs_zaf_alloc(16, 24) == NULL);
    bs_zaf_free(NULL);

    const unsigned char ok[] = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e";
    CHECK(bs_utf8_valid_prefix(ok, sizeof ok - 1) == sizeof ok - 1);
    CHECK(bs_utf8_valid_prefix((const unsigned char *)"ab\xff", 3) == 2);
    CHECK(bs_utf8_valid_prefix((const unsigned char *)"a\xed\xa0\x80", 4) == 1);
    CHECK(bs_utf8_valid_prefix((const unsigned char *)"\xc0\xaf", 2) == 0);
    CHECK(bs_utf8_valid_prefix((const unsigned char *)"\xf4\x90\x80\x80", 4) == 0);
    CHECK(bs_utf8_valid_prefix((const unsigned char *)"x\xe2\x82", 3) == 1);
}

static void *thread_main(void *arg)
{
    uint32_t s = (uint32_t)(uintptr_t)arg;
    enum { LIVE = 64 };
    char *live[LIVE] = {0};
    size_t size[LIVE] = {0};
    for (int step = 0; step < 20000; step++) {
        s = s * 1664525u + 1013904223u;
        unsigned i = (s >> 8) % LIVE;
        unsigned char tag = (unsigned char)(i ^ (uintptr_t)arg);
        if (live[i] != NULL) {
            free_checked(live[i], size[i], tag);
            live[i] = NULL;
        } else {
            size[i] = (s >> 16) % 3000;
            live[i] = alloc_filled(size[i], tag);
        }
    }
    for (unsigned i = 0; i < LIVE; i++)
        free_checked(live[i], size[i], (unsigned char)(i ^ (uintptr_t)arg));
    return NULL;
}

static void test_threads(size_t arena)
{
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, thread_main, (void *)(i * 0x9e3779b9u + 1)) == 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    bs_pool_stats_t s = stats();
    CHECK(s.used == 0 && s.chunks_used == 0 && s.total == s.free && s.total == arena);
}

int main(void)
{
    size_t arena = bs_pool_arena_size();
    CHECK(arena == 256 * 1024);
    test_basics(arena);
    test_fill_and_free_both_ways(arena);
    test_interleaved(arena);
    test_random_walk(arena);
    test_freed_chunk_is_wiped();
    test_alignment_and_dedicated(arena);
    test_cleanse_zaf_utf8();
    test_threads(arena);
    void *p = bs_secure_allocate(33);
    CHECK(p != NULL);
    bs_secure_deallocate(p);
    bs_pool_stats_t s = stats();
    CHECK(s.used == 0 && s.total == s.free);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("test_pool: all checks passed");
    return 0;
}
