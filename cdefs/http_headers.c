/*
 * http_headers.c - header lookups of a request record in one crossing, for the per-request
 * paths of bitcoin_support/_headers.py (Mapping.get, [], in, and [] = on output headers).
 *
 * Python holds the record (its PY hold, http_request.c) while it calls these, so the record is
 * there; libevent's request may be gone (rec->req NULL), which each function checks first.
 */
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "export.h"
#include "http.h"

static struct evkeyvalq *headers_of(const bs_http_req_t *rec, int out)
{
    if (rec->req == NULL)
        return NULL;
    return out ? evhttp_request_get_output_headers(rec->req)
               : evhttp_request_get_input_headers(rec->req);
}

/* The value of the first header called name (any case) among the request's output (out != 0) or
   input headers, or NULL: no such header, a name holding a NUL, or the request gone. */
BS_EXPORT const char *bs_http_find_header(const bs_http_req_t *rec, int out, const char *name,
                                          size_t len)
{
    struct evkeyvalq *q = headers_of(rec, out);
    if (q == NULL || memchr(name, '\0', len) != NULL)
        return NULL;
    return evhttp_find_header(q, name);
}

/* Replace every output header called key (any case) with one line: 0, BS_HEADER_GONE without
   libevent's request, or what bs_http_header_check and bs_http_header_add return. */
BS_EXPORT int bs_http_header_set(const bs_http_req_t *rec, const char *key, size_t klen,
                                 const char *value, size_t vlen)
{
    struct evkeyvalq *q = headers_of(rec, 1);
    int rc;
    if (q == NULL)
        return BS_HEADER_GONE;
    rc = bs_http_header_check(key, klen, value, vlen);
    if (rc != 0)
        return rc;
    while (evhttp_remove_header(q, key) == 0)
        ;
    return evhttp_add_header(q, key, value) == 0 ? 0 : BS_HEADER_NO_MEMORY;
}
