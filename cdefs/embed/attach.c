/*
 * attach.c - bs_python_attach(): the entry point a C host calls to load Python handlers.
 *
 * Compiled only into the embeddable library (bitcoin_support/_embed*.so, see build_embed.py),
 * never into the Python extension _native.
 *
 * Starting Python from a host that is not python itself needs three things cffi's own start-up
 * (a bare Py_InitializeEx) does not do:
 *   1. libpython's symbols must be global, or extension modules (which do not link libpython)
 *      fail to load when the host dlopen()ed this library with RTLD_LOCAL. We re-open libpython
 *      with RTLD_GLOBAL | RTLD_NOLOAD, which only promotes the copy already mapped.
 *   2. The interpreter must find the virtual environment the package was installed into, with
 *      no PYTHONPATH or PYTHONHOME. We initialise it with a PyConfig whose `executable` is that
 *      environment's python: getpath and site then read its pyvenv.cfg, exactly as when the
 *      environment's python runs, so site-packages and .pth files (editable installs) work.
 *      The environment is found from this library's own path (.../site-packages/bitcoin_support/
 *      means the environment is three levels above site-packages); failing that, the python that
 *      built the library (BS_BUILD_EXECUTABLE, baked in at build time: editable installs).
 *   3. The host owns signals, so Python installs no signal handlers.
 * The folder above the package is also put on sys.path, so the package imports even when the
 * environment could not be found.
 *
 * Then the call goes to bs_py_embed_attach() (or bs_py_embed_attach_evhttp(),
 * bs_py_embed_detach(), bs_py_embed_pending()), the cffi embedding API function whose Python side
 * (bitcoin_support/_attach.py) imports the module and calls the function. Its result travels
 * through an out-parameter preset to -1, so a failed cffi initialisation (which makes cffi
 * return a zeroed result) still reads as failure.
 *
 * Lifetimes: Python, once started here, runs until the process exits; nothing here finalises
 * it, because handlers registered on the host's base may run for as long as the host lives.
 */
#pragma GCC diagnostic error "-Wunused-parameter" /* build_embed.py relaxes it for cffi's code */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "bitcoin_support.h"
#include "embed.h" /* cffi generates these; they take the GIL and start Python's side */
#include "secure.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef BS_BUILD_EXECUTABLE
#define BS_BUILD_EXECUTABLE ""
#endif

static pthread_once_t start_once = PTHREAD_ONCE_INIT;
static int start_failed;
static int started; /* an attach started Python (or found it running): detach has work to do */

/* Copy dirname(path) into out (size PATH_MAX); 0 when there is no parent. */
static int parent_dir(const char *path, char *out)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL || slash == path)
        return 0;
    size_t n = (size_t)(slash - path);
    if (n >= PATH_MAX)
        return 0;
    memcpy(out, path, n);
    out[n] = '\0';
    return 1;
}

/* The folder that holds the package folder, i.e. the sys.path entry the package lives in. */
static int package_parent(char *out)
{
    Dl_info info;
    char lib[PATH_MAX], pkg[PATH_MAX];
    if (dladdr((void *)&bs_python_attach, &info) == 0 || info.dli_fname == NULL)
        return 0;
    if (realpath(info.dli_fname, lib) == NULL)
        return 0;
    return parent_dir(lib, pkg) && parent_dir(pkg, out);
}

/* The python executable of the environment that holds the package, or "" if none was found. */
static void environment_python(const char *parent, char *out)
{
    char dir[PATH_MAX], probe[PATH_MAX + 32];
    const char *base = strrchr(parent, '/');
    out[0] = '\0';
    if (base != NULL &&
        (strcmp(base, "/site-packages") == 0 || strcmp(base, "/dist-packages") == 0)) {
        /* <env>/lib/pythonX.Y/site-packages: the environment is three levels up. */
        snprintf(dir, sizeof dir, "%s", parent);
        for (int i = 0; i < 3; i++)
            if (!parent_dir(dir, dir))
                return;
        static const char *const names[] = {"bin/python3", "bin/python"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            snprintf(probe, sizeof probe, "%s/%s", dir, names[i]);
            if (access(probe, X_OK) == 0 && strlen(probe) < PATH_MAX) {
                memcpy(out, probe, strlen(probe) + 1);
                return;
            }
        }
    }
    if (BS_BUILD_EXECUTABLE[0] != '\0' && access(BS_BUILD_EXECUTABLE, X_OK) == 0 &&
        strlen(BS_BUILD_EXECUTABLE) < PATH_MAX)
        memcpy(out, BS_BUILD_EXECUTABLE, strlen(BS_BUILD_EXECUTABLE) + 1);
}

/* Make libpython's symbols global for the extension modules Python will load. */
static void promote_libpython(void)
{
    Dl_info info;
    if (dladdr((void *)&Py_IsInitialized, &info) == 0 || info.dli_fname == NULL)
        return;
    /* The handle is kept for the life of the process on purpose: libpython must stay loaded. */
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

/* Print a failed PyStatus without letting Python exit the host process. */
static int report_status(PyStatus status, const char *what)
{
    if (!PyStatus_Exception(status))
        return 0;
    fprintf(stderr, "bitcoin_support: %s failed: %s%s%s\n", what,
            status.func ? status.func : "", status.func ? ": " : "",
            status.err_msg ? status.err_msg : "(no message)");
    return -1;
}

/* Put `dir` at the front of sys.path unless it is there already; needs the GIL. */
static int ensure_sys_path(const char *dir)
{
    PyObject *path = PySys_GetObject("path"); /* borrowed */
    PyObject *entry = PyUnicode_DecodeFSDefault(dir);
    int rc = -1;
    if (path == NULL || !PyList_Check(path) || entry == NULL)
        goto out;
    int found = PySequence_Contains(path, entry);
    if (found < 0)
        goto out;
    rc = found ? 0 : PyList_Insert(path, 0, entry);
out:
    Py_XDECREF(entry);
    if (rc < 0)
        PyErr_Print();
    return rc;
}

static void start_python(void)
{
    char parent[PATH_MAX], python[PATH_MAX];
    int have_parent = package_parent(parent);

    promote_libpython();
    if (!Py_IsInitialized()) {
        PyConfig config;
        PyConfig_InitPythonConfig(&config);
        config.install_signal_handlers = 0; /* the host owns signals */
        config.parse_argv = 0;
        PyStatus status = PyStatus_Ok();
        environment_python(have_parent ? parent : "", python);
        if (python[0] != '\0')
            status = PyConfig_SetBytesString(&config, &config.executable, python);
        if (!PyStatus_Exception(status))
            status = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (report_status(status, "starting Python") < 0) {
            start_failed = 1;
            return;
        }
        /* Py_InitializeFromConfig left this thread holding the GIL: fix the path, release it. */
        if (have_parent)
            (void)ensure_sys_path(parent);
        (void)PyEval_SaveThread();
        return;
    }
    /* Python was already running (the host embeds it, or this is a python process). */
    if (have_parent) {
        PyGILState_STATE gil = PyGILState_Ensure();
        (void)ensure_sys_path(parent);
        PyGILState_Release(gil);
    }
}

static int ensure_python(void)
{
    pthread_once(&start_once, start_python);
    if (start_failed)
        return -1;
    __atomic_store_n(&started, 1, __ATOMIC_RELEASE);
    return 0;
}

BS_EXPORT int bs_python_attach(struct event_base *base, const char *module, const char *function)
{
    int result = -1;
    if (base == NULL || module == NULL || function == NULL) {
        fprintf(stderr, "bitcoin_support: bs_python_attach: base, module and function are "
                        "required\n");
        return -1;
    }
    if (ensure_python() != 0)
        return -1;
    bs_py_embed_attach(base, module, function, &result);
    return result == 0 ? 0 : -1;
}

BS_EXPORT int bs_python_attach_evhttp(struct evhttp *http, const char *module,
                                      const char *function)
{
    int result = -1;
    if (http == NULL || module == NULL || function == NULL) {
        fprintf(stderr, "bitcoin_support: bs_python_attach_evhttp: http, module and function "
                        "are required\n");
        return -1;
    }
    if (ensure_python() != 0)
        return -1;
    bs_py_embed_attach_evhttp(http, module, function, &result);
    return result == 0 ? 0 : -1;
}

BS_EXPORT int bs_python_set_request_gate(struct evhttp *http, BsRequestGate gate, void *arg)
{
    int result = -1;
    void *fn;
    if (http == NULL) {
        fprintf(stderr, "bitcoin_support: bs_python_set_request_gate: http is required\n");
        return -1;
    }
    if (ensure_python() != 0)
        return -1;
    memcpy(&fn, &gate, sizeof fn); /* a function pointer travels as an address */
    bs_py_embed_set_gate(http, fn, arg, &result);
    return result == 0 ? 0 : -1;
}

BS_EXPORT int bs_python_set_strict_framing(struct evhttp *http, int on)
{
    int result = -1;
    if (http == NULL) {
        fprintf(stderr, "bitcoin_support: bs_python_set_strict_framing: http is required\n");
        return -1;
    }
    if (ensure_python() != 0)
        return -1;
    bs_py_embed_set_strict(http, on, &result);
    return result == 0 ? 0 : -1;
}

/* Never starts Python: if no attach did, Python made nothing on any base. 0: released;
   1: jobs still finishing (bs_python_pending() says when they are done); -1: failed. */
BS_EXPORT int bs_python_detach(struct event_base *base)
{
    int result = -1;
    if (base == NULL || !__atomic_load_n(&started, __ATOMIC_ACQUIRE))
        return 0;
    bs_py_embed_detach(base, &result);
    return result;
}

/* 1 while a detach of `base` waits for Python's jobs to finish, else 0 (-1: failed). */
BS_EXPORT int bs_python_pending(struct event_base *base)
{
    int result = -1;
    if (base == NULL || !__atomic_load_n(&started, __ATOMIC_ACQUIRE))
        return 0;
    bs_py_embed_pending(base, &result);
    return result;
}
