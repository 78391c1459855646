/*
 * The embedding API of bitcoin_support._embed (build_embed.py): the one function cffi generates
 * for the C side. bs_python_attach() in attach.c calls it after starting Python; its Python side
 * is bitcoin_support._attach.attach(). `result` is preset to -1 by the caller and written by
 * Python, so a failed cffi start-up still reads as failure.
 */
void _bs_embed_attach(void *base, const char *module, const char *function, int *result);
