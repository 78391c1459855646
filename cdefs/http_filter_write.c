/*
 * http_filter_write.c - the framing filter's write side (the read side is http_filter.c).
 *
 * Writing: the filter writes the replies to the socket itself (bs_filter_out). libevent's
 * callbacks that follow a write (a reply complete, then the connection freed if it closes)
 * run when the filter's output has drained; a filter that handed bytes on to the socket's
 * bufferevent would let them run, and the connection be freed, with those bytes unwritten.
 * Writing them at once keeps "drained" meaning "on the socket", so the reply's byte counting
 * (on_sent, output_buffered) is the same as on other connections. libevent also adds a reply
 * before it enables writing, which a filter does not notice: a callback on the output arms
 * the write event for it. The write is tried on the same loop round (the event is made active,
 * see write_soon); only a full socket makes it wait for writability. A reply is complete
 * when libevent, which clears its read callback while it writes, sets it again (wr_cb sees
 * it after the write that finished the reply).
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "http.h"
#include "http_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/bufferevent.h>

/* Write on this loop round, once libevent's call that queued the reply has returned: wr_cb
   is made active (no wait for the socket's readiness, which costs a poll and two epoll_ctl);
   only a socket that is full makes it wait for EV_WRITE. */
static void write_soon(bs_stream_conn *c)
{
    if (!c->armed && c->wr != NULL) { /* (libevent adds a reply in many pieces) */
        c->armed = 1;
        if (!event_pending(c->wr, EV_WRITE, NULL))
            event_active(c->wr, EV_WRITE, 1);
    }
}

/* Write what libevent queued straight to the socket (see "Writing" at the top). */
enum bufferevent_filter_result bs_filter_out(struct evbuffer *src, struct evbuffer *dst,
                                             ev_ssize_t lim, enum bufferevent_flush_mode how,
                                             void *arg)
{
    bs_stream_conn *c = arg;
    (void)dst;
    (void)lim;
    (void)how;
    evutil_socket_t fd = bufferevent_getfd(c->under);
    if (fd < 0)
        return BEV_NEED_MORE;
    if (!c->writing) { /* inside libevent's adding: write from the loop, once it set its callback */
        write_soon(c);
        return BEV_NEED_MORE;
    }
    int sent = 0;
    while (evbuffer_get_length(src) != 0) {
        struct evbuffer_iovec v[16];
        struct iovec io[16];
        int n = evbuffer_peek(src, -1, NULL, v, 16);
        if (n > 16)
            n = 16;
        for (int i = 0; i < n; i++) {
            io[i].iov_base = v[i].iov_base;
            io[i].iov_len = v[i].iov_len;
        }
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = io;
        m.msg_iovlen = (size_t)n;
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w > 0) {
            evbuffer_drain(src, (size_t)w);
            sent = 1;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (c->wr != NULL && event_add(c->wr, NULL) == 0)
                c->armed = 1; /* the socket is full: wr_cb runs once it is writable */
            break;
        }
        /* the peer is gone: libevent hears it as a write error, in the loop */
        bufferevent_trigger_event(c->bev, BEV_EVENT_ERROR | BEV_EVENT_WRITING,
                                  BEV_OPT_DEFER_CALLBACKS);
        return BEV_ERROR;
    }
    return sent ? BEV_OK : BEV_NEED_MORE;
}

static void wr_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_stream_conn *c = arg;
    (void)fd;
    (void)what;
    /* Not after libevent freed the connection (it disables writing first): the filter's
       memory lives until its deferred finalizer frees c and this event with it, but a flush
       would take and drop a reference again, and finalize it twice. */
    c->armed = 0;
    if (bs_filter_alive(c) && (bufferevent_get_enabled(c->bev) & EV_WRITE)) {
        int replying = !bs_filter_reading(c); /* (a "100 Continue" is written while it reads) */
        c->writing = 1;
        bufferevent_flush(c->bev, EV_WRITE, BEV_NORMAL); /* c is freed on a later round only */
        c->writing = 0;
        if (replying)
            c->wrote_reply = 1;
        if (replying && bs_filter_alive(c) && bs_filter_reading(c) && !c->reply_done)
            bs_filter_reply_complete(c); /* the reply is written and libevent reads again */
    }
}

void bs_filter_out_added(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    bs_stream_conn *c = arg;
    (void)buf;
    if (info->n_added == 0)
        return;
    if (c->wr == NULL) {
        evutil_socket_t fd = bufferevent_getfd(c->under);
        if (fd < 0)
            return;
        c->wr = event_new(bufferevent_get_base(c->bev), fd, EV_WRITE, wr_cb, c);
        if (c->wr == NULL)
            return;
    }
    write_soon(c);
}
