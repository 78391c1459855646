/*
 * event.h - the libevent handles (event.c): the records of the base and its events, and the
 * shim's functions. One copy for both readers: the C files include it, and build_ffi.py feeds it
 * to cffi, which sees what is outside "#ifndef BS_CDEF" blocks and what is inside "#ifdef
 * BS_CDEF" ones (libevent's own declarations, which C takes from libevent's headers).
 *
 * Every handle record created on a base starts with a bs_node linking it into its base's list of
 * children; docs/design/lifetimes.md says what that buys.
 */
#ifndef BS_EVENT_H
#define BS_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "bitcoin_support.h"

#ifdef BS_CDEF
struct event;
#define EV_TIMEOUT ...
#define EV_READ ...
#define EV_WRITE ...
#define EV_SIGNAL ...
#define EV_PERSIST ...
#define EV_ET ...
#define EV_CLOSED ...
#define EVLOOP_ONCE ...
#define EVLOOP_NONBLOCK ...
#define EVLOOP_NO_EXIT_ON_EMPTY ...
#define EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST ...
const char *event_get_version(void);
#endif

typedef struct bs_base bs_base;
typedef struct bs_node bs_node;

struct bs_node {
    bs_node *prev;
    bs_node *next;
    bs_base *owner;             /* NULL once released or orphaned */
    void (*orphan)(bs_node *);  /* frees the libevent object of the record; tree lock held */
};

struct bs_base {
    int depth;                  /* callbacks of this base running now (on the loop thread) */
    int dead;                   /* released from inside a callback: freed when depth drops to 0 */
    int closing;                /* release started: no new children */
    int owned;                  /* 0 for EventBase.from_address(): never freed here */
    struct event_base *base;    /* NULL for a dummy */
    void *py;                   /* ffi.new_handle of the Python loop state, or NULL */
    struct event *notify;       /* internal user event behind call_soon_threadsafe */
    struct event *ran;          /* ordinary no-op event activated after Python ran (see event.c) */
    struct event *wake;         /* internal read event on wake_fds[0] (signal wakeup fd) */
    int wake_fds[2];
    bs_node children;           /* list sentinel */
};

struct LibEvent {
    bs_node node;
    struct event *ev;           /* owned; NULL for a dummy and once orphaned */
    EventCallback c_cb;         /* C callback, or NULL for a Python one */
    void *c_arg;
    void *py;                   /* ffi.new_handle of the Python LibEvent while it is held */
    int fired;                  /* flags of the current activation */
    double readd;               /* timeout of a re-add its own callback asked for (< 0: none) */
    int running;                /* trampolines running its callback now (tree lock) */
    int dead;                   /* released while running: the trampoline frees it (tree lock) */
};

/* Returned by the Python event callback with the flags to activate: re-add the event with the
   timeout in `readd` once the callback is over (LibEvent.add on a timer inside its callback). */
enum { BS_EVENT_READD = 0x10000 };

int bs_event_init(void);
bs_base *bs_base_new(int dummy, int flags);
bs_base *bs_base_wrap(struct event_base *base);
void bs_base_release(bs_base *base);
int bs_base_notify(bs_base *base);
int bs_base_wake_fd(bs_base *base);
int bs_base_loop(bs_base *base, int flags);
int bs_base_loopbreak(bs_base *base);
int bs_base_loopexit(bs_base *base, double timeout);
double bs_base_now(bs_base *base);
const char *bs_base_backend(bs_base *base);
/* Whether the last loop ended through event_base_loopbreak() / event_base_loopexit(). */
int bs_base_got_break(bs_base *base);
int bs_base_got_exit(bs_base *base);

LibEvent *bs_event_new(bs_base *base, int fd, int events, EventCallback c_cb, void *c_arg);
void bs_event_release(LibEvent *ev);
int bs_event_add(LibEvent *ev, double timeout);
int bs_event_del(LibEvent *ev);
int bs_event_active(LibEvent *ev, int what);
int bs_event_pending(LibEvent *ev, int what);
void bs_set_release_probe(int on);

#ifndef BS_CDEF
/* For the other shim files only. */
#include "export.h"
/* Process-wide lock of every base's children list. */
void bs_tree_lock(void);
void bs_tree_unlock(void);
/* Link a record to its base (fails with -1 when the base is closing); unlink it (tree lock). */
int bs_node_attach(bs_base *base, bs_node *node, void (*orphan)(bs_node *));
void bs_node_detach_locked(bs_node *node);
/* Wipe a record with bs_memory_cleanse, report it to the test probe, free it. */
void bs_record_free(void *record, size_t size);
/* Seconds (>= 0, checked by Python) as a timeval: the package's one conversion. */
void bs_to_timeval(double seconds, struct timeval *tv);
/* Around a callback of one of the base's children: the base is not freed under it. */
void bs_base_enter(bs_base *base);
void bs_base_leave(bs_base *base);
#endif

#endif
