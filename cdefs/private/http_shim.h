/* The evhttp shim's records (http.c), shared with the cffi module; not part of the public API. */
#ifndef BS_HTTP_SHIM_H
#define BS_HTTP_SHIM_H

#include <stddef.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "event_shim.h"

/*
 * One record per request the package tracks (server requests given to Python, client requests).
 *
 * Ownership: two owners share a record, each named by a flag; the last one to let go wipes and
 * frees it (bs_http_req_drop):
 *   BS_REQ_PY  the Python EvHttpRequest wrapper holds it (until the wrapper is closed);
 *   BS_REQ_EV  libevent may still call back with it (on-complete, connection close, client
 *              response), so the record must outlive libevent's interest in the request.
 * `req` is libevent's request while it may be used, NULL once libevent has freed it or will free
 * it (reply complete, connection closed, client callback returned): the Python wrapper checks it
 * before every use, which is how a late reply becomes ClosedError instead of a use after free.
 */
typedef struct bs_http_req {
    struct evhttp_request *req;
    struct evhttp_connection *evcon; /* server: the request's connection (close tracking) */
    struct event *watch;             /* server: hang-up detection while the reply is deferred */
    void *py;                        /* ffi handle of the Python wrapper, or NULL */
    unsigned flags;
    int error;                       /* client: enum evhttp_request_error + 1, or 0 */
    int sys_errno;                   /* client: errno seen when the request failed */
} bs_http_req_t;

#define BS_REQ_PY 0x01u
#define BS_REQ_EV 0x02u
#define BS_REQ_SENT 0x04u      /* reply complete (server) */
#define BS_REQ_STARTED 0x08u   /* chunked reply started (server) */
#define BS_REQ_CLIENT 0x10u
#define BS_REQ_MADE 0x20u      /* client: given to evhttp_make_request */
#define BS_REQ_DONE 0x40u      /* client: the response callback ran */
#define BS_REQ_GONE 0x80u      /* server: the connection closed before the reply completed */

/* The arg of the server trampoline for one path or the generic callback. */
typedef struct bs_http_route {
    void *py; /* ffi handle of the Python route (owned by the EvHttp wrapper) */
} bs_http_route_t;

/* The EvHttp and EvHttpConnection handle records: linked to their base like every handle. */
typedef struct bs_evhttp {
    bs_node node;
    struct evhttp *http; /* owned; NULL for a dummy and once orphaned */
    struct bs_accept_guard *guards; /* owned: one per listening socket (see http.c) */
} bs_evhttp;

typedef struct bs_evconn {
    bs_node node;
    struct evhttp_connection *evcon; /* owned; NULL for a dummy and once orphaned */
    struct event_base *base;
} bs_evconn;

bs_evhttp *bs_evhttp_new(bs_base *b);
void bs_evhttp_release(bs_evhttp *h);
int bs_evhttp_guard_accept(bs_evhttp *h, struct evhttp_bound_socket *bound);
void bs_evhttp_del_accept(bs_evhttp *h, struct evhttp_bound_socket *bound);
bs_evconn *bs_evconn_new(bs_base *b, const char *host, int port);
void bs_evconn_release(bs_evconn *c, int later);

void bs_http_server_cb(struct evhttp_request *r, void *arg);
int bs_http_ignore_sigpipe(void);
bs_http_req_t *bs_http_client_new(void *py);
int bs_http_make_request(bs_http_req_t *rec, struct evhttp_connection *evcon, int type,
                         const char *uri);
void bs_http_req_release(bs_http_req_t *rec);
int bs_http_send_reply(bs_http_req_t *rec, int code, const char *reason, const char *body,
                       size_t len, const char *ctype, size_t ctype_len);
int bs_http_send_echo(bs_http_req_t *rec, int code, const char *default_ctype);
int bs_http_send_error(bs_http_req_t *rec, int code, const char *reason);
int bs_http_reply_start(bs_http_req_t *rec, int code, const char *reason);
int bs_http_reply_chunk(bs_http_req_t *rec, const char *data, size_t len);
int bs_http_reply_end(bs_http_req_t *rec);
int bs_http_defer(bs_http_req_t *rec, void *py);
int bs_http_finish_callback(bs_http_req_t *rec, int failed);
int bs_http_header_check(const char *key, size_t klen, const char *value, size_t vlen);
int bs_http_header_add(struct evkeyvalq *q, const char *key, size_t klen, const char *value,
                       size_t vlen);
struct evkeyval *bs_http_header_first(struct evkeyvalq *q);
struct evkeyval *bs_http_header_next(struct evkeyval *kv);
const char *bs_http_body(struct evhttp_request *r, size_t *len);
size_t bs_http_copyout(struct evhttp_request *r, char *out, size_t len);
int bs_http_peer(struct evhttp_request *r, char *host, size_t hostlen, int *port);
void bs_http_req_forget(bs_http_req_t *rec);
int bs_http_connection_free_later(struct event_base *base, struct evhttp_connection *evcon);

/* The Python side (extern "Python+C" in http.h). */
int _bs_http_on_request(bs_http_req_t *rec, void *route);
void _bs_http_on_gone(void *py);
void _bs_http_on_response(void *py);

#endif
