/*
 * http_accept.c - accept guards: a listener out of descriptors pauses instead of spinning.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "http.h"
#include "http_internal.h"
#include "callbacks.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include <event2/listener.h>

/* ---- accept guards: out of descriptors, pause accepting instead of spinning ---- */

/*
 * When accept() fails with EMFILE (or ENFILE, ENOBUFS, ENOMEM) the pending connection stays in
 * the kernel's queue, so a level-triggered listener would fire again at once: libevent 2.1 then
 * spins and prints a warning per attempt. A guard disables its listener on those errors and a
 * timer enables it again a little later, when some connections may have closed.
 *
 * Ownership: the EvHttp record owns its guards (a list); a guard is freed, and its timer with it,
 * before its listener is freed (bs_evhttp_del_accept) or the server is (evhttp_free_guarded).
 * The error callback finds its guard through a process-wide list under a mutex, because libevent
 * hands it only the listener and the evhttp.
 */
typedef struct bs_accept_guard {
    struct bs_accept_guard *next;      /* in the owner's list */
    struct bs_accept_guard *all_next;  /* in the process-wide list */
    struct evconnlistener *listener;
    struct event *retry;
} bs_accept_guard;

#define ACCEPT_RETRY_USEC 100000

static pthread_mutex_t guards_mu = PTHREAD_MUTEX_INITIALIZER;
static bs_accept_guard *all_guards;

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_accept_guard *g = arg;
    (void)fd;
    (void)what;
    evconnlistener_enable(g->listener);
}

static void accept_error_cb(struct evconnlistener *lev, void *ctx)
{
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval later = {0, ACCEPT_RETRY_USEC};
    (void)ctx;
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
        return; /* the connection's own failure (ECONNABORTED...): nothing to wait for */
    pthread_mutex_lock(&guards_mu);
    for (bs_accept_guard *g = all_guards; g != NULL; g = g->all_next) {
        if (g->listener == lev) {
            evconnlistener_disable(lev);
            event_add(g->retry, &later);
            break;
        }
    }
    pthread_mutex_unlock(&guards_mu);
}

BS_EXPORT int bs_evhttp_guard_accept(bs_evhttp *h, struct evhttp_bound_socket *bound)
{
    struct evconnlistener *lev = evhttp_bound_socket_get_listener(bound);
    bs_accept_guard *g = calloc(1, sizeof *g);
    if (g == NULL || lev == NULL)
        goto fail;
    g->listener = lev;
    g->retry = evtimer_new(evconnlistener_get_base(lev), accept_retry_cb, g);
    if (g->retry == NULL)
        goto fail;
    pthread_mutex_lock(&guards_mu);
    g->all_next = all_guards;
    all_guards = g;
    g->next = h->guards;
    h->guards = g;
    pthread_mutex_unlock(&guards_mu);
    evconnlistener_set_error_cb(lev, accept_error_cb);
    return 0;
fail:
    free(g);
    return -1;
}

/* Unlink and free the guards of h that watch lev (all of them when lev is NULL). */
void bs_guards_free(bs_evhttp *h, struct evconnlistener *lev)
{
    pthread_mutex_lock(&guards_mu);
    for (bs_accept_guard **pp = &h->guards; *pp != NULL;) {
        bs_accept_guard *g = *pp;
        if (lev != NULL && g->listener != lev) {
            pp = &g->next;
            continue;
        }
        *pp = g->next;
        for (bs_accept_guard **ap = &all_guards; *ap != NULL; ap = &(*ap)->all_next) {
            if (*ap == g) {
                *ap = g->all_next;
                break;
            }
        }
        event_free(g->retry);
        bs_memory_cleanse(g, sizeof *g);
        free(g);
    }
    pthread_mutex_unlock(&guards_mu);
}

BS_EXPORT void bs_evhttp_del_accept(bs_evhttp *h, struct evhttp_bound_socket *bound)
{
    bs_guards_free(h, evhttp_bound_socket_get_listener(bound));
    evhttp_del_accept_socket(h->http, bound);
}

