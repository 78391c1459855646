/*
 * callbacks.h - every function the shim calls in Python, in one place. cffi reads them as
 * extern "Python+C" (defined in Python with ffi.def_extern, callable from the shim's C files),
 * and the C files read plain prototypes.
 */
#ifndef BS_CALLBACKS_H
#define BS_CALLBACKS_H

#include <stddef.h>

struct bs_http_req;

#ifdef BS_CDEF
extern "Python+C" {
#endif

/* _event.py: a Python-callback event fired (its flags are in the record); pending says whether
   it stays added after this run. Returns the flags to re-activate it with (0: none), nonzero
   only while Python holds it. */
int bs_py_event_fired(void *handle, int pending);
/* _event.py: a C-callback event fired and is no longer pending: its handle may drop it. */
void bs_py_event_unheld(void *handle);
/* _event_base.py: the base's internal notify or wakeup event fired: run the queued calls. */
void bs_py_base_notified(void *handle);
/* _event_base.py: test probe: a handle record was just wiped and is about to be freed. */
void bs_py_handle_wiped(void *record, size_t size);

/* _server_request.py: a request for a Python route; 0, or the status to settle the request
   with (bs_http_settle): 500 when the callback raised, 503 when it closed its own server. */
int bs_py_http_request(struct bs_http_req *rec, void *route);
/* _server_request.py: the connection of a deferred request closed. */
void bs_py_http_gone(void *py);
/* _server_stream.py: reply bytes were written (drained: the count so far), or the connection
   closed (gone) with on_sent callbacks pending; returns the next threshold to wait for, 0: none. */
unsigned long long bs_py_http_sent(void *py, unsigned long long drained, int gone);
/* _server_stream.py: a piece of a streamed body (status BS_BODY_PIECE), or, with data NULL, its
   end (BS_BODY_END), refusal (413, 400) or loss (BS_BODY_LOST); see http.h. */
void bs_py_http_body(void *py, const char *data, size_t len, int status);
/* _client.py: a client request completed or failed. */
void bs_py_http_response(void *py);

#ifdef BS_CDEF
}
/* _secure.py: the locked pool's warning hook (passed to bs_pool_set_warning_hook). */
extern "Python" void bs_py_pool_mlock_warning(int err, size_t size);
#endif

#endif
