/*
 * The embedding API of bitcoin_support._embed (build_embed.py): the functions cffi generates
 * for the C side. bs_python_attach(), bs_python_attach_evhttp(), bs_python_detach() and
 * bs_python_pending() in attach.c call them after starting Python; their Python side is
 * bitcoin_support._attach.
 * `result` is preset to -1 by the caller and written by Python, so a failed cffi start-up still
 * reads as failure.
 */
void bs_py_embed_attach(void *base, const char *module, const char *function, int *result);
void bs_py_embed_attach_evhttp(void *http, const char *module, const char *function, int *result);
void bs_py_embed_detach(void *base, int *result);
void bs_py_embed_pending(void *base, int *result);
void bs_py_embed_set_gate(void *http, void *gate, void *arg, int *result);
void bs_py_embed_set_strict(void *http, int on, int *result);
