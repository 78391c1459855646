/*
 * bitcoin_support.h - the C interface of the bitcoin_support package.
 *
 * Secure memory (usable from C without starting Python), the callback ABIs of the
 * libevent handles, and bs_python_attach() for C hosts that run their own libevent loop.
 * Link the library named by bitcoin_support.embed_library_path().
 */
#ifndef BITCOIN_SUPPORT_H
#define BITCOIN_SUPPORT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/* Opaque handle records; their layout is private to the package. */
typedef struct LibEvent LibEvent;
typedef struct EvHttpRequest EvHttpRequest;

/* libevent's socket type on POSIX. */
typedef int EvutilSocket;

/* Called when an event fires: the handle and the arg given to obtain_event(). */
typedef void (*EventCallback)(LibEvent *ev, void *arg);

/* Called for an HTTP request (server side) or a completed response (client side). */
typedef void (*EvHttpRequestCallback)(EvHttpRequest *req, void *arg);

/* Zero len bytes at ptr; the stores survive optimisation. */
void bs_memory_cleanse(void *ptr, size_t len);

/* size bytes of zeroed, 16-byte aligned memory from the locked pool; NULL on failure. */
void *bs_secure_allocate(size_t size);

/* Wipe and return memory from bs_secure_allocate(); NULL is a no-op. */
void bs_secure_deallocate(void *ptr);

#ifndef BS_CDEF /* in the embeddable library only, not in the Python module */
/*
 * Start Python if needed, import `module`, and call `function(EventBase.from_address(base))`.
 * Returns 0, or -1 with the Python error printed to stderr.
 */
int bs_python_attach(struct event_base *base, const char *module, const char *function);
#endif

#ifdef __cplusplus
}
#endif

#endif /* BITCOIN_SUPPORT_H */
