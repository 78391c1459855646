/*
 * event.c - the C side of the libevent handles: records, trampolines, the children tree.
 *
 * One C trampoline per callback ABI. libevent calls bs_event_trampoline with the LibEvent record
 * as its arg; the trampoline either calls the user's C EventCallback directly (no Python at all)
 * or the "Python+C" function bs_py_event_fired with the ffi.new_handle of the Python LibEvent. No
 * ffi.callback anywhere, so no writable-and-executable memory.
 *
 * Who owns what is told once, in docs/design/lifetimes.md; this file holds the C half
 * (the children tree and its orphans, the trampoline that outlives its record's release).
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "event.h"
#include "callbacks.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/thread.h>

#define EV_ALL_RESULTS (EV_TIMEOUT | EV_READ | EV_WRITE | EV_SIGNAL | EV_CLOSED)
#define EVLIST_BUSY \
    (EVLIST_INSERTED | EVLIST_TIMEOUT | EVLIST_SIGNAL | EVLIST_ACTIVE | EVLIST_ACTIVE_LATER)

/* The two places this file reads libevent's private event flags (ev_evcallback.evcb_flags, from
   <event2/event_struct.h>), because libevent 2.1's public API has no equivalent:
   - mark_internal(): there is no public way to make an event "internal", i.e. not counted as work,
     so that event_base_loop() still returns 1 ("no events") when only the base's own notify and
     wakeup events remain;
   - still_busy(): "is this event inserted, timed or queued at all", asked by the trampoline around
     every callback; event_pending() answers per result flag and takes the base's lock each call.
     (Python's LibEvent asks its narrower "pending for a result flag?" through event_pending().)
   The layout of struct event is libevent 2.1's: tests/test_event.py pins the version, so that a
   new libevent fails a test instead of reading a wrong field. */
static void mark_internal(struct event *ev)
{
    ev->ev_evcallback.evcb_flags |= EVLIST_INTERNAL;
}

static int still_busy(const struct event *ev)
{
    return (ev->ev_evcallback.evcb_flags & EVLIST_BUSY) != 0;
}

static pthread_mutex_t tree_mutex = PTHREAD_MUTEX_INITIALIZER;
static atomic_int release_probe;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result = -1;

/* ---------------------------------------------------------------- set-up and the tree */

static void init_threads(void)
{
    init_result = evthread_use_pthreads();
}

/* evthread_use_pthreads() once per process, before the first base. */
int bs_event_init(void)
{
    pthread_once(&init_once, init_threads);
    return init_result;
}

void bs_tree_lock(void)
{
    pthread_mutex_lock(&tree_mutex);
}

void bs_tree_unlock(void)
{
    pthread_mutex_unlock(&tree_mutex);
}

int bs_node_attach(bs_base *base, bs_node *node, void (*orphan)(bs_node *))
{
    int rc = -1;
    bs_tree_lock();
    if (!base->closing) {
        node->owner = base;
        node->orphan = orphan;
        node->prev = base->children.prev;
        node->next = &base->children;
        base->children.prev->next = node;
        base->children.prev = node;
        rc = 0;
    }
    bs_tree_unlock();
    return rc;
}

void bs_node_detach_locked(bs_node *node)
{
    if (node->owner == NULL)
        return;
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = NULL;
    node->owner = NULL;
}

void bs_set_release_probe(int on)
{
    atomic_store(&release_probe, on != 0);
}

void bs_record_free(void *record, size_t size)
{
    bs_memory_cleanse(record, size);
    if (atomic_load_explicit(&release_probe, memory_order_relaxed))
        bs_py_handle_wiped(record, size);
    free(record);
}

/* ---------------------------------------------------------------- bases */

static void base_destroy(bs_base *b, int in_loop);

/* Around a callback of one of the base's children (events, evhttp): the base is not freed
   under it; a release made inside it is finished when the last such callback returns. */
void bs_base_enter(bs_base *b)
{
    b->depth++;
}

void bs_base_leave(bs_base *b)
{
    if (--b->depth == 0 && b->dead)
        base_destroy(b, 1);
}

/* in_loop: called from a trampoline, inside the base's own loop, where event_base_free would
   pull the loop out from under libevent. That only happens when the last reference to a base
   dies inside one of its callbacks, which EventBase.loop() prevents for bases it runs, so the
   event_base is then left allocated rather than freed under libevent's feet. */
static void base_destroy(bs_base *b, int in_loop)
{
    if (b->owned && b->base != NULL && !in_loop)
        event_base_free(b->base);
    bs_record_free(b, sizeof *b);
}

static void base_internal_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_base *b = arg;
    char buf[256];

    if (what & EV_READ) {
        while (recv(fd, buf, sizeof buf, 0) > 0)
            ;
    }
    b->depth++;
    if (b->py != NULL) {
        bs_py_base_notified(b->py);
        /* libevent does not count internal callbacks as work done, so loop(EVLOOP_ONCE) would
           go back to waiting after running queued calls; activating an ordinary event in the
           same pass makes the run count. */
        if (b->ran != NULL)
            event_active(b->ran, EV_TIMEOUT, 0);
    }
    if (--b->depth == 0 && b->dead)
        base_destroy(b, 1);
}

static void ran_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static int base_init_notify(bs_base *b)
{
    b->ran = event_new(b->base, -1, 0, ran_cb, NULL);
    if (b->ran == NULL)
        return -1;
    b->notify = event_new(b->base, -1, 0, base_internal_cb, b);
    if (b->notify == NULL) {
        event_free(b->ran);
        b->ran = NULL;
        return -1;
    }
    /* Internal events do not keep event_base_loop() from returning "no events". */
    mark_internal(b->notify);
    return 0;
}

static bs_base *base_alloc(void)
{
    bs_base *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->children.prev = b->children.next = &b->children;
    b->wake_fds[0] = b->wake_fds[1] = -1;
    return b;
}

bs_base *bs_base_new(int dummy, int flags)
{
    struct event_config *cfg;
    bs_base *b;

    if (bs_event_init() != 0) {
        errno = ENOSYS;
        return NULL;
    }
    b = base_alloc();
    if (b == NULL)
        return NULL;
    b->owned = 1;
    if (dummy)
        return b;
    cfg = event_config_new();
    if (cfg == NULL)
        goto fail;
    if (flags != 0 && event_config_set_flag(cfg, flags) != 0) {
        event_config_free(cfg);
        goto fail;
    }
    b->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (b->base == NULL || base_init_notify(b) != 0)
        goto fail;
    return b;
fail:
    if (errno == 0)
        errno = ENOMEM;
    base_destroy(b, 0);
    return NULL;
}

bs_base *bs_base_wrap(struct event_base *base)
{
    bs_base *b;

    if (base == NULL) {
        errno = EINVAL;
        return NULL;
    }
    b = base_alloc();
    if (b == NULL)
        return NULL;
    b->base = base;
    if (base_init_notify(b) != 0) {
        base_destroy(b, 0);
        errno = ENOMEM;
        return NULL;
    }
    return b;
}

void bs_base_release(bs_base *b)
{
    int i;

    bs_tree_lock();
    b->closing = 1;
    while (b->children.prev != &b->children) {
        bs_node *n = b->children.prev; /* newest first */
        bs_node_detach_locked(n);
        n->orphan(n);
    }
    bs_tree_unlock();
    b->py = NULL;
    if (b->notify != NULL) {
        event_free(b->notify);
        b->notify = NULL;
    }
    if (b->ran != NULL) {
        event_free(b->ran);
        b->ran = NULL;
    }
    if (b->wake != NULL) {
        event_free(b->wake);
        b->wake = NULL;
    }
    for (i = 0; i < 2; i++) {
        if (b->wake_fds[i] >= 0)
            close(b->wake_fds[i]);
        b->wake_fds[i] = -1;
    }
    if (b->depth > 0) {
        b->dead = 1; /* the trampoline running now frees it when its callback returns */
        return;
    }
    base_destroy(b, 0);
}

/* Wake the loop from any thread: activates the internal notify event. */
int bs_base_notify(bs_base *b)
{
    if (b->notify == NULL)
        return -1;
    event_active(b->notify, EV_TIMEOUT, 0);
    return 0;
}

/* The write end of a socketpair watched by the base (created on first use, loop thread only):
   given to signal.set_wakeup_fd so a signal wakes a blocked dispatch. */
int bs_base_wake_fd(bs_base *b)
{
    if (b->base == NULL)
        return -1;
    if (b->wake != NULL)
        return b->wake_fds[1];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, b->wake_fds) != 0)
        goto fail;
    b->wake = event_new(b->base, b->wake_fds[0], EV_READ | EV_PERSIST, base_internal_cb, b);
    if (b->wake == NULL)
        goto fail;
    mark_internal(b->wake);
    if (event_add(b->wake, NULL) != 0)
        goto fail;
    return b->wake_fds[1];
fail:
    if (b->wake != NULL)
        event_free(b->wake);
    b->wake = NULL;
    for (int i = 0; i < 2; i++) {
        if (b->wake_fds[i] >= 0)
            close(b->wake_fds[i]);
        b->wake_fds[i] = -1;
    }
    return -1;
}

/* The wrappers below return an error for a dummy (no event_base) rather than crash. */
int bs_base_loop(bs_base *b, int flags)
{
    return b->base == NULL ? -1 : event_base_loop(b->base, flags);
}

int bs_base_loopbreak(bs_base *b)
{
    return b->base == NULL ? -1 : event_base_loopbreak(b->base);
}

/* The one conversion of seconds (checked in Python: _args._seconds) to a timeval. */
void bs_to_timeval(double seconds, struct timeval *tv)
{
    tv->tv_sec = (time_t)seconds;
    tv->tv_usec = (suseconds_t)((seconds - (double)tv->tv_sec) * 1e6);
    if (tv->tv_usec >= 1000000)
        tv->tv_usec = 999999;
}

/* timeout < 0: exit after the current round of callbacks. */
int bs_base_loopexit(bs_base *b, double timeout)
{
    struct timeval tv;

    if (b->base == NULL)
        return -1;
    if (timeout < 0)
        return event_base_loopexit(b->base, NULL);
    bs_to_timeval(timeout, &tv);
    return event_base_loopexit(b->base, &tv);
}

double bs_base_now(bs_base *b)
{
    struct timeval tv;

    if (b->base == NULL || event_base_gettimeofday_cached(b->base, &tv) != 0)
        return -1.0;
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

const char *bs_base_backend(bs_base *b)
{
    return b->base == NULL ? "" : event_base_get_method(b->base);
}

int bs_base_got_break(bs_base *b)
{
    return b->base == NULL ? 0 : event_base_got_break(b->base);
}

int bs_base_got_exit(bs_base *b)
{
    return b->base == NULL ? 0 : event_base_got_exit(b->base);
}

/* ---------------------------------------------------------------- events */

/* Ownership rule of the trampoline: nothing read before the callback is used after it unless
   it is still owned. The record itself is: while e->running > 0 (under the tree lock),
   bs_event_release frees the libevent event but leaves the record to the trampoline (e->dead).
   Everything else is re-read from the record after the callback: e->ev (NULL once released or
   orphaned) and e->py, the ffi.new_handle of the Python LibEvent, which is non-NULL only while
   the Python handle holds it (its keep-alive). The owner base is not freed under us either: its
   release from inside a callback is deferred through depth and dead (bs_base_release). */
static void bs_event_trampoline(evutil_socket_t fd, short what, void *arg)
{
    LibEvent *e = arg;
    bs_base *owner = e->node.owner; /* non-NULL: an orphan's event is freed, so never fires */
    int again = 0, free_it, pending;

    (void)fd;
    e->fired = what;
    bs_tree_lock();
    e->running++;
    bs_tree_unlock();
    owner->depth++;
    pending = still_busy(e->ev);
    if (e->c_cb != NULL)
        e->c_cb(e, e->c_arg);
    else if (e->py != NULL)
        again = bs_py_event_fired(e->py, pending); /* the handle is resolved before the callback */
    bs_tree_lock();
    free_it = --e->running == 0 && e->dead;
    bs_tree_unlock();
    if (free_it) {
        bs_record_free(e, sizeof *e);
    } else if (e->ev != NULL) {
        if ((again & BS_EVENT_READD) && bs_event_add(e, e->readd) != 0 && e->py != NULL &&
            !(again & EV_ALL_RESULTS))
            bs_py_event_unheld(e->py); /* the re-add failed (no memory): not held any more */
        if (again & EV_ALL_RESULTS) {
            event_active(e->ev, again & EV_ALL_RESULTS, 1);
        } else if (again == 0 && e->c_cb != NULL && e->py != NULL && !still_busy(e->ev)) {
            bs_py_event_unheld(e->py); /* fired, not re-added: the base stops holding it */
        }
    }
    if (--owner->depth == 0 && owner->dead)
        base_destroy(owner, 1);
}

static void event_orphan(bs_node *n)
{
    LibEvent *e = (LibEvent *)n;

    if (e->ev != NULL)
        event_free(e->ev);
    e->ev = NULL;
    e->py = NULL;
}

LibEvent *bs_event_new(bs_base *b, int fd, int events, EventCallback c_cb, void *c_arg)
{
    LibEvent *e = calloc(1, sizeof *e);

    if (e == NULL)
        return NULL;
    e->c_cb = c_cb;
    e->c_arg = c_arg;
    if (b->base != NULL) {
        e->ev = event_new(b->base, fd, (short)events, bs_event_trampoline, e);
        if (e->ev == NULL) {
            bs_record_free(e, sizeof *e);
            errno = EINVAL;
            return NULL;
        }
    }
    if (bs_node_attach(b, &e->node, event_orphan) != 0) {
        if (e->ev != NULL)
            event_free(e->ev);
        bs_record_free(e, sizeof *e);
        errno = EPIPE;
        return NULL;
    }
    return e;
}

void bs_event_release(LibEvent *e)
{
    struct event *ev;
    int free_it;

    bs_tree_lock();
    bs_node_detach_locked(&e->node);
    ev = e->ev;
    e->ev = NULL;
    e->py = NULL;
    if (e->running > 0)
        e->dead = 1; /* its trampoline is running: it frees the record when the callback returns */
    free_it = !e->dead;
    bs_tree_unlock();
    if (ev != NULL)
        event_free(ev); /* safe inside the event's own callback, on the loop thread */
    if (free_it)
        bs_record_free(e, sizeof *e);
}

/* timeout < 0: no timeout. */
int bs_event_add(LibEvent *e, double timeout)
{
    struct timeval tv;

    if (e->ev == NULL) {
        errno = EBADF;
        return -1;
    }
    errno = 0;
    if (timeout < 0)
        return event_add(e->ev, NULL);
    bs_to_timeval(timeout, &tv);
    return event_add(e->ev, &tv);
}

int bs_event_del(LibEvent *e)
{
    return e->ev == NULL ? -1 : event_del(e->ev);
}

/* -1: no libevent object; -2: what has bits that are not event results. */
int bs_event_active(LibEvent *e, int what)
{
    if (e->ev == NULL)
        return -1;
    if (what & ~EV_ALL_RESULTS)
        return -2;
    /* ncalls 1: libevent runs a signal event's callback ncalls times (0 would be never) and
       ignores ncalls for the other kinds. */
    event_active(e->ev, what, 1);
    return 0;
}

int bs_event_pending(LibEvent *e, int what)
{
    return e->ev == NULL ? 0 : event_pending(e->ev, (short)what, NULL);
}
