/*
 * http_framing.c - the request framer: bytes in, framing events out (RFC 9112, strictly).
 *
 * The framer reads the bytes at the front of an evbuffer and says what they are: a request head
 * (its length and what it says about the body), body data, framing bytes of a chunked body (size
 * lines, the CRLF after chunk data, trailers), the body's end, or a refusal. It never consumes:
 * the caller takes the bytes each event names (passes them on, moves them to a body, drops
 * them) before asking again. It uses nothing from libevent but evbuffer, so it can be driven on
 * its own (bs_framer_run, for the fuzzers and unit tests).
 *
 * What it refuses (status 400 unless said): NUL and every other control but HTAB in the head
 * (a CR only as part of CRLF), bare-LF line ends, obs-fold, a request line that is not
 * "token SP target SP HTTP/1.0|1.1", a field name that is not a token, a Content-Length that is
 * not 1*DIGIT or comes twice with different values, a Transfer-Encoding other than one
 * "chunked" or in HTTP/1.0, both of them, a body announced on HEAD or TRACE (libevent
 * reads none there), a chunk size that is not 1*HEXDIG (no
 * sign, prefix, space; at most 15 digits), a malformed chunk extension, chunk data not followed
 * by CRLF, a malformed trailer line, more than one empty line before a request line, and a head
 * longer than the limit (431; counted from the request line to the empty line, CRLFs included).
 * Chunk extensions (RFC 9112 7.1.1) and trailers are accepted and ignored.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "http.h"
#include "http_internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

enum { FR_HEAD = 0, FR_SIZED, FR_SIZE, FR_DATA, FR_CRLF, FR_TRAILER, FR_END_PENDING, FR_ERROR };

#define CHUNK_LINE_MAX 4096 /* a chunk-size line with its extensions */

const char *const bs_http_methods[BS_HTTP_NMETHODS] = {
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH"};


/* Byte classes: RFC 9110 tchar, and what the head scan stops at (CR, LF, other controls). */
enum { K_TCHAR = 1, K_CR = 2, K_LF = 4, K_CTL = 8 };
static unsigned char kinds[256];

__attribute__((constructor)) static void kinds_init(void) /* once, as the library loads */
{
    for (int c = 0; c < 256; c++) {
        unsigned char k = 0;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL))
            k = K_TCHAR;
        else if (c == '\r')
            k = K_CR;
        else if (c == '\n')
            k = K_LF;
        else if ((c < 0x20 && c != '\t') || c == 0x7f)
            k = K_CTL;
        kinds[c] = k;
    }
}

static int tchar(unsigned char c)
{
    return kinds[c] & K_TCHAR;
}

void bs_framer_init(bs_framer *f, size_t max_head)
{
    memset(f, 0, sizeof *f);
    f->max_head = max_head != 0 ? max_head : BS_HEAD_DEFAULT;
}

/* A control other than HTAB (CR and LF included: they are checked as line ends first). */
static int ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

static int fail(bs_framer *f, size_t *n, int code)
{
    f->state = FR_ERROR;
    f->error = code;
    *n = (size_t)code;
    return BS_FR_ERROR;
}

static int ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static void trim(const char **v, size_t *n)
{
    while (*n && ows((unsigned char)**v))
        (*v)++, (*n)--;
    while (*n && ows((unsigned char)(*v)[*n - 1]))
        (*n)--;
}

/*
 * Find the end of a block of CRLF-ended lines that closes with an empty line, from f->scan on
 * (a head, or a trailer section). Checks every byte on the way: a control, a CR not followed by
 * LF, or an LF not preceded by CR refuses. 1: found (f->scan is the block's length); 0: more.
 */
static int scan_block(bs_framer *f, struct evbuffer *src, size_t limit, int *err)
{
    size_t have = evbuffer_get_length(src);
    size_t scan = f->scan, line = f->line;
    int cr = f->cr, found = 0;
    struct evbuffer_ptr at;
    struct evbuffer_iovec v[8];
    while (scan < have && !found && *err == 0) {
        if (evbuffer_ptr_set(src, &at, scan, EVBUFFER_PTR_SET) != 0) {
            *err = 400;
            break;
        }
        int nv = evbuffer_peek(src, -1, &at, v, 8);
        for (int j = 0; j < nv && j < 8 && !found && *err == 0; j++) {
            const unsigned char *p = v[j].iov_base;
            size_t n = v[j].iov_len < have - scan ? v[j].iov_len : have - scan;
            size_t room = limit > scan ? limit - scan : 0; /* bytes before the limit */
            size_t stop = n < room ? n : room, i = 0;
            while (i < stop) {
                if (cr) {
                    if (p[i++] != '\n') {
                        *err = 400; /* a CR not ending a line */
                        break;
                    }
                    cr = 0;
                    if (line == 0) {
                        found = 1; /* the empty line */
                        break;
                    }
                    line = 0;
                    continue;
                }
                size_t from = i;
                while (i < stop && !(kinds[p[i]] & (K_CR | K_LF | K_CTL)))
                    i++;
                line += i - from;
                if (i == stop)
                    break;
                if (p[i++] != '\r') {
                    *err = 400; /* a bare LF, NUL, another control */
                    break;
                }
                cr = 1;
            }
            scan += i;
            if (!found && *err == 0 && i == room && room < n)
                *err = 431; /* the limit is reached and the block goes on */
        }
    }
    f->scan = scan;
    f->line = line;
    f->cr = cr;
    return found && *err == 0;
}

/* One field line (name ":" OWS value OWS), its bytes already checked for controls. */
static int field_line(const char *k, size_t n, const char **v, size_t *vlen, size_t *klen)
{
    const char *colon = memchr(k, ':', n);
    if (colon == NULL || colon == k)
        return -1;
    for (const char *q = k; q < colon; q++)
        if (!tchar((unsigned char)*q))
            return -1; /* obs-fold starts with SP or HTAB: not a token either */
    *klen = (size_t)(colon - k);
    *v = colon + 1;
    *vlen = n - *klen - 1;
    trim(v, vlen);
    return 0;
}

/* The head at the front of src, scan_block having found its length. 0, or a status. */
static int parse_head(bs_framer *f, struct evbuffer *src, size_t len, bs_head *h)
{
    const char *p = (const char *)evbuffer_pullup(src, (ev_ssize_t)len);
    if (p == NULL)
        return 400;
    memset(h, 0, sizeof *h);
    h->len = len;
    h->method = -1;
    const char *end = p + len - 2; /* without the empty line's CRLF */
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    if (eol == NULL)
        return 400;
    /* request line */
    const char *q = p;
    while (q < eol && tchar((unsigned char)*q))
        q++;
    if (q == p || q == eol || *q != ' ')
        return 400;
    size_t mlen = (size_t)(q - p);
    for (int i = 0; i < BS_HTTP_NMETHODS; i++)
        if (strlen(bs_http_methods[i]) == mlen && memcmp(p, bs_http_methods[i], mlen) == 0)
            h->method = i;
    const char *t = q + 1;
    const char *te = t;
    while (te < eol && (unsigned char)*te > 0x20 && (unsigned char)*te < 0x7f)
        te++;
    if (te == t || te >= eol || *te != ' ' || eol - te - 1 != 8 ||
        memcmp(te + 1, "HTTP/1.", 7) != 0 || (te[8] != '0' && te[8] != '1'))
        return 400;
    h->target = (size_t)(t - p);
    h->target_len = (size_t)(te - t);
    h->minor = te[8] - '0';
    /* field lines */
    int have_length = 0, have_coding = 0;
    for (const char *l = eol + 2; l < end;) {
        const char *le = memchr(l, '\r', (size_t)(end - l + 1));
        size_t n = (size_t)(le - l), klen, vlen;
        const char *v;
        if (field_line(l, n, &v, &vlen, &klen) != 0)
            return 400;
        if (klen == 14 && strncasecmp(l, "Content-Length", 14) == 0) {
            if (vlen == 0)
                return 400;
            unsigned long long length = 0;
            for (size_t j = 0; j < vlen; j++) {
                if (v[j] < '0' || v[j] > '9')
                    return 400;
                length = length >= BS_LENGTH_HUGE / 10 ? BS_LENGTH_HUGE /* saturates */
                                                       : length * 10 + (unsigned)(v[j] - '0');
            }
            if (have_length && length != h->length)
                return 400; /* the same value twice is one length (RFC 9110 8.6) */
            have_length = 1;
            h->length = length;
            h->frame = (size_t)(l - p);
            h->frame_len = n + 2;
        } else if (klen == 17 && strncasecmp(l, "Transfer-Encoding", 17) == 0) {
            if (have_coding || vlen != 7 || strncasecmp(v, "chunked", 7) != 0)
                return 400;
            have_coding = 1;
            h->frame = (size_t)(l - p);
            h->frame_len = n + 2;
        } else if (klen == 6 && strncasecmp(l, "Expect", 6) == 0) {
            h->expect = 1;
        }
        l = le + 2;
    }
    if (have_length && have_coding)
        return 400;
    if (have_coding && h->minor == 0)
        return 400; /* HTTP/1.0 has no chunked coding: faulty framing (RFC 9112 6.1) */
    h->body = have_coding ? BS_BODY_CHUNKED : h->length > 0 ? BS_BODY_SIZED : BS_BODY_NONE;
    if (h->body != BS_BODY_NONE && (h->method == 2 || h->method == 6)) /* HEAD, TRACE */
        return 400;
    (void)f;
    return 0;
}

static int hexval(unsigned char c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/*
 * chunk-size [ chunk-ext ] (without the CRLF): 1*HEXDIG, then
 * *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] ), no BWS before the first
 * ";" (as h11 and llhttp's strict mode read it). The size, or -1.
 */
static long long chunk_size(const char *s, size_t n)
{
    size_t i = 0;
    long long size = 0;
    while (i < n && hexval((unsigned char)s[i]) >= 0) {
        if (i == 15)
            return -1;
        size = size * 16 + hexval((unsigned char)s[i]);
        i++;
    }
    if (i == 0)
        return -1;
    int first = 1;
    while (i < n) {
        if (!first)
            while (i < n && ows((unsigned char)s[i]))
                i++;
        first = 0;
        if (i == n || s[i] != ';')
            return -1;
        i++;
        while (i < n && ows((unsigned char)s[i]))
            i++;
        size_t from = i;
        while (i < n && tchar((unsigned char)s[i]))
            i++;
        if (i == from)
            return -1;
        size_t j = i;
        while (j < n && ows((unsigned char)s[j]))
            j++;
        if (j == n || s[j] != '=')
            continue; /* no value: i is at the BWS before the next ";" */
        i = j + 1;
        while (i < n && ows((unsigned char)s[i]))
            i++;
        if (i < n && s[i] == '"') {
            i++;
            for (;;) {
                if (i == n)
                    return -1;
                unsigned char c = (unsigned char)s[i++];
                if (c == '"')
                    break;
                if (c == '\\') {
                    if (i == n || ctl((unsigned char)s[i]))
                        return -1;
                    i++;
                } else if (ctl(c)) {
                    return -1;
                }
            }
        } else {
            from = i;
            while (i < n && tchar((unsigned char)s[i]))
                i++;
            if (i == from)
                return -1;
        }
    }
    return size;
}

/* A chunk-size line at the front of src: its length with CRLF in *n, the size, or -1 more,
   -2 refused. */
static long long size_line(struct evbuffer *src, size_t *n)
{
    size_t have = evbuffer_get_length(src);
    struct evbuffer_ptr e = evbuffer_search(src, "\n", 1, NULL);
    if (e.pos < 0)
        return have > CHUNK_LINE_MAX ? -2 : -1;
    size_t len = (size_t)e.pos;
    if (len > CHUNK_LINE_MAX || len == 0)
        return -2;
    char line[CHUNK_LINE_MAX + 1];
    evbuffer_copyout(src, line, len + 1);
    if (line[len - 1] != '\r')
        return -2; /* a bare LF */
    for (size_t i = 0; i + 1 < len; i++)
        if (ctl((unsigned char)line[i]))
            return -2; /* NUL, a CR inside the line */
    long long size = chunk_size(line, len - 1);
    if (size < 0)
        return -2;
    *n = len + 1;
    return size;
}

/* The trailer section (after the last chunk): field lines, then the empty line. */
static int trailers_ok(struct evbuffer *src, size_t len)
{
    const char *p = (const char *)evbuffer_pullup(src, (ev_ssize_t)len);
    if (p == NULL)
        return 0;
    const char *end = p + len - 2;
    for (const char *l = p; l < end;) {
        const char *le = memchr(l, '\r', (size_t)(end - l + 1));
        size_t klen, vlen;
        const char *v;
        if (field_line(l, (size_t)(le - l), &v, &vlen, &klen) != 0)
            return 0;
        l = le + 2;
    }
    return 1;
}

int bs_framer_next(bs_framer *f, struct evbuffer *src, bs_head *head, size_t *n)
{
    size_t have = evbuffer_get_length(src);
    *n = 0;
    switch (f->state) {
    case FR_ERROR:
        *n = (size_t)f->error;
        return BS_FR_ERROR;
    case FR_HEAD: {
        if (have == 0)
            return BS_FR_MORE;
        if (f->scan == 0 && !f->cr && f->line == 0) {
            /* one empty line before a request line is ignored (RFC 9112 2.2) */
            char two[2];
            size_t k = have < 2 ? have : 2;
            evbuffer_copyout(src, two, k);
            if (two[0] == '\r') {
                if (k < 2)
                    return BS_FR_MORE;
                if (two[1] != '\n' || f->lead)
                    return fail(f, n, 400);
                f->lead = 1;
                *n = 2;
                return BS_FR_SKIP;
            }
        }
        int err = 0;
        if (!scan_block(f, src, f->max_head, &err))
            return err != 0 ? fail(f, n, err) : BS_FR_MORE;
        size_t len = f->scan;
        f->scan = 0;
        f->line = 0;
        f->cr = 0;
        int rc = parse_head(f, src, len, head);
        if (rc != 0)
            return fail(f, n, rc);
        f->lead = 0;
        f->state = head->body == BS_BODY_CHUNKED ? FR_SIZE
                   : head->body == BS_BODY_SIZED ? FR_SIZED
                                                 : FR_HEAD;
        f->left = head->length;
        f->size = 0;
        *n = len;
        return BS_FR_HEAD;
    }
    case FR_SIZED:
    case FR_DATA:
        if (f->left == 0) { /* (a sized body's end, once its last bytes were taken) */
            f->state = FR_HEAD;
            return BS_FR_END;
        }
        if (have == 0)
            return BS_FR_MORE;
        *n = have < f->left ? have : (size_t)f->left;
        f->left -= *n;
        f->size += *n;
        if (f->left == 0 && f->state == FR_DATA)
            f->state = FR_CRLF;
        return BS_FR_DATA;
    case FR_CRLF: {
        if (have < 2)
            return have == 1 && evbuffer_pullup(src, 1)[0] != '\r' ? fail(f, n, 400)
                                                                    : BS_FR_MORE;
        char crlf[2];
        evbuffer_copyout(src, crlf, 2);
        if (crlf[0] != '\r' || crlf[1] != '\n')
            return fail(f, n, 400);
        f->state = FR_SIZE;
        *n = 2;
        return BS_FR_META;
    }
    case FR_SIZE: {
        long long size = size_line(src, n);
        if (size == -1)
            return BS_FR_MORE;
        if (size < 0)
            return fail(f, n, 400);
        f->left = (unsigned long long)size;
        f->state = size == 0 ? FR_TRAILER : FR_DATA;
        return BS_FR_META;
    }
    case FR_TRAILER: {
        int err = 0;
        if (!scan_block(f, src, f->max_head, &err))
            return err != 0 ? fail(f, n, 400) : BS_FR_MORE;
        size_t len = f->scan;
        f->scan = 0;
        f->line = 0;
        f->cr = 0;
        if (!trailers_ok(src, len))
            return fail(f, n, 400);
        f->state = FR_END_PENDING;
        *n = len;
        return BS_FR_META;
    }
    case FR_END_PENDING:
        f->state = FR_HEAD;
        return BS_FR_END;
    }
    return fail(f, n, 400);
}

/* The caller took n bytes of a sized body right after its head (with it, in one move): they
   count as data events would (n at most what is left of the body). */
void bs_framer_took(bs_framer *f, size_t n)
{
    f->left -= n;
    f->size += n;
}

/*
 * The check behind every server, framed or not (set_strict_framing(False)). Request
 * smuggling: framings that strict parsers (llhttp) refuse and libevent 2.1 accepts, each
 * read one way by libevent and another by a proxy in front of it. libevent 2.1.12 has no hook
 * between the headers and the body (evhttp_set_newreqcb came with 2.2), so the check runs here,
 * after libevent has framed the request its own way and before any callback sees it: the
 * request gets 400 with "Connection: close", so whatever libevent would read next on that
 * connection (the bytes a proxy took for body, or the other way round) is never served.
 */
static int plain_decimal(const char *v)
{
    if (*v == '\0')
        return 0;
    for (; *v; v++)
        if (*v < '0' || *v > '9')
            return 0;
    return 1;
}

/* 1 when the request's framing is ambiguous (see above). */
BS_EXPORT int bs_http_framing_refused(struct evhttp_request *r)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(r);
    const char *length = NULL;
    int chunked = 0;
    for (struct evkeyval *kv = in->tqh_first; kv != NULL; kv = kv->next.tqe_next) {
        if (bs_http_header_check(kv->key, strlen(kv->key), kv->value, strlen(kv->value)) != 0)
            return 1; /* RFC 9110 field names are tokens; no control characters in values */
        if (evutil_ascii_strcasecmp(kv->key, "Content-Length") == 0) {
            if (!plain_decimal(kv->value) || (length != NULL && strcmp(length, kv->value) != 0))
                return 1;
            length = kv->value;
        } else if (evutil_ascii_strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            /* libevent reads a body as chunked only for exactly this value, once */
            if (chunked || evutil_ascii_strcasecmp(kv->value, "chunked") != 0)
                return 1;
            chunked = 1;
        }
    }
    if (length != NULL && chunked)
        return 1;
    /* libevent reads no body for HEAD and TRACE: announced body bytes would be a next request */
    enum evhttp_cmd_type type = evhttp_request_get_command(r);
    if ((type == EVHTTP_REQ_HEAD || type == EVHTTP_REQ_TRACE) &&
        (chunked || (length != NULL && strspn(length, "0") != strlen(length))))
        return 1;
    return 0;
}

/*
 * For the fuzzers and unit tests: frame `data` fed in pieces of `step` bytes (0: at once) and
 * write one line per event to out: "H <method> <target> <body> <length>", "D <n>", "M <n>",
 * "E", "S <n>", "X <status>", and "R <n>" with the bytes left unframed at the end. Returns
 * the length written (truncated at cap), or -1 out of memory.
 */
BS_EXPORT long bs_framer_run(const char *data, size_t len, size_t step, size_t max_head,
                             char *out, size_t cap)
{
    struct evbuffer *src = evbuffer_new();
    if (src == NULL)
        return -1;
    bs_framer f;
    bs_framer_init(&f, max_head);
    size_t fed = 0, w = 0;
    int stop = 0;
#define EMIT(...)                                                                      \
    do {                                                                               \
        if (w < cap) {                                                                 \
            int k = snprintf(out + w, cap - w, __VA_ARGS__);                           \
            w += k > 0 ? (size_t)k : 0;                                                \
            if (w > cap)                                                               \
                w = cap;                                                               \
        }                                                                              \
    } while (0)
    while (!stop) {
        size_t take = step == 0 ? len - fed : (len - fed < step ? len - fed : step);
        if (take != 0 && evbuffer_add(src, data + fed, take) != 0)
            break;
        fed += take;
        for (;;) {
            bs_head h;
            size_t n;
            int ev = bs_framer_next(&f, src, &h, &n);
            if (ev == BS_FR_MORE)
                break;
            if (ev == BS_FR_ERROR) {
                EMIT("X %zu\n", n);
                stop = 1;
                break;
            }
            if (ev == BS_FR_HEAD) {
                const char *p = (const char *)evbuffer_pullup(src, (ev_ssize_t)h.len);
                EMIT("H %d %.*s %d %llu %zu\n", h.method, (int)h.target_len, p + h.target,
                     h.body, h.length, h.len);
            } else if (ev == BS_FR_DATA) {
                EMIT("D %zu\n", n);
            } else if (ev == BS_FR_META) {
                EMIT("M %zu\n", n);
            } else if (ev == BS_FR_SKIP) {
                EMIT("S %zu\n", n);
            } else {
                EMIT("E\n");
            }
            evbuffer_drain(src, n);
        }
        if (fed == len)
            break;
    }
    EMIT("R %zu\n", evbuffer_get_length(src));
#undef EMIT
    evbuffer_free(src);
    return (long)w;
}
