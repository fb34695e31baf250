"""No Python repr reaches a user: the shapes probes have been seen to leak become words."""

from __future__ import annotations

import pytest

from simulator.report.text import has_repr, plain


@pytest.mark.parametrize(("raw", "shown"), [
    ("edge1: peer Address(host='127.94.200.7', port=36931) → TCP relay", "edge1: peer 127.94.200.7:36931 → TCP relay"),
    ("probe error: TimeoutError()", "probe error: timed out"),
    ("probe error: ConnectionResetError(104, 'Connection reset by peer')", "probe error: Connection reset by peer"),
    ("probe error: ValueError('bad length 7')", "probe error: ValueError: bad length 7"),
    ("sent to ('127.94.0.53', 53)", "sent to 127.94.0.53:53"),
    ("REGISTER (401) then 200 OK", "REGISTER (401) then 200 OK"),  # parentheses of words stay as they are
])
def test_plain_turns_reprs_into_words(raw: str, shown: str) -> None:
    assert plain(raw) == shown
    assert not has_repr(plain(raw))


def test_has_repr_sees_what_it_must() -> None:
    assert has_repr("Address(host='a', port=1)") and has_repr("TimeoutError()")
    assert has_repr("<simulator.x.Thing object at 0x7f00>")
    assert not has_repr("401 then 200 (ms-user-logon-data RemoteUser)")
