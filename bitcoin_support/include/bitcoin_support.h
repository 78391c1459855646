/*
 * bitcoin_support.h - the C interface of the bitcoin_support package.
 *
 * Secure memory (usable from C without starting Python), the callback ABIs of the libevent
 * handles and the accessors of the package's event record, and bs_python_attach(),
 * bs_python_attach_evhttp(), bs_python_detach() and bs_python_pending() for C hosts that run
 * their own libevent loop. Link the library named by bitcoin_support.embed_library_path().
 */
#ifndef BITCOIN_SUPPORT_H
#define BITCOIN_SUPPORT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event;
struct event_base;
struct evhttp;
struct evhttp_request;

/* The package's record of an event (obtain_event): opaque, read with the bs_event_* accessors. */
typedef struct LibEvent LibEvent;

/* libevent's own request: a C request callback answers it with libevent's API directly. */
typedef struct evhttp_request EvHttpRequest;

/* libevent's socket type on POSIX. */
typedef int EvutilSocket;

/* Called when an event fires: the handle and the arg given to obtain_event(). */
typedef void (*EventCallback)(LibEvent *ev, void *arg);

/* Called for an HTTP request (server side) or a completed response (client side). */
typedef void (*EvHttpRequestCallback)(EvHttpRequest *req, void *arg);

/*
 * A host's check before Python's request callbacks on its evhttp (bs_python_set_request_gate):
 * return 0 to let Python answer, nonzero after answering the request itself (e.g. 401).
 */
typedef int (*BsRequestGate)(EvHttpRequest *req, void *arg);

/* The descriptor (or signal number, or -1) of an event; -1 for a released one. */
EvutilSocket bs_event_fd(const LibEvent *ev);

/* The flags of the current activation (EV_TIMEOUT, EV_READ, ...): read it in the callback. */
short bs_event_fired(const LibEvent *ev);

/* libevent's event inside the record (NULL once released), for libevent's own API. */
struct event *bs_event_get(const LibEvent *ev);

/* The event_base the event was made on (NULL once released). */
struct event_base *bs_event_get_base(const LibEvent *ev);

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

/*
 * The same with `function(EvHttp.from_address(http))`: Python serves paths on the host's own
 * evhttp, next to the host's C callbacks. The evhttp must listen on a socket already (its base
 * is found through its listeners). Returns 0, or -1 with the Python error printed to stderr.
 */
int bs_python_attach_evhttp(struct evhttp *http, const char *module, const char *function);

/*
 * Release everything Python made on `base`: events, evhttp callbacks (the host's stay), the
 * wrappers; requests Python still holds are answered 503 and their handlers cancelled (the
 * host's loop must run on for the replies to be written). Trio runs and asyncio tasks started
 * on it are cancelled and run to their end here, without the host's loop, which works from
 * anywhere: between loop rounds, or inside the host's own callbacks while its loop runs.
 * Returns 0 when all of it is released: nothing of Python's runs on `base` any more. Returns 1
 * when something still needs rounds of the host's loop to finish (detach called inside one of
 * the package's callbacks or a request gate, a job's clean-up waiting for I/O, or still running
 * after 10 s): Python keeps its state on `base` and releases it by itself once that is done;
 * the host runs its loop while bs_python_pending(base) returns 1 (or calls bs_python_detach
 * again until it returns 0) before event_base_free() or attaching again on `base`. -1: Python
 * failed (printed to stderr). 0, a no-op, when Python was never started. (Before, it returned
 * void: a host that ignores the result still compiles.)
 */
int bs_python_detach(struct event_base *base);

/*
 * What is left of Python on `base`, for a host's shutdown after bs_python_detach: 1 while its
 * state waits for jobs to finish in the host's loop (run the loop; do not free the base yet);
 * 2 while only replies Python made on the host's evhttp servers (503s, the end of a streamed
 * reply) are still being written or their connections are still open (running the loop
 * delivers them; freeing the evhttp now closes those connections); 0 when nothing is left (and
 * when Python was never started). -1: Python failed (printed to stderr).
 */
int bs_python_pending(struct event_base *base);

/*
 * Run `gate(req, arg)` in C before every request that one of Python's callbacks on `http`
 * would get (authentication, rate limits); the host's own callbacks are not gated. Set it
 * before or after bs_python_attach_evhttp(); it lasts until bs_python_detach() (NULL removes
 * it). Returns 0, or -1 with the Python error printed to stderr.
 */
int bs_python_set_request_gate(struct evhttp *http, BsRequestGate gate, void *arg);

/*
 * Frame every new connection of `http` strictly (on 1) before libevent reads it, as the servers
 * the package makes do by default: RFC 9112 chunk sizes, no NUL or controls in the head, no
 * bare-LF lines or obs-fold, one request at a time (docs/handles.md). Set it
 * before or after bs_python_attach_evhttp(); it lasts until bs_python_detach(), which takes
 * the framer off `http` again. Returns 0, or -1 with the Python error printed to stderr.
 */
int bs_python_set_strict_framing(struct evhttp *http, int on);
#endif

#ifdef __cplusplus
}
#endif

#endif /* BITCOIN_SUPPORT_H */
