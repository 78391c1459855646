"""The cost of a callback and of a call through two cffi versions, to choose the pin on evidence.

    .venv/bin/python bench/bench_cffi_versions.py [--versions 1.17.1 2.1.1 2.1.1+src]
        [--n 1000000] [--instructions]

For each version, a throwaway virtual environment under /tmp (kept for the next run) gets
``cffi==VERSION`` from the package index; in it, a tiny API-mode module is compiled with an
``extern "Python"`` callback that C calls n times in a loop, and a trivial C function that Python
calls n times in a loop. Printed: ns per callback and ns per call (the best of ``--repeat``), and
each version against the first.

``--instructions`` counts instead, under callgrind (valgrind), the instructions per callback
inside ``call_cb_n`` for each version, and prints the functions that take them (exclusive
counts per callback): the figures a shared machine cannot move.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

VENVS = Path(tempfile.gettempdir()) / "bs_cffi_versions"

WORKER = r'''
import json, sys, tempfile, time, importlib.util
import cffi

n, repeat = int(sys.argv[1]), int(sys.argv[2])
once = sys.argv[3:] == ["once"]  # under callgrind: n callbacks, counted inside call_cb_n only
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

if once:
    lib.call_cb_n(n)
    sys.exit(0)
best = {"callback": 1e18, "call": 1e18, "loop": 1e18}
for _ in range(repeat):
    best["callback"] = min(best["callback"], per_callback())
    best["call"] = min(best["call"], per_call())
    best["loop"] = min(best["loop"], empty_loop())
print(json.dumps({"version": cffi.__version__, **best}))
'''


def venv_python(version: str) -> Path:
    """A venv with exactly cffi==version (and setuptools to compile), created once; a version
    written ``X+src`` is cffi X compiled here from its source release (this Python's flags)
    instead of the index's wheel."""
    venv = VENVS / f"cffi-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        release, _, src = version.partition("+")
        if src:
            pip.append("--no-binary=cffi")
        subprocess.run([*pip, f"cffi=={release}", "setuptools"], check=True)
    return python


def instructions(python: Path, n: int, top: int) -> tuple[float, list[tuple[float, str]]]:
    """Instructions per callback inside ``call_cb_n``, and the ``top`` functions by exclusive
    instructions per callback (name and object file)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                "--toggle-collect=call_cb_n",
                f"--callgrind-out-file={out}",
                str(python),
                "-c",
                WORKER,
                str(n),
                "1",
                "once",
            ],
            capture_output=True,
            check=True,
            timeout=900,
        )
        text = subprocess.run(
            ["callgrind_annotate", "--threshold=99", str(out)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    total = 0.0
    rows: list[tuple[float, str]] = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)( \([^)]*\))?\s+(\S.*)$", line)
        if m is None:
            continue
        count = int(m.group(1).replace(",", "")) / n
        what = m.group(3)
        if what.startswith("PROGRAM TOTALS"):
            total = count
        elif ":" in what and len(rows) < top:
            name = what.split(":", 1)[1]
            rows.append((count, re.sub(r"\[(?:.*/)?([^/\]]+)\]", r"[\1]", name)))
    return total, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=["1.17.1", "2.1.1", "2.1.1+src"])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    if args.instructions:
        counted = {v: instructions(venv_python(v), args.n, args.top) for v in args.versions}
        first = counted[args.versions[0]][0]
        for version, (total, rows) in counted.items():
            print(f"cffi {version}: {total:,.0f} instructions per callback (x{total / first:.2f})")
            for count, name in rows:
                print(f"  {count:>8,.1f}  {name}")
        return 0

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
        results.append({**json.loads(out), "version": version})  # X+src: the build, named

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
