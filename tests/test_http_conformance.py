"""The conformance table's checks (bench/http_conformance.py): llhttp's request cases against
the package's servers, over raw sockets on 127.0.0.1.

- every case llhttp's strict mode rejects as a framing error (length, chunk, header name) is
  refused by the default server, or listed in DIVERGENCES (and the README) with the reason
  libevent 2.1 keeps it from refusing it; with strict framing or a stream_body route, every one;
- no case makes a server answer a request made of bytes llhttp read as a body;
- with strict framing, no case makes it answer a request past llhttp's rejection except the
  listed request-target ones (not framing: libevent parses the target itself).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import http_conformance as conf

# request-line cases both framing servers answer (not framing: libevent parses the target)
TARGET_CASES = {"uri.md:150", "uri.md:247"}


@pytest.fixture(scope="module")
def cases() -> list[conf.Case]:
    found = conf.load_cases()
    assert len(found) > 100
    return found


@pytest.fixture(scope="module", params=conf.MODES)
def rows(request: pytest.FixtureRequest, cases: list[conf.Case]) -> Iterator[list[conf.Row]]:
    yield conf.run(cases, request.param)


def test_framing_errors_refused(rows: list[conf.Row]) -> None:
    framing = [r for r in rows if r.case.framing]
    assert len(framing) >= 25
    answered = {r.case.where for r in framing if not r.refused}
    assert answered <= set(conf.DIVERGENCES), sorted(answered - set(conf.DIVERGENCES))


def test_no_body_answered_as_a_request(rows: list[conf.Row]) -> None:
    bad = [r.case.where for r in rows if r.body_as_request]
    assert bad == []


def test_strict_framing_refuses_all_framing_errors(cases: list[conf.Case]) -> None:
    rows = conf.run(cases, "strict")
    assert [r.case.where for r in rows if r.case.framing and not r.refused] == []
    beyond = {r.case.where for r in rows if r.beyond_llhttp}
    assert beyond <= TARGET_CASES, sorted(beyond - TARGET_CASES)


def test_the_divergences_are_real(cases: list[conf.Case]) -> None:
    """DIVERGENCES lists only cases the default server still answers (none goes stale)."""
    rows = {r.case.where: r for r in conf.run(cases, "default")}
    for where in conf.DIVERGENCES:
        assert rows[where].case.framing
        assert not rows[where].refused, where
