/*
 * http.h - evhttp (http_*.c): the request, route, server and connection records, and the shim's
 * functions. One copy for both readers, as event.h explains: cffi also sees the "#ifdef BS_CDEF"
 * block (the libevent calls Python makes, which C takes from libevent's headers) and skips the
 * "#ifndef BS_CDEF" ones (what only the C files share).
 */
#ifndef BS_HTTP_H
#define BS_HTTP_H

#include <stddef.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

#include "event.h"

#ifdef BS_CDEF
struct evhttp;
struct evhttp_request;
struct evhttp_connection;
struct evhttp_bound_socket;
struct evhttp_uri;
struct evbuffer;
struct evbuffer_cb_entry;
struct evkeyvalq;
struct evkeyval { char *key; char *value; ...; };

struct evhttp_bound_socket *evhttp_bind_socket_with_handle(struct evhttp *http,
                                                           const char *address, uint16_t port);
struct evhttp_bound_socket *evhttp_accept_socket_with_handle(struct evhttp *http, int fd);
int evhttp_bound_socket_get_fd(struct evhttp_bound_socket *bound);
int evhttp_set_cb(struct evhttp *http, const char *path,
                  void (*cb)(struct evhttp_request *, void *), void *cb_arg);
int evhttp_del_cb(struct evhttp *http, const char *path);
void evhttp_set_gencb(struct evhttp *http, void (*cb)(struct evhttp_request *, void *),
                      void *arg);
void evhttp_set_max_body_size(struct evhttp *http, ssize_t max_body_size);
void evhttp_set_max_headers_size(struct evhttp *http, ssize_t max_headers_size);
void evhttp_set_allowed_methods(struct evhttp *http, uint16_t methods);

int evhttp_request_get_command(const struct evhttp_request *req);
const char *evhttp_request_get_uri(const struct evhttp_request *req);
const struct evhttp_uri *evhttp_request_get_evhttp_uri(const struct evhttp_request *req);
const char *evhttp_request_get_host(struct evhttp_request *req);
int evhttp_request_get_response_code(const struct evhttp_request *req);
const char *evhttp_request_get_response_code_line(const struct evhttp_request *req);
struct evkeyvalq *evhttp_request_get_input_headers(struct evhttp_request *req);
struct evkeyvalq *evhttp_request_get_output_headers(struct evhttp_request *req);
struct evbuffer *evhttp_request_get_input_buffer(struct evhttp_request *req);
struct evbuffer *evhttp_request_get_output_buffer(struct evhttp_request *req);
const char *evhttp_find_header(const struct evkeyvalq *headers, const char *key);
int evhttp_remove_header(struct evkeyvalq *headers, const char *key);
void evhttp_clear_headers(struct evkeyvalq *headers);
const char *evhttp_uri_get_path(const struct evhttp_uri *uri);
const char *evhttp_uri_get_query(const struct evhttp_uri *uri);
size_t evbuffer_get_length(const struct evbuffer *buf);
int evbuffer_add(struct evbuffer *buf, const void *data, size_t datlen);
int evbuffer_drain(struct evbuffer *buf, size_t len);

#define EVREQ_HTTP_TIMEOUT ...
#define EVREQ_HTTP_EOF ...
#define EVREQ_HTTP_INVALID_HEADER ...
#define EVREQ_HTTP_BUFFER_ERROR ...
#define EVREQ_HTTP_REQUEST_CANCEL ...
#define EVREQ_HTTP_DATA_TOO_LONG ...
void evhttp_connection_set_retries(struct evhttp_connection *evcon, int retry_max);
#endif

struct bs_accept_guard;

/* What the shim's request calls return besides 0 (done); Python turns each into its error. */
enum {
    BS_HTTP_CLOSED = -1,     /* the request is closed: answered, or its connection went */
    BS_HTTP_ANSWERED = -2,   /* wrong reply state: already answered, or no chunked reply started */
    BS_HTTP_BAD_VALUE = -3,  /* a Content-Type with control characters */
    BS_HTTP_NO_MEMORY = -4
};
/* What bs_http_settle did with a request Python lets go of (or, with BS_SETTLE_REFUSE_ONLY,
   refuses): Python's share of the record has ended unless it returns BS_SETTLE_NONE. */
enum {
    BS_SETTLE_NONE = 0,     /* nothing: Python held no share, or keeps it (BS_SETTLE_REFUSE_ONLY) */
    BS_SETTLE_ANSWERED = 1, /* still replyable: answered with the code (libevent's error page) */
    BS_SETTLE_ENDED = 2,    /* a started chunked reply was ended */
    BS_SETTLE_RELEASED = 3  /* nothing left to send (answered, or its connection gone): let go */
};
/* How bs_http_settle goes about it (flags). */
enum {
    BS_SETTLE_LET_GO = 0,      /* answer, end or release: Python's share ends in every case */
    BS_SETTLE_REFUSE_ONLY = 1, /* answer a request still replyable; leave any other as it is */
    BS_SETTLE_FLUSH = 2        /* write the answer to the socket at once (bs_http_flush) */
};
/* What bs_http_header_check, bs_http_header_add and bs_http_header_set return besides 0. */
enum {
    BS_HEADER_BAD_NAME = -1,  /* not an RFC 9110 token */
    BS_HEADER_BAD_VALUE = -2, /* a control character other than horizontal tab */
    BS_HEADER_NO_MEMORY = -3,
    BS_HEADER_GONE = -4 /* bs_http_header_set: libevent's request is gone */
};

/*
 * One record per request the package tracks (server requests given to Python, client requests).
 * The rules are in http_request.c ("Request records"); in short:
 *
 * holds: who keeps the record alive, one bit per holder, and `calls`: how many calls of ours
 *        that may run Python are in progress with it. It is wiped and freed when both are zero
 *        (rec_drop, rec_leave). A bit is never dropped twice.
 * state: what `req` may be used for. Every change of state goes through bs_rec_enter(), which
 *        refuses the transitions the state machine does not have.
 * req:   libevent's request while Python may use it, NULL once libevent has freed it or is
 *        about to (the Python wrapper checks it before every use: a late call is ClosedError).
 */
typedef struct bs_http_req {
    struct evhttp_request *req;
    struct evhttp_connection *evcon; /* server: the request's connection (close tracking) */
    struct event *watch;             /* server: hang-up detection while the reply is deferred */
    struct bs_evconn *conn;          /* client: the connection it was made on, while linked */
    struct bs_http_req *prev, *next; /* client: in conn's list of requests libevent holds */
    void *py;                        /* ffi handle of the Python wrapper, or NULL */
    unsigned holds;
    int calls;                       /* our C code inside a call that may run Python with it */
    int state;
    int error;                       /* client: enum evhttp_request_error + 1, or 0 */
    int sys_errno;                   /* client: errno seen when the request failed */
    /* server, chunked replies: written-byte counting and on_sent (see http_reply.c) */
    struct evbuffer *out;            /* the connection's output while its bytes are counted */
    struct evbuffer_cb_entry *out_cb;
    struct event *sent_ev;           /* runs the on_sent callbacks in the loop */
    void *sent_py;                   /* ffi handle of Python's queue of them, while SENT holds */
    unsigned long long out_added;    /* reply bytes queued since send_reply_start */
    unsigned long long out_drained;  /* of those, written to the socket */
    unsigned long long sent_next;    /* the oldest threshold Python waits for; 0: none */
    int sent_gone;                   /* the connection closed with callbacks pending */
    /* server, stream_body requests (see http_stream.c) */
    struct bs_stream_conn *body_conn; /* its connection's filter, while linked */
    struct evbuffer *body_in;        /* pieces read, not yet given to Python */
    struct event *body_ev;           /* gives them to Python in the loop */
    void *body_py;                   /* ffi handle of Python's sink, once on_body was called */
    int body_status;                 /* BS_BODY_*, or the HTTP code of a refusal (413, 400) */
    int body_refused;                /* the refusal was answered */
    int body_paused;                 /* Python's sink is full: pieces wait */
    int streaming;                   /* a stream_body request: no whole body */
    int *live;                       /* server, a host's evhttp: counts the records alive */
} bs_http_req_t;


/* The status of a streamed body, as bs_py_http_body's status hands it to Python: a piece, the
   end, or the body cut short (its connection gone); a refusal is its HTTP code (413, 400). */
enum {
    BS_BODY_PIECE = 0, /* reading: a piece of the body (the record's status while it reads) */
    BS_BODY_END = 1,   /* the body ended (data NULL) */
    BS_BODY_LOST = -1  /* cut short: the connection closed first (data NULL) */
};

/* States of a record (see the diagram in http_request.c). */
enum {
    BS_REQ_FREE = 0,    /* wiped: a record in this state is never used */
    BS_REQ_NEW,         /* client: made by Python, not sent; Python owns libevent's request */
    BS_REQ_MADE,        /* client: queued or in flight; libevent owns the request */
    BS_REQ_RESPONDING,  /* client: its response callback runs (req: the response, or NULL) */
    BS_REQ_CANCELLED,   /* client: cancelled, or its connection closed first */
    BS_REQ_CALLBACK,    /* server: its request callback runs */
    BS_REQ_DEFERRED,    /* server: the callback returned; Python answers later */
    BS_REQ_STARTED,     /* server: a chunked reply was started */
    BS_REQ_SENT,        /* server: the reply is complete; libevent is writing it */
    BS_REQ_GONE,        /* server: the connection closed before the reply was complete */
    BS_REQ_DONE         /* finished: req is NULL, only the holders are left */
};

/* The arg of the server trampoline for one path or the generic callback. */
typedef struct bs_http_route {
    void *py;                   /* ffi handle of the Python route, or NULL for a C callback */
    int stream;                 /* stream_body: the callback runs once the headers are in */
    EvHttpRequestCallback c_cb; /* a C callback, called through bs_http_server_cb too */
    void *c_arg;
    struct bs_evhttp *h;        /* the server: counts the callbacks running on it */
} bs_http_route_t;

struct bs_stream_conn;
struct bs_linger;
typedef struct bs_stream_route {
    struct bs_stream_route *next;
    char *path;
    int stream;
} bs_stream_route;

/* The EvHttp and EvHttpConnection handle records: linked to their base like every handle. */
/*
 * The head of the EvHttp and EvHttpConnection records: the node that links them to their base,
 * and what freeing them later needs (closed inside one of their own callbacks: a zero-delay
 * timer frees them on the next round, or their base's release does if it comes first).
 */
typedef struct bs_later {
    bs_node node;                        /* first: the record is linked to its base through it */
    struct event *free_later;            /* the timer, while the record waits to be freed */
    void (*free_now)(struct bs_later *); /* frees the record's libevent object */
    size_t size;                         /* the whole record, for its wipe */
} bs_later;

typedef struct bs_evhttp {
    bs_later head;
    struct evhttp *http; /* owned; NULL for a dummy and once orphaned */
    bs_http_route_t fallback; /* the generic callback until one is set: 404 */
    struct bs_stream_conn *streams; /* connections read through the framing filter */
    struct bs_stream_route *routes; /* set_cb paths and whether they stream (http_stream.c) */
    int gen_stream;                 /* the generic callback streams */
    int strict;                     /* every new connection is framed (the default) */
    int any_stream;                 /* some route or the generic callback streams */
    int filtering;                  /* the framing filter is the evhttp's bevcb (make_bev) */
    unsigned long long max_body;    /* set_max_body_size, counted by the framer; 0: none */
    unsigned long long max_head;    /* set_max_headers_size, for the framer; 0: its default */
    struct bs_linger *lingers;      /* refused connections closing slowly (http_stream.c) */
    struct bs_accept_guard *guards; /* owned: one per listening socket (see http_accept.c) */
    int running;              /* request callbacks (Python or C) of this server running now */
    int owned;                /* 0 for EvHttp.from_address(): the host's, never freed here */
    BsRequestGate gate;       /* the host's check before Python's routes, or NULL */
    void *gate_arg;
} bs_evhttp;

typedef struct bs_evconn {
    bs_later head;
    struct evhttp_connection *evcon; /* owned; NULL for a dummy and once orphaned */
    struct event_base *base;
    bs_http_req_t *reqs;       /* made requests libevent still holds (client records) */
} bs_evconn;

bs_evhttp *bs_evhttp_new(bs_base *b);
bs_evhttp *bs_evhttp_wrap(bs_base *b, struct evhttp *http);
struct event_base *bs_evhttp_find_base(struct evhttp *http);
void bs_evhttp_set_gate(bs_evhttp *h, BsRequestGate gate, void *arg);
void bs_evhttp_release(bs_evhttp *h, int later);
void bs_evhttp_set_timeout(bs_evhttp *h, double seconds);
int bs_evhttp_guard_accept(bs_evhttp *h, struct evhttp_bound_socket *bound);
void bs_evhttp_del_accept(bs_evhttp *h, struct evhttp_bound_socket *bound);
bs_evconn *bs_evconn_new(bs_base *b, const char *host, int port);
void bs_evconn_release(bs_evconn *c, int later);
void bs_evconn_set_timeout(bs_evconn *c, double seconds);

void bs_http_server_cb(struct evhttp_request *r, void *arg);
int bs_http_framing_refused(struct evhttp_request *r);
int bs_http_ignore_sigpipe(void);
bs_http_req_t *bs_http_client_new(void *py);
int bs_http_make_request(bs_http_req_t *rec, bs_evconn *c, int type, const char *uri);
void bs_http_req_release(bs_http_req_t *rec);
long bs_http_live_requests(void);
int bs_http_send_reply(bs_http_req_t *rec, int code, const char *reason, const char *body,
                       size_t len, const char *ctype, size_t ctype_len);
int bs_http_send_echo(bs_http_req_t *rec, int code, const char *default_ctype,
                      size_t default_len);
int bs_http_send_error(bs_http_req_t *rec, int code, const char *reason);
int bs_http_reply_start(bs_http_req_t *rec, int code, const char *reason);
long long bs_http_reply_chunk(bs_http_req_t *rec, const char *data, size_t len);
long long bs_http_output_buffered(bs_http_req_t *rec);
int bs_http_flush(bs_http_req_t *rec);
int bs_http_on_body(bs_http_req_t *rec, void *py);
void bs_http_body_pause(bs_http_req_t *rec, int paused);
int bs_evhttp_route_stream(bs_evhttp *h, const char *path, int stream);
int bs_evhttp_gen_stream(bs_evhttp *h, int stream);
int bs_evhttp_strict(bs_evhttp *h, int on);
void bs_evhttp_set_max_body(bs_evhttp *h, unsigned long long n);
int bs_http_sent_arm(bs_http_req_t *rec, unsigned long long at, void *py);
int bs_http_reply_end(bs_http_req_t *rec);
int bs_http_defer(bs_http_req_t *rec, void *py);
int bs_http_settle(bs_http_req_t *rec, int code, int how);
int bs_http_header_check(const char *key, size_t klen, const char *value, size_t vlen);
int bs_http_header_add(struct evkeyvalq *q, const char *key, size_t klen, const char *value,
                       size_t vlen);
struct evkeyval *bs_http_header_first(struct evkeyvalq *q);
const char *bs_http_find_header(const bs_http_req_t *rec, int out, const char *name, size_t len);
int bs_http_header_set(const bs_http_req_t *rec, const char *key, size_t klen, const char *value,
                       size_t vlen);
struct evkeyval *bs_http_header_next(struct evkeyval *kv);
const char *bs_http_body(struct evhttp_request *r, size_t *len);
size_t bs_http_copyout(struct evhttp_request *r, char *out, size_t len);
int bs_http_peer(struct evhttp_request *r, char *host, size_t hostlen, int *port);
void bs_evhttp_set_max_headers(bs_evhttp *h, unsigned long long n);
long bs_framer_run(const char *data, size_t len, size_t step, size_t max_head, char *out,
                   size_t cap);

#endif
