/* evhttp: server, client, requests, headers, URIs (libevent 2.1), and the shim in http_*.c. */

struct event_base;
struct evhttp;
struct evhttp_request;
struct evhttp_connection;
struct evhttp_bound_socket;
struct evhttp_uri;
struct evbuffer;
struct evkeyvalq;
struct evkeyval { char *key; char *value; ...; };
struct timeval { long tv_sec; long tv_usec; ...; };

typedef struct EvHttpRequest EvHttpRequest;
typedef void (*EvHttpRequestCallback)(EvHttpRequest *req, void *arg);

/* -- libevent */
struct evhttp *evhttp_new(struct event_base *base);
void evhttp_free(struct evhttp *http);
struct evhttp_bound_socket *evhttp_bind_socket_with_handle(struct evhttp *http,
                                                           const char *address, uint16_t port);
struct evhttp_bound_socket *evhttp_accept_socket_with_handle(struct evhttp *http, int fd);
int evhttp_bound_socket_get_fd(struct evhttp_bound_socket *bound);
void evhttp_del_accept_socket(struct evhttp *http, struct evhttp_bound_socket *bound);
int evhttp_set_cb(struct evhttp *http, const char *path,
                  void (*cb)(struct evhttp_request *, void *), void *cb_arg);
int evhttp_del_cb(struct evhttp *http, const char *path);
void evhttp_set_gencb(struct evhttp *http, void (*cb)(struct evhttp_request *, void *),
                      void *arg);
void evhttp_set_max_body_size(struct evhttp *http, ssize_t max_body_size);
void evhttp_set_max_headers_size(struct evhttp *http, ssize_t max_headers_size);
void evhttp_set_timeout_tv(struct evhttp *http, const struct timeval *tv);
void evhttp_set_allowed_methods(struct evhttp *http, uint16_t methods);
void evhttp_set_default_content_type(struct evhttp *http, const char *content_type);

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
const char *evhttp_uri_get_host(const struct evhttp_uri *uri);
size_t evbuffer_get_length(const struct evbuffer *buf);
int evbuffer_add(struct evbuffer *buf, const void *data, size_t datlen);
int evbuffer_drain(struct evbuffer *buf, size_t len);

struct evhttp_connection *evhttp_connection_base_new(struct event_base *base, void *dnsbase,
                                                     const char *address, uint16_t port);
void evhttp_connection_free(struct evhttp_connection *evcon);
void evhttp_connection_set_timeout_tv(struct evhttp_connection *evcon, const struct timeval *tv);
void evhttp_connection_set_retries(struct evhttp_connection *evcon, int retry_max);
void evhttp_connection_get_peer(struct evhttp_connection *evcon, char **address,
                                uint16_t *port);

/* -- the shim (http_*.c); records are described in cdefs/private/http_shim.h */
typedef struct bs_http_req {
    struct evhttp_request *req;
    void *py;
    int state;
    int error;
    int sys_errno;
    ...;
} bs_http_req_t;
/* States of a request record (cdefs/private/http_shim.h; the diagram is in http_request.c). */
#define BS_REQ_NEW ...
#define BS_REQ_MADE ...
#define BS_REQ_RESPONDING ...
#define BS_REQ_CANCELLED ...
#define BS_REQ_CALLBACK ...
#define BS_REQ_DEFERRED ...
#define BS_REQ_STARTED ...
#define BS_REQ_SENT ...
#define BS_REQ_GONE ...
#define BS_REQ_DONE ...
typedef struct bs_evhttp { struct evhttp *http; ...; } bs_evhttp;
typedef struct bs_http_route {
    void *py;
    EvHttpRequestCallback c_cb;
    void *c_arg;
    bs_evhttp *h;
    ...;
} bs_http_route_t;
typedef struct bs_evconn { struct evhttp_connection *evcon; ...; } bs_evconn;
bs_evhttp *bs_evhttp_new(bs_base *b);
void bs_evhttp_release(bs_evhttp *h, int later);
int bs_evhttp_guard_accept(bs_evhttp *h, struct evhttp_bound_socket *bound);
void bs_evhttp_del_accept(bs_evhttp *h, struct evhttp_bound_socket *bound);
bs_evconn *bs_evconn_new(bs_base *b, const char *host, int port);
void bs_evconn_release(bs_evconn *c, int later);

void bs_http_server_cb(struct evhttp_request *r, void *arg);
int bs_http_ignore_sigpipe(void);
bs_http_req_t *bs_http_client_new(void *py);
int bs_http_make_request(bs_http_req_t *rec, bs_evconn *c, int type, const char *uri);
void bs_http_req_release(bs_http_req_t *rec);
long bs_http_live_requests(void);
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

/* Request callbacks into Python (defined in bitcoin_support/_http.py). */
extern "Python+C" int _bs_http_on_request(bs_http_req_t *rec, void *route);
extern "Python+C" void _bs_http_on_gone(void *py);
extern "Python+C" void _bs_http_on_response(void *py);
