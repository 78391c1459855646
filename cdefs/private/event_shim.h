/*
 * event_shim.h - private records of the libevent handles (event.c), shared with the cffi module
 * and with the other shim files that add handle types (evhttp).
 *
 * Every handle record created on a base starts with a bs_node linking it into its base's list of
 * children, under one process-wide tree lock. When a base is released it walks that list (newest
 * first) and calls each node's orphan function, which frees the libevent object the record owns
 * and leaves the record itself to its Python owner. So whatever order the Python finalizers run
 * in (cyclic garbage has none), no libevent object ever outlives its event_base.
 */
#ifndef BS_EVENT_SHIM_H
#define BS_EVENT_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "bitcoin_support.h"

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
    int running;                /* trampolines running its callback now (tree lock) */
    int dead;                   /* released while running: the trampoline frees it (tree lock) */
};

/* Process-wide lock of every base's children list. */
void bs_tree_lock(void);
void bs_tree_unlock(void);
/* Link a record to its base (fails with -1 when the base is closing); unlink it (tree lock). */
int bs_node_attach(bs_base *base, bs_node *node, void (*orphan)(bs_node *));
void bs_node_detach_locked(bs_node *node);
/* Wipe a record with bs_memory_cleanse, report it to the test probe, free it. */
void bs_record_free(void *record, size_t size);

/* The "Python+C" functions of cdefs/callbacks.h, defined by the cffi module. */
int bs_py_event_cb(void *handle, int pending);
void bs_py_event_unheld(void *handle);
void bs_py_base_cb(void *handle);
void bs_py_release_probe(void *record, size_t size);

int bs_event_init(void);
bs_base *bs_base_new(int dummy, int flags);
bs_base *bs_base_wrap(struct event_base *base);
void bs_base_release(bs_base *base);
void bs_base_enter(bs_base *base);
void bs_base_leave(bs_base *base);
int bs_base_notify(bs_base *base);
int bs_base_wake_fd(bs_base *base);
int bs_base_loop(bs_base *base, int flags);
int bs_base_loopbreak(bs_base *base);
int bs_base_loopexit(bs_base *base, double timeout);
double bs_base_now(bs_base *base);
const char *bs_base_backend(bs_base *base);
int bs_base_got(bs_base *base, int which);
LibEvent *bs_event_new(bs_base *base, int fd, int events, EventCallback c_cb, void *c_arg);
void bs_event_release(LibEvent *ev);
int bs_event_add(LibEvent *ev, double timeout);
int bs_event_del(LibEvent *ev);
int bs_event_active(LibEvent *ev, int what);
int bs_event_pending(LibEvent *ev, int what);
void bs_set_release_probe(int on);

#endif
