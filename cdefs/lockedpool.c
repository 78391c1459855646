/*
 * lockedpool.c - the locked pool (Bitcoin Core: support/lockedpool.cpp).
 *
 * The locked pool follows Bitcoin Core's LockedPool: arenas obtained with mmap, locked with
 * mlock(2), marked MADV_DONTDUMP, carved best-fit into 16-byte units. What it adds:
 *   - requests larger than an arena get a dedicated locked mapping of their own;
 *   - an arena that becomes empty is wiped, unlocked and unmapped, except one kept spare;
 *   - freeing twice or freeing a pointer the pool never gave out returns an error instead of
 *     corrupting anything, because all bookkeeping lives outside the locked memory;
 *   - mlock failure is reported once (warning hook, or stderr without one) and the memory is
 *     used unlocked, still wiped on free.
 *
 * Ownership: the pool owns every mapping until bs_pool_free() gives the chunk back. Every free
 * chunk is all zeros (wiped on free, fresh mappings are zero), so new chunks read as zeros.
 * One mutex guards everything; after fork() the child re-locks its copies of the arenas, since
 * mlock is not inherited.
 *
 * One pool per process. This file is compiled into two objects, the Python extension (_native)
 * and the embeddable library a C host links (_embed), and both may be loaded in one process.
 * Symbol interposition cannot be relied on to make them share one pool: a link with
 * -Bsymbolic-functions (Debian's Python links extensions so) binds each object to its own copy.
 * So the pool is found at load time instead: each copy exports an accessor with a versioned name
 * (bitcoin_support_locked_pool_v1) returning the table of functions of the pool it uses, and
 * each copy's constructor looks through the objects already loaded for another copy's accessor
 * (any loaded object, whether dlopen()ed RTLD_LOCAL or not). Finding one, it uses that pool and
 * keeps the object holding it loaded for good (RTLD_NODELETE); finding none, it uses its own.
 * The loader runs constructors one at a time, so the first copy loaded owns the pool and every
 * later copy finds it: a C host's bs_secure_allocate() and Python's SecureAllocator share the
 * pool whichever is loaded first and however either was linked.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---------------------------------------------------------------- arenas */

#define UNIT 16u
#define ARENA_SIZE (256u * 1024u)
#define ARENA_UNITS (ARENA_SIZE / UNIT) /* 16384: unit indices fit in uint16_t */
#define NONE 0xFFFFu
#define EXACT_BINS 64u             /* bins 0..63: free chunks of exactly 1..64 units */
#define NBINS (EXACT_BINS + 8u)    /* then (64,128], (128,256], ... (8192,16384] units */
#define CHUNK_FREE 1u
#define CHUNK_USED 2u

typedef struct arena {
    struct arena *next;
    unsigned char *base;
    int locked;
    uint32_t used_units;
    uint32_t chunks_used;
    uint32_t chunks_free;
    uint16_t bins[NBINS];           /* first free chunk of each size class */
    uint64_t nonempty[2];           /* bit b set when bins[b] holds a chunk */
    uint8_t state[ARENA_UNITS];     /* at a chunk's first unit: CHUNK_FREE or CHUNK_USED */
    uint16_t len[ARENA_UNITS];      /* at a chunk's first unit: its length in units */
    uint16_t head[ARENA_UNITS];     /* at a free chunk's last unit: its first unit */
    uint16_t next_free[ARENA_UNITS];
    uint16_t prev_free[ARENA_UNITS];
} arena;

typedef struct dedicated {
    struct dedicated *next;
    unsigned char *map; /* the kept mapping, page-aligned; also what the caller got */
    size_t map_size;    /* size rounded up to whole pages: all that is mapped and locked */
    int locked;
} dedicated;

static struct {
    pthread_mutex_t mu;
    arena *arenas;
    dedicated *big;
    unsigned empty_arenas;
    void (*hook)(int err, size_t size);
} pool = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, 0, NULL};

static atomic_int mlock_warned;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static unsigned bin_of(uint32_t n)
{
    if (n <= EXACT_BINS)
        return n - 1;
    unsigned b = EXACT_BINS;
    for (uint32_t top = 2 * EXACT_BINS; n > top; top <<= 1)
        b++;
    return b;
}

static void bin_insert(arena *a, uint32_t u)
{
    unsigned b = bin_of(a->len[u]);
    a->prev_free[u] = NONE;
    a->next_free[u] = a->bins[b];
    if (a->bins[b] != NONE)
        a->prev_free[a->bins[b]] = (uint16_t)u;
    a->bins[b] = (uint16_t)u;
    a->nonempty[b / 64] |= UINT64_C(1) << (b % 64);
}

static void bin_remove(arena *a, uint32_t u)
{
    uint16_t p = a->prev_free[u], n = a->next_free[u];
    if (p != NONE) {
        a->next_free[p] = n;
    } else {
        unsigned b = bin_of(a->len[u]);
        a->bins[b] = n;
        if (n == NONE)
            a->nonempty[b / 64] &= ~(UINT64_C(1) << (b % 64));
    }
    if (n != NONE)
        a->prev_free[n] = p;
}

/* Record [u, u+n) as one free chunk and file it in its bin. */
static void set_free(arena *a, uint32_t u, uint32_t n)
{
    a->state[u] = CHUNK_FREE;
    a->len[u] = (uint16_t)n;
    a->head[u + n - 1] = (uint16_t)u;
    bin_insert(a, u);
    a->chunks_free++;
}

/* Take free chunk u out of the books (it is being split, merged or handed out). */
static void take_free(arena *a, uint32_t u)
{
    bin_remove(a, u);
    a->state[u] = 0;
    a->chunks_free--;
}

/* The first non-empty bin at or after b, or NBINS. */
static unsigned next_bin(const arena *a, unsigned b)
{
    for (unsigned w = b / 64; w < 2; w++) {
        uint64_t bits = a->nonempty[w];
        if (w == b / 64)
            bits &= ~UINT64_C(0) << (b % 64);
        if (bits != 0)
            return w * 64 + (unsigned)__builtin_ctzll(bits);
    }
    return NBINS;
}

/* Best fit: the first unit of the smallest free chunk of at least `need` units, or NONE. */
static uint32_t find_best(arena *a, uint32_t need)
{
    for (unsigned b = next_bin(a, bin_of(need)); b < NBINS; b = next_bin(a, b + 1)) {
        if (b < EXACT_BINS)
            return a->bins[b];
        uint32_t best = NONE, best_len = UINT32_MAX;
        for (uint32_t u = a->bins[b]; u != NONE; u = a->next_free[u]) {
            if (a->len[u] >= need && a->len[u] < best_len) {
                best = u;
                best_len = a->len[u];
                if (best_len == need)
                    break;
            }
        }
        if (best != NONE)
            return best;
    }
    return NONE;
}

/* Carve n units aligned to align_units out of arena a; returns the first unit or NONE. */
static uint32_t arena_alloc(arena *a, uint32_t n, uint32_t align_units)
{
    uint32_t u = find_best(a, n + align_units - 1);
    if (u == NONE)
        return NONE;
    uint32_t len = a->len[u];
    take_free(a, u);
    uintptr_t addr = (uintptr_t)(a->base + (size_t)u * UNIT);
    uintptr_t align = (uintptr_t)align_units * UNIT;
    uint32_t start = u + (uint32_t)((((addr + align - 1) & ~(align - 1)) - addr) / UNIT);
    if (start > u)
        set_free(a, u, start - u);
    uint32_t end = u + len, used_end = start + n;
    if (end > used_end)
        set_free(a, used_end, end - used_end);
    a->state[start] = CHUNK_USED;
    a->len[start] = (uint16_t)n;
    a->used_units += n;
    a->chunks_used++;
    return start;
}

/* Wipe chunk u, give it back and merge it with free neighbours. */
static void arena_free(arena *a, uint32_t u)
{
    uint32_t n = a->len[u];
    bs_memory_cleanse(a->base + (size_t)u * UNIT, (size_t)n * UNIT);
    a->state[u] = 0;
    a->used_units -= n;
    a->chunks_used--;
    uint32_t start = u, len = n;
    uint32_t next = u + n;
    if (next < ARENA_UNITS && a->state[next] == CHUNK_FREE) {
        len += a->len[next];
        take_free(a, next);
    }
    if (u > 0) {
        uint32_t prev = a->head[u - 1];
        /* head[] may hold stale values; only a live free chunk ending at u-1 counts. */
        if (prev < u && a->state[prev] == CHUNK_FREE && prev + a->len[prev] == u) {
            start = prev;
            len += a->len[prev];
            take_free(a, prev);
        }
    }
    set_free(a, start, len);
}

static void report_mlock_failure(int err, size_t size)
{
    if (atomic_exchange(&mlock_warned, 1))
        return;
    if (pool.hook != NULL) {
        pool.hook(err, size);
        return;
    }
    fprintf(stderr,
            "bitcoin_support: mlock of %zu bytes failed (%s); secrets may be swapped out; "
            "raise RLIMIT_MEMLOCK (ulimit -l)\n",
            size, strerror(err));
}

/* Map, mark and lock len bytes; *err gets mlock's errno or 0. */
static unsigned char *map_locked(size_t len, int *locked, int *err)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, len, MADV_DONTDUMP);
    *locked = mlock(p, len) == 0;
    *err = *locked ? 0 : errno;
    return p;
}

static void unmap_wiped(unsigned char *p, size_t len, int locked)
{
    bs_memory_cleanse(p, len);
    if (locked)
        munlock(p, len);
    munmap(p, len);
}

static arena *arena_new(int *err)
{
    arena *a = malloc(sizeof *a);
    if (a == NULL)
        return NULL;
    a->base = map_locked(ARENA_SIZE, &a->locked, err);
    if (a->base == NULL) {
        free(a);
        return NULL;
    }
    memset(a->state, 0, sizeof a->state);
    memset(a->head, 0xFF, sizeof a->head); /* arena_free reads head[u - 1] before trusting it */
    memset(a->bins, 0xFF, sizeof a->bins);
    a->nonempty[0] = a->nonempty[1] = 0;
    a->used_units = a->chunks_used = a->chunks_free = 0;
    set_free(a, 0, ARENA_UNITS);
    a->next = pool.arenas;
    pool.arenas = a;
    pool.empty_arenas++;
    return a;
}

static void arena_release(arena *a)
{
    arena **pp = &pool.arenas;
    while (*pp != a)
        pp = &(*pp)->next;
    *pp = a->next;
    unmap_wiped(a->base, ARENA_SIZE, a->locked);
    bs_memory_cleanse(a, sizeof *a);
    free(a);
}

static void relock_after_fork(void)
{
    for (arena *a = pool.arenas; a != NULL; a = a->next)
        a->locked = mlock(a->base, ARENA_SIZE) == 0;
    for (dedicated *d = pool.big; d != NULL; d = d->next)
        d->locked = mlock(d->map, d->map_size) == 0;
    pthread_mutex_unlock(&pool.mu);
}

static void lock_pool(void) { pthread_mutex_lock(&pool.mu); }
static void unlock_pool(void) { pthread_mutex_unlock(&pool.mu); }
static void register_atfork(void) { pthread_atfork(lock_pool, unlock_pool, relock_after_fork); }

static size_t page_size(void)
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096u;
}

/*
 * A mapping of its own, aligned to align. Alignment costs address space only: the request is
 * reserved with room for the alignment (PROT_NONE, so nothing is committed), the slack before
 * and after the aligned block is unmapped again, and only the kept pages are mapped writable
 * (in place of the reservation), marked and locked. What stays mapped and locked is size rounded
 * up to whole pages.
 */
static char *dedicated_alloc(size_t size, size_t align, int *err, size_t *mapped)
{
    size_t page = page_size();
    if (size > SIZE_MAX - page)
        return NULL;
    size_t keep = size == 0 ? page : (size + page - 1) & ~(page - 1);
    size_t slack = align > page ? align - page : 0; /* mmap gives page alignment already */
    if (keep > SIZE_MAX - slack)
        return NULL;
    dedicated *d = malloc(sizeof *d);
    if (d == NULL)
        return NULL;
    void *res = mmap(NULL, keep + slack, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (res == MAP_FAILED) {
        free(d);
        return NULL;
    }
    unsigned char *base = res;
    uintptr_t b = (uintptr_t)base;
    unsigned char *p = base + (slack ? (((b + align - 1) & ~(uintptr_t)(align - 1)) - b) : 0);
    size_t head = (size_t)(p - base), tail = slack - head;
    if (head != 0)
        munmap(base, head);
    if (tail != 0)
        munmap(p + keep, tail);
    /* The kept pages become an ordinary writable mapping, committed (and accounted) as any. */
    if (mmap(p, keep, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
        MAP_FAILED) {
        munmap(p, keep);
        free(d);
        return NULL;
    }
    (void)madvise(p, keep, MADV_DONTDUMP);
    d->locked = mlock(p, keep) == 0;
    *err = d->locked ? 0 : errno;
    d->map = p;
    d->map_size = keep;
    d->next = pool.big;
    pool.big = d;
    *mapped = keep;
    return (char *)p;
}

static char *own_alloc(size_t size, size_t align)
{
    if (align < UNIT)
        align = UNIT;
    if ((align & (align - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    pthread_once(&atfork_once, register_atfork);
    size_t units = size == 0 ? 1 : (size + UNIT - 1) / UNIT;
    size_t align_units = align / UNIT; /* may exceed 32 bits: compared before narrowing */
    char *out = NULL;
    int err = 0;
    size_t mapped = ARENA_SIZE;
    pthread_mutex_lock(&pool.mu);
    if (size > ARENA_SIZE || units + align_units - 1 > ARENA_UNITS) {
        out = dedicated_alloc(size, align, &err, &mapped);
    } else {
        for (arena *a = pool.arenas; a != NULL && out == NULL; a = a->next) {
            int was_empty = a->chunks_used == 0;
            uint32_t u = arena_alloc(a, (uint32_t)units, (uint32_t)align_units);
            if (u != NONE) {
                out = (char *)a->base + (size_t)u * UNIT;
                pool.empty_arenas -= was_empty;
            }
        }
        if (out == NULL) {
            arena *a = arena_new(&err);
            if (a != NULL) {
                out = (char *)a->base +
                      (size_t)arena_alloc(a, (uint32_t)units, (uint32_t)align_units) * UNIT;
                pool.empty_arenas--;
            }
        }
    }
    pthread_mutex_unlock(&pool.mu);
    if (out != NULL && err != 0)
        report_mlock_failure(err, mapped);
    if (out == NULL)
        errno = ENOMEM;
    return out;
}

static int own_free(void *ptr)
{
    unsigned char *p = ptr;
    int rc = -1;
    pthread_mutex_lock(&pool.mu);
    for (arena *a = pool.arenas; a != NULL; a = a->next) {
        if (p < a->base || p >= a->base + ARENA_SIZE)
            continue;
        size_t off = (size_t)(p - a->base);
        uint32_t u = (uint32_t)(off / UNIT);
        if (off % UNIT == 0 && a->state[u] == CHUNK_USED) {
            arena_free(a, u);
            rc = 0;
            if (a->chunks_used == 0 && ++pool.empty_arenas > 1) {
                pool.empty_arenas--;
                arena_release(a);
            }
        }
        break;
    }
    if (rc != 0) {
        for (dedicated **pp = &pool.big; *pp != NULL; pp = &(*pp)->next) {
            dedicated *d = *pp;
            if (d->map == p) {
                *pp = d->next;
                unmap_wiped(d->map, d->map_size, d->locked);
                free(d);
                rc = 0;
                break;
            }
        }
    }
    pthread_mutex_unlock(&pool.mu);
    return rc;
}

static void own_stats(bs_pool_stats_t *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&pool.mu);
    for (arena *a = pool.arenas; a != NULL; a = a->next) {
        out->used += (size_t)a->used_units * UNIT;
        out->free += (size_t)(ARENA_UNITS - a->used_units) * UNIT;
        out->total += ARENA_SIZE;
        out->locked += a->locked ? ARENA_SIZE : 0;
        out->chunks_used += a->chunks_used;
        out->chunks_free += a->chunks_free;
    }
    for (dedicated *d = pool.big; d != NULL; d = d->next) {
        out->used += d->map_size;
        out->total += d->map_size;
        out->locked += d->locked ? d->map_size : 0;
        out->chunks_used++;
    }
    pthread_mutex_unlock(&pool.mu);
}

BS_EXPORT size_t bs_pool_arena_size(void) { return ARENA_SIZE; }

static void own_set_hook(void (*hook)(int err, size_t size))
{
    pthread_mutex_lock(&pool.mu);
    pool.hook = hook;
    pthread_mutex_unlock(&pool.mu);
}

/* ---------------------------------------------------------------- one pool per process */

/* What a copy of this file hands the others: a new layout takes a new accessor name. */
typedef struct {
    size_t size; /* sizeof(bs_pool_table), checked by the copy that finds it */
    char *(*alloc)(size_t size, size_t align);
    int (*release)(void *ptr);
    void (*stats)(bs_pool_stats_t *out);
    void (*set_hook)(void (*hook)(int err, size_t size));
} bs_pool_table;

#define POOL_ACCESSOR "bitcoin_support_locked_pool_v1"

static const bs_pool_table own_table = {sizeof(bs_pool_table), own_alloc, own_free, own_stats,
                                        own_set_hook};
/* The pool this copy uses: its own, or the one of the copy loaded first (find_pool). */
static const bs_pool_table *pool_in_use = &own_table;

BS_EXPORT const bs_pool_table *bitcoin_support_locked_pool_v1(void) { return pool_in_use; }

typedef struct {
    const char *self; /* this object's file, skipped */
    char **names;
    size_t count, cap;
} loaded_objects;

static int note_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    loaded_objects *l = data;
    if (info->dlpi_name == NULL || info->dlpi_name[0] == '\0' ||
        (l->self != NULL && strcmp(info->dlpi_name, l->self) == 0))
        return 0;
    if (l->count == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **grown = realloc(l->names, cap * sizeof *grown);
        if (grown == NULL)
            return 1;
        l->names = grown;
        l->cap = cap;
    }
    char *copy = strdup(info->dlpi_name);
    if (copy == NULL)
        return 1;
    l->names[l->count++] = copy;
    return 0;
}

/* The pool table of another copy in the object `name` (already loaded), or NULL. */
static const bs_pool_table *table_in(const char *name)
{
    void *h = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL)
        return NULL;
    const bs_pool_table *(*accessor)(void);
    void *sym = dlsym(h, POOL_ACCESSOR);
    const bs_pool_table *t = NULL;
    if (sym != NULL) {
        memcpy(&accessor, &sym, sizeof accessor); /* a function's address travels as a void * */
        t = accessor();
    }
    if (t == &own_table || (t != NULL && t->size != sizeof *t))
        t = NULL;
    if (t != NULL) {
        /* Keep the object that holds the pool loaded for the life of the process. */
        Dl_info where;
        if (dladdr((const void *)t, &where) != 0 && where.dli_fname != NULL)
            (void)dlopen(where.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
    }
    dlclose(h);
    return t;
}

/* Runs as the object is loaded, before anything can call into it (see the file's header). */
__attribute__((constructor)) static void find_pool(void)
{
    Dl_info self;
    loaded_objects l = {NULL, NULL, 0, 0};
    if (dladdr((const void *)&own_table, &self) != 0)
        l.self = self.dli_fname;
    dl_iterate_phdr(note_object, &l); /* names first: no dlopen while the list is walked */
    for (size_t i = 0; i < l.count; i++) {
        const bs_pool_table *t = pool_in_use == &own_table ? table_in(l.names[i]) : NULL;
        if (t != NULL)
            pool_in_use = t;
        free(l.names[i]);
    }
    free(l.names);
}

BS_EXPORT char *bs_pool_alloc(size_t size, size_t align)
{
    return pool_in_use->alloc(size, align);
}

BS_EXPORT int bs_pool_free(void *ptr) { return pool_in_use->release(ptr); }

BS_EXPORT void bs_pool_get_stats(bs_pool_stats_t *out) { pool_in_use->stats(out); }

BS_EXPORT void bs_pool_set_warning_hook(void (*hook)(int err, size_t size))
{
    pool_in_use->set_hook(hook);
}

BS_EXPORT void *bs_secure_allocate(size_t size) { return bs_pool_alloc(size, UNIT); }

BS_EXPORT void bs_secure_deallocate(void *ptr)
{
    if (ptr != NULL && bs_pool_free(ptr) != 0) {
        fprintf(stderr, "bitcoin_support: bs_secure_deallocate(%p): not a live secure block\n",
                ptr);
        abort();
    }
}
