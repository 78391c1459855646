/*
 * aio_stream.c - reads and writes of aio.EventLoop's stream transports, in C
 * (bitcoin_support/_aio_transport.py is the Python half; aio_stream.h the record).
 *
 * Reading: the read event's C callback calls recv() once into the loop's buffer and hands
 * Python one call with the count (or EOF, or the error); Python makes the bytes object.
 * Writing: the transport's write sends at once what the socket takes and queues the rest in
 * an evbuffer; the write event's C callback sends from the queue and calls Python only when
 * the protocol must be resumed or Python asked to hear of the queue emptying. Sends use
 * MSG_NOSIGNAL: a C host need not ignore SIGPIPE.
 *
 * Lifetime of the record: Python owns it (made in the transport's constructor, freed by
 * bs_aio_stream_free when the transport releases). The events' records are Python's LibEvents;
 * Python clears rev/wev (bs_aio_stream_set_events(s, NULL, NULL)) before it closes them. A
 * callback here calls Python, which may free the record: busy counts the callbacks running, and
 * a free while busy only marks it dead; the outermost callback frees it on its way out.
 */
#include "bitcoin_support.h"
#include "aio_stream.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/event.h>

/* Pieces of the queue one sendmsg() takes. */
#define BS_STREAM_IOV 16

static void stream_destroy(bs_aio_stream *s)
{
    if (s->out != NULL)
        evbuffer_free(s->out);
    s->out = NULL;
    free(s);
}

bs_aio_stream *bs_aio_stream_new(int fd, void *py, char *rbuf, size_t rbuf_size)
{
    bs_aio_stream *s = calloc(1, sizeof *s);

    if (s == NULL)
        return NULL;
    s->out = evbuffer_new();
    if (s->out == NULL) {
        free(s);
        return NULL;
    }
    s->fd = fd;
    s->rbuf = rbuf; /* the loop's buffer, also held by the transport (its _rbuf) until it
                       frees this record */
    s->rbuf_size = rbuf_size;
    s->py = py; /* the transport's ffi.new_handle: cleared in bs_aio_stream_free, the one
                   place Python drops the handle after (StreamTransport._release) */
    return s;
}

void bs_aio_stream_set_events(bs_aio_stream *s, LibEvent *rev, LibEvent *wev)
{
    /* Borrowed: Python's LibEvents own them, and call this with NULLs before closing them. */
    s->rev = rev;
    s->wev = wev;
}

void bs_aio_stream_free(bs_aio_stream *s)
{
    if (s == NULL)
        return;
    s->py = NULL;
    s->rev = s->wev = NULL;
    if (s->busy > 0) {
        s->dead = 1; /* freed by the callback running now (stream_call) */
        return;
    }
    stream_destroy(s);
}

/* Call Python about s; returns 1 when s was freed meanwhile (then it must not be touched). */
static int stream_call(bs_aio_stream *s, int kind, size_t n)
{
    if (s->py == NULL)
        return 0;
    s->busy++;
    bs_py_aio_stream_ready(s->py, kind, n);
    if (--s->busy == 0 && s->dead) {
        stream_destroy(s);
        return 1;
    }
    return s->dead;
}

static void write_event(bs_aio_stream *s, int on)
{
    if (s->wev != NULL && s->wev->ev != NULL) {
        if (on)
            event_add(s->wev->ev, NULL);
        else
            event_del(s->wev->ev);
    }
}

void bs_aio_stream_read_cb(LibEvent *ev, void *arg)
{
    bs_aio_stream *s = arg;
    ssize_t n;

    (void)ev;
    if (s->dead)
        return;
    if (s->buffered_proto) {
        stream_call(s, BS_STREAM_READABLE, 0);
        return;
    }
    do
        n = recv(s->fd, s->rbuf, s->rbuf_size, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        stream_call(s, BS_STREAM_DATA, (size_t)n);
    else if (n == 0)
        stream_call(s, BS_STREAM_EOF, 0);
    else if (errno != EAGAIN && errno != EWOULDBLOCK)
        stream_call(s, BS_STREAM_READ_ERR, (size_t)errno);
}

/* Send from the queue: 0 when done for now, or the errno of a failed send. */
static int flush_queue(bs_aio_stream *s)
{
    struct evbuffer_iovec v[BS_STREAM_IOV];
    struct iovec iov[BS_STREAM_IOV];
    struct msghdr mh = {0};
    int nv = evbuffer_peek(s->out, -1, NULL, v, BS_STREAM_IOV);
    ssize_t n;

    if (nv > BS_STREAM_IOV)
        nv = BS_STREAM_IOV;
    if (nv <= 0)
        return 0;
    for (int i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)nv;
    do
        n = sendmsg(s->fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
    evbuffer_drain(s->out, (size_t)n);
    return 0;
}

void bs_aio_stream_write_cb(LibEvent *ev, void *arg)
{
    bs_aio_stream *s = arg;
    int err;

    (void)ev;
    if (s->dead)
        return;
    err = flush_queue(s);
    if (err != 0) {
        bs_aio_stream_clear(s);
        stream_call(s, BS_STREAM_WRITE_ERR, (size_t)err);
        return;
    }
    if (s->paused && evbuffer_get_length(s->out) <= s->low_water &&
        stream_call(s, BS_STREAM_LOW, 0))
        return;
    /* resume_writing may have queued more, or Python may have cleared the queue. */
    if (s->out != NULL && evbuffer_get_length(s->out) == 0) {
        write_event(s, 0);
        if (s->notify_empty)
            stream_call(s, BS_STREAM_EMPTY, 0);
    }
}

long long bs_aio_stream_write(bs_aio_stream *s, const char *data, size_t len)
{
    size_t queued = evbuffer_get_length(s->out);

    if (queued == 0) {
        ssize_t n;

        do
            n = send(s->fd, data, len, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -(long long)errno;
            n = 0;
        }
        data += n;
        len -= (size_t)n;
        if (len == 0)
            return 0;
    }
    if (evbuffer_add(s->out, data, len) != 0)
        return -(long long)ENOMEM;
    if (queued == 0)
        write_event(s, 1);
    return (long long)evbuffer_get_length(s->out);
}

size_t bs_aio_stream_buffered(bs_aio_stream *s)
{
    return s->out == NULL ? 0 : evbuffer_get_length(s->out);
}

void bs_aio_stream_clear(bs_aio_stream *s)
{
    if (s->out != NULL)
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
    write_event(s, 0);
}
