/*
 * http_internal.h - what only the http_*.c files share (cffi never reads this header): the
 * request records' holders and helpers, the framer (http_framing.c), body delivery
 * (http_body.c) and the framing filter (http_filter.c, http_filter_write.c) with its
 * connections (http_stream.c).
 */
#ifndef BS_HTTP_INTERNAL_H
#define BS_HTTP_INTERNAL_H

#include "http.h"

#include <event2/bufferevent.h>

/* For the http_*.c files only (http_request.c unless said otherwise). */
/* Holders of a record. */
#define BS_HOLD_PY 0x01u /* the Python EvHttpRequest wrapper (until it is closed) */
#define BS_HOLD_EV 0x02u /* libevent may still call back with it */
#define BS_HOLD_SENT 0x04u /* on_sent callbacks pending: sent_ev will run (http_reply.c) */
#define BS_HOLD_BODY 0x08u /* a streamed body's end is still to be told (http_stream.c) */
extern __thread int bs_in_orphan; /* a base is freeing its children: no calls into Python */
bs_http_req_t *bs_rec_new(int state, unsigned holds);
void bs_rec_enter(bs_http_req_t *rec, int state);
void bs_rec_drop(bs_http_req_t *rec, unsigned hold);
void bs_rec_hold(bs_http_req_t *rec, unsigned hold);
void bs_stop_counting(bs_http_req_t *rec); /* http_reply.c */
/* The framing filter on each connection (see the last part of this header) */
#define BS_PAUSE_AT (1u << 20)   /* body bytes waiting for Python before reading pauses */
#define BS_RESUME_AT (256u << 10)
int bs_stream_claim(bs_evhttp *h, bs_http_req_t *rec, struct evhttp_request *r);
int bs_stream_offered(bs_evhttp *h, struct evhttp_request *r);
void bs_stream_unclaimed(bs_evhttp *h, struct evhttp_request *r);
void bs_stream_server_gone(bs_evhttp *h);
int bs_stream_update(bs_evhttp *h);
void bs_stream_unlink(bs_http_req_t *rec); /* http_filter.c */
void bs_stream_resume(struct bs_stream_conn *c); /* http_filter.c */
void bs_stream_linger(struct bs_stream_conn *c); /* http_filter.c */
/* http_body.c: a stream request's body, given to Python */
int bs_body_start(bs_http_req_t *rec);
void bs_body_wake(bs_http_req_t *rec);
void bs_body_final(bs_http_req_t *rec, int status);
void bs_rec_enter_call(bs_http_req_t *rec);
void bs_rec_leave_call(bs_http_req_t *rec);
void bs_rec_fatal(const char *what);
void bs_stop_watch(bs_http_req_t *rec);
void bs_conn_link(bs_http_req_t *rec, bs_evconn *c);
void bs_conn_unlink(bs_http_req_t *rec);
void bs_add_date(struct evkeyvalq *out);
/* Link a server or connection record to its base (-1: the base is closing). */
int bs_later_attach(bs_base *b, bs_later *l, void (*free_now)(bs_later *), size_t size);
/* Free it on the next loop round (-1 when that cannot be arranged: free it now instead). */
int bs_later_schedule(bs_later *l, struct event_base *base);
/* Unlink it, free its libevent object, wipe and free it. */
void bs_later_free(bs_later *l);
struct evconnlistener;
void bs_guards_free(bs_evhttp *h, struct evconnlistener *lev); /* http_accept.c */


/* ---- the framer (http_framing.c): bytes in, framing events out ---- */

#define BS_HEAD_DEFAULT 65536 /* the head limit when none is set */
#define BS_LENGTH_HUGE (1ull << 62) /* a Content-Length at least this large gets 413 */
#define BS_HTTP_NMETHODS 9
extern const char *const bs_http_methods[BS_HTTP_NMETHODS]; /* the methods libevent 2.1 knows */

enum { BS_BODY_NONE = 0, BS_BODY_SIZED, BS_BODY_CHUNKED };

/* What a request head says, offsets relative to its first byte. */
typedef struct bs_head {
    size_t len;                  /* request line to the empty line, CRLFs included */
    int method;                  /* index in bs_http_methods, -1 for another token */
    int minor;                   /* HTTP/1.minor */
    size_t target, target_len;   /* the request-target */
    int body;                    /* BS_BODY_* */
    unsigned long long length;   /* Content-Length (BS_BODY_SIZED) */
    size_t frame, frame_len;     /* the Content-Length or Transfer-Encoding line with its CRLF */
    int expect;                  /* an Expect field */
} bs_head;

typedef struct bs_framer {
    int state;
    int error;                   /* the refusal's status, once refused */
    size_t max_head;
    size_t scan;                 /* bytes of the head or trailers checked so far */
    size_t line;                 /* bytes of the current line so far */
    int cr;                      /* the last byte checked was a CR */
    int lead;                    /* the empty line before this request line was skipped */
    unsigned long long left;     /* of the sized body or the current chunk */
    unsigned long long size;     /* of the sized body, so far */
} bs_framer;

/* Events of bs_framer_next; *n says how many bytes at the front of src the event is about
   (the caller takes exactly those before the next call), or the status for BS_FR_ERROR. */
enum {
    BS_FR_MORE = 0, /* nothing yet: more bytes needed */
    BS_FR_SKIP,     /* an empty line before a request line: drop it */
    BS_FR_HEAD,     /* a request head (filled in *head) */
    BS_FR_DATA,     /* body data */
    BS_FR_META,     /* chunked framing: a size line, the CRLF after data, the trailer section */
    BS_FR_END,      /* the body's end (no bytes) */
    BS_FR_ERROR     /* refused: 400, or 431 for a head over the limit; final */
};

void bs_framer_init(bs_framer *f, size_t max_head);
int bs_framer_next(bs_framer *f, struct evbuffer *src, bs_head *head, size_t *n);
void bs_framer_took(bs_framer *f, size_t n);

/* ---- the framing filter (http_filter.c reads, http_filter_write.c writes) and its
        connections (http_stream.c) ---- */

/* A connection's mode, and where the body being framed goes */
enum { BS_CONN_FRAME, BS_CONN_BODY, BS_CONN_HOLD, BS_CONN_DEAD };
enum { BS_DEST_PASS, BS_DEST_CHUNK, BS_DEST_STREAM, BS_DEST_DROP };

typedef struct bs_stream_conn {
    struct bs_stream_conn *prev, *next; /* in the server's list */
    bs_evhttp *h;                       /* NULL once the server is freed */
    struct bufferevent *bev;            /* the filter libevent reads */
    struct bufferevent *under;          /* the socket's own bufferevent (ours) */
    bs_framer fr;
    int mode;
    int dest;                           /* where the body being framed goes */
    unsigned long long size;            /* body bytes so far (the limit) */
    unsigned long long max_body;        /* the server's limits, kept for after it is gone */
    size_t max_head;
    int offered;                        /* a stream head passed, not claimed yet */
    int reply_done;                     /* the current request's reply is complete */
    int wrote_reply;                    /* libevent wrote a reply since the head passed */
    int paused;                         /* reading stopped: Python has PAUSE_AT bytes waiting */
    int error;                          /* 413 or 400 found before the claim */
    int ended;                          /* the stream body ended before the claim */
    int linger;                         /* close slowly (a refusal was sent) */
    struct evbuffer *pending;           /* stream body read before the claim */
    struct event *wr;                   /* the socket is writable: write the reply on */
    struct event *rd;                   /* read on, from the loop (never inside libevent) */
    int writing;                        /* inside wr_cb: the one place bs_filter_out writes */
    int armed;                          /* wr_cb is due (active, or waiting for EV_WRITE) */
    bs_http_req_t *rec;                 /* the claimed record (BODY holder) */
    char *length, *coding;              /* the framing line libevent did not see */
} bs_stream_conn;

int bs_filter_alive(bs_stream_conn *c);   /* libevent has not freed the connection yet */
int bs_filter_reading(bs_stream_conn *c); /* libevent reads: it is not writing a reply */
void bs_filter_read_on(bs_stream_conn *c);
void bs_filter_read_cb(evutil_socket_t fd, short what, void *arg);
void bs_filter_reply_complete(bs_stream_conn *c);
enum bufferevent_filter_result bs_filter_in(struct evbuffer *src, struct evbuffer *dst,
                                            ev_ssize_t lim, enum bufferevent_flush_mode how,
                                            void *arg);
/* http_filter_write.c */
enum bufferevent_filter_result bs_filter_out(struct evbuffer *src, struct evbuffer *dst,
                                             ev_ssize_t lim, enum bufferevent_flush_mode how,
                                             void *arg);
void bs_filter_out_added(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

#endif
