"""The C sources' house rules that a compiler does not check: lines of at most 100 columns (as
``.clang-format`` says), and comments that cite a function as ``name()`` cite one that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
C_DIRS = (ROOT / "cdefs", ROOT / "examples" / "c_host")
C_FILES = sorted(p for d in C_DIRS for p in d.rglob("*") if p.suffix in (".c", ".h"))
COLUMNS = 100
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
# A call cited in a comment: name(), not attr.name() (Python's, such as ffi.new_handle()).
_CITED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(\)")
# libc functions the comments name; every other cited name must be in the C code itself.
_LIBC = frozenset({"accept", "fork"})


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_c_files_are_found() -> None:
    names = {p.name for p in C_FILES}
    assert {"event.c", "event.h", "export.h", "host.c"} <= names


@pytest.mark.parametrize("path", C_FILES, ids=_rel)
def test_no_c_line_is_over_100_columns(path: Path) -> None:
    long = [
        f"{_rel(path)}:{n}: {len(line)} columns"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if len(line.expandtabs(4)) > COLUMNS
    ]
    assert not long, "\n".join(long)


def _code_names() -> set[str]:
    """Every identifier in the C code (comments removed) of cdefs/ and the public header."""
    names: set[str] = set()
    for path in [*C_FILES, ROOT / "bitcoin_support" / "include" / "bitcoin_support.h"]:
        names.update(re.findall(r"\b[A-Za-z_]\w*\b", _COMMENT.sub(" ", path.read_text())))
    return names


def test_functions_cited_in_cdefs_comments_exist() -> None:
    names = _code_names() | _LIBC
    cited: dict[str, list[str]] = {}
    for path in C_FILES:
        if ROOT / "cdefs" not in path.parents:
            continue
        text = path.read_text()
        for comment in _COMMENT.finditer(text):
            for m in _CITED.finditer(comment.group()):
                line = text.count("\n", 0, comment.start() + m.start()) + 1
                cited.setdefault(m.group(1), []).append(f"{_rel(path)}:{line}")
    assert len(cited) > 10  # the scan sees the comments
    stale = {name: where for name, where in cited.items() if name not in names}
    assert not stale, stale


def test_the_check_finds_a_stale_name() -> None:
    # The same scan over a made-up comment: a name no C file has is reported.
    comment = "/* moves through rec_gone_away(), then bs_rec_enter() */"
    found = set(_CITED.findall(comment))
    assert found == {"rec_gone_away", "bs_rec_enter"}
    assert found - _code_names() == {"rec_gone_away"}
