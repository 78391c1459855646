/*
 * aio_stream.h - the C half of aio.EventLoop's stream transports (aio_stream.c, with
 * bitcoin_support/_aio_transport.py): a connected TCP or Unix stream socket whose reads and
 * writes run in C. One copy for C and cffi (see event.h).
 *
 * The record's fields below "Python's" are set by Python (flags that decide when C must call
 * it back); the others are C's. Python calls C on a write; C calls Python (bs_py_aio_stream_ready)
 * with data read, at EOF, on an error, when the write queue drops to low water while the
 * protocol is paused, and when it empties while Python asked to hear of it.
 */
#ifndef BS_AIO_STREAM_H
#define BS_AIO_STREAM_H

#include <stddef.h>

#include "event.h"

/* What bs_py_aio_stream_ready reports (kind); n is the byte count for DATA (the bytes are at the
   start of the record's rbuf), the errno for the errors, 0 otherwise. */
enum {
    BS_STREAM_DATA = 1,      /* bytes were read: data, len */
    BS_STREAM_EOF = 2,       /* the peer ended its side (recv returned 0) */
    BS_STREAM_READ_ERR = 3,  /* recv failed: err */
    BS_STREAM_READABLE = 4,  /* readable, nothing read: a BufferedProtocol reads in Python */
    BS_STREAM_WRITE_ERR = 5, /* send failed: err (the queue was dropped) */
    BS_STREAM_LOW = 6,       /* the queue dropped to low_water while paused was set */
    BS_STREAM_EMPTY = 7      /* the queue emptied while notify_empty was set */
};

typedef struct bs_aio_stream bs_aio_stream;

struct bs_aio_stream {
    int fd;
    LibEvent *rev;          /* read event (EV_READ|EV_PERSIST, callback bs_aio_stream_read_cb) */
    LibEvent *wev;          /* write event (EV_WRITE|EV_PERSIST, bs_aio_stream_write_cb) */
    void *py;               /* ffi.new_handle of the Python transport, owned by it */
    void *out;              /* struct evbuffer * of bytes waiting to be sent */
    char *rbuf;             /* where reads land: the loop's buffer (Python's, outlives this) */
    size_t rbuf_size;
    int busy;               /* C callbacks of this record running now (they call Python) */
    int dead;               /* freed while busy: the outermost callback frees it */
    /* Python's: */
    int buffered_proto;     /* the protocol is a BufferedProtocol: report READABLE, not DATA */
    int paused;             /* the protocol's writing is paused: report LOW at low_water */
    int notify_empty;       /* report EMPTY when the queue empties (close, write_eof, sendfile) */
    size_t low_water;
};

/* A record for connected non-blocking socket fd, with the Python transport's handle; NULL when
   out of memory. rbuf (rbuf_size bytes) is the loop's read buffer: one loop's streams read on
   one thread at a time, and Python copies the bytes out before anything else reads. Its
   events are made by Python with the two callbacks below as C callbacks and the record as
   their argument, then given to it with bs_aio_stream_set_events. */
bs_aio_stream *bs_aio_stream_new(int fd, void *py, char *rbuf, size_t rbuf_size);
void bs_aio_stream_set_events(bs_aio_stream *s, LibEvent *rev, LibEvent *wev);
/* Drop the queue and free the record (deferred to the running callback if one is). */
void bs_aio_stream_free(bs_aio_stream *s);
void bs_aio_stream_read_cb(LibEvent *ev, void *arg);
void bs_aio_stream_write_cb(LibEvent *ev, void *arg);
/* Send what the socket takes now and queue the rest (adding the write event when the queue was
   empty). Returns the bytes queued after the call, or -errno when send failed (nothing queued
   then). */
long long bs_aio_stream_write(bs_aio_stream *s, const char *data, size_t len);
/* Bytes queued; drop them all (and stop waiting for writability). */
size_t bs_aio_stream_buffered(bs_aio_stream *s);
void bs_aio_stream_clear(bs_aio_stream *s);

#ifdef BS_CDEF
extern "Python+C" {
#endif
/* _aio_transport.py: see the enum above. */
void bs_py_aio_stream_ready(void *py, int kind, size_t n);
#ifdef BS_CDEF
}
#endif

#endif
