"""The conformance table's checks (bench/http_conformance.py): llhttp's request cases against
the package's servers, over raw sockets on 127.0.0.1.

- every case llhttp's strict mode rejects as a framing error (length, chunk, header name) is
  refused by the default server (strict framing) and by a stream_body one;
- no case makes a server answer a request made of bytes llhttp read as a body, not even with
  the opt-out (set_strict_framing(False));
- no case makes a strict server answer a request past llhttp's rejection except the listed
  request-target ones (not framing: libevent parses the target itself);
- docs/http-conformance.md is what scripts/conformance_table.py writes from the same run.

Each server runs the cases once for the whole file (about a second a server).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import conformance_table as page_script  # puts bench/ on sys.path for http_conformance
import http_conformance as conf

# request-line cases both framing servers answer (not framing: libevent parses the target)
TARGET_CASES = {"uri.md:150", "uri.md:247"}


@pytest.fixture(scope="module")
def cases() -> list[conf.Case]:
    found = conf.load_cases()
    assert len(found) > 100
    return found


@pytest.fixture(scope="module")
def results(cases: list[conf.Case]) -> dict[str, list[conf.Row]]:
    return page_script.run(cases)


@pytest.fixture(params=conf.MODES)
def rows(request: pytest.FixtureRequest, results: dict[str, list[conf.Row]]) -> list[conf.Row]:
    return results[request.param]


@pytest.fixture(params=("default", "stream_body"))
def strict_rows(
    request: pytest.FixtureRequest, results: dict[str, list[conf.Row]]
) -> list[conf.Row]:
    return results[request.param]


def test_framing_errors_refused(strict_rows: list[conf.Row]) -> None:
    framing = [r for r in strict_rows if r.case.framing]
    assert len(framing) >= 25
    answered = {r.case.where for r in framing if not r.refused}
    assert answered <= set(conf.DIVERGENCES), sorted(answered - set(conf.DIVERGENCES))
    beyond = {r.case.where for r in strict_rows if r.beyond_llhttp}
    assert beyond <= TARGET_CASES, sorted(beyond - TARGET_CASES)


def test_no_body_answered_as_a_request(rows: list[conf.Row]) -> None:
    bad = [r.case.where for r in rows if r.body_as_request]
    assert bad == []


def test_the_opt_out_reads_as_libevent_does(results: dict[str, list[conf.Row]]) -> None:
    """set_strict_framing(False) is libevent's own reader: it answers a chunk size followed by
    a space, which the default server refuses."""
    rows = {r.case.where: r for r in results["lax"]}
    assert rows["transfer-encoding.md:293"].case.framing
    assert not rows["transfer-encoding.md:293"].refused


def test_the_conformance_page_is_current(
    cases: list[conf.Case], results: dict[str, list[conf.Row]]
) -> None:
    """The committed page's generated part is what the script writes from this run (rows that
    differ are sent again alone first, so a slow moment of a loaded machine is not a change).
    Without httptools its column is taken from the page and every other one is compared. The
    lax column is the system libevent's own reader, which Debian 12's and 13's builds of
    2.1.12 do not read alike (an LF-only request): it is left out of the comparison, and the
    package's own columns, llhttp's and httptools' are compared in full."""
    page = page_script.PAGE.read_text()
    assert page_script.BEGIN in page
    if not page_script.has_httptools():
        page_script.borrow_httptools(cases, page)
    fresh = page_script.settle(page, results)
    assert fresh.count("\n| ") > len(cases)  # the totals and a row per case
    assert _without_lax(fresh) == _without_lax(page), (
        "docs/http-conformance.md is out of date: run scripts/conformance_table.py"
    )


def _without_lax(page: str) -> list[str]:
    """``page``'s lines with the lax column's cells (and the case's "differs" mark, which the
    lax cell can set) blanked, in the totals and in the case table."""
    lines = []
    for line in page.splitlines():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) == 6:  # a case row or the case table's head
            cells[0] = cells[0].replace(" **≠**", "")
            cells[4] = "-"
        elif line.startswith("| ") and len(cells) == 4:  # a row of the totals
            cells[2] = "-"
        lines.append(" | ".join(cells))
    return lines
