"""The cost of a callback and of a call through two cffi versions, to choose the pin on evidence.

    .venv/bin/python bench/bench_cffi_versions.py [--versions 1.17.1 2.1.1] [--n 1000000]

For each version, a throwaway virtual environment under /tmp (kept for the next run) gets
``cffi==VERSION`` from the package index; in it, a tiny API-mode module is compiled with an
``extern "Python"`` callback that C calls n times in a loop, and a trivial C function that Python
calls n times in a loop. Printed: ns per callback and ns per call (the best of ``--repeat``), and
each version against the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VENVS = Path(tempfile.gettempdir()) / "bs_cffi_versions"

WORKER = r'''
import json, sys, tempfile, time, importlib.util
import cffi

n, repeat = int(sys.argv[1]), int(sys.argv[2])
builder = cffi.FFI()
builder.cdef("""
    extern "Python" int py_cb(int);
    long call_cb_n(int n);
    int trivial(int x);
""")
builder.set_source("_cffi_versions_bench", """
    static int py_cb(int);
    long call_cb_n(int n) { long acc = 0; for (int i = 0; i < n; i++) acc += py_cb(i); return acc; }
    int trivial(int x) { return x + 1; }
""", extra_compile_args=["-O2"])
with tempfile.TemporaryDirectory() as tmp:
    path = builder.compile(tmpdir=tmp, verbose=False)
    spec = importlib.util.spec_from_file_location("_cffi_versions_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
ffi, lib = mod.ffi, mod.lib

@ffi.def_extern()
def py_cb(x):
    return x

def per_callback():
    t0 = time.perf_counter_ns()
    lib.call_cb_n(n)
    return (time.perf_counter_ns() - t0) / n

def per_call():
    f = lib.trivial
    t0 = time.perf_counter_ns()
    for i in range(n):
        f(i)
    return (time.perf_counter_ns() - t0) / n

def empty_loop():
    f = int
    t0 = time.perf_counter_ns()
    for i in range(n):
        f(i)
    return (time.perf_counter_ns() - t0) / n

best = {"callback": 1e18, "call": 1e18, "loop": 1e18}
for _ in range(repeat):
    best["callback"] = min(best["callback"], per_callback())
    best["call"] = min(best["call"], per_call())
    best["loop"] = min(best["loop"], empty_loop())
print(json.dumps({"version": cffi.__version__, **best}))
'''


def venv_python(version: str) -> Path:
    """A venv with exactly cffi==version (and setuptools to compile), created once."""
    venv = VENVS / f"cffi-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, f"cffi=={version}", "setuptools"], check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=["1.17.1", "2.1.1"])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    results = []
    for version in args.versions:
        python = venv_python(version)
        out = subprocess.run(
            [str(python), "-c", WORKER, str(args.n), str(args.repeat)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        results.append(json.loads(out))

    base = results[0]
    print(
        f"{'cffi':<8} {'ns/callback':>12} {'ns/call':>9} {'loop alone':>11}  vs {base['version']}"
    )
    for r in results:
        cb, call = r["callback"] / base["callback"], r["call"] / base["call"]
        figures = f"{r['callback']:>12.1f} {r['call']:>9.1f} {r['loop']:>11.1f}"
        print(f"{r['version']:<8} {figures}  callback x{cb:.2f}, call x{call:.2f}")
    print("ns/call includes the Python loop; 'loop alone' is the same loop calling int().")
    return 0


if __name__ == "__main__":
    sys.exit(main())
