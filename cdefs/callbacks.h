/*
 * Python functions the event shim (event.c) calls through its C trampolines. "Python+C" makes
 * them callable from the shim's own C files; they are bound in bitcoin_support/_event.py with
 * ffi.def_extern. Only plain C types here: this header is fed to ffi.cdef before event.h.
 */
extern "Python+C" {
    /* A Python-callback event fired (its flags are in the record); pending says whether it
       stays added after this run. Returns the flags to re-activate it with (0: none), nonzero
       only while Python holds it. */
    int bs_py_event_cb(void *handle, int pending);
    /* A C-callback event fired and is no longer pending: its Python handle may drop it. */
    void bs_py_event_unheld(void *handle);
    /* The base's internal notify or wakeup event fired: run call_soon_threadsafe work. */
    void bs_py_base_cb(void *handle);
    /* Test probe: a handle record was just wiped and is about to be freed. */
    void bs_py_release_probe(void *record, size_t size);
}
