"""The pure parts of ``serve av-edge --workers N``: relay slices, connection IDs that name their worker, the
ConnectionBind peek that decides a hand-over, the HMAC-derived MRAS credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.core.credentials import CredentialStore, derived_credential
from simulator.net.edge.workers import WorkerRandom, connection_bind_id, connection_owner, relay_slices
from simulator.wire import stun, turn
from simulator.wire.stun import attr
from simulator.wire.turn import TurnMethod


@given(st.integers(1024, 60000), st.integers(0, 5000), st.integers(1, 16))
def test_slices_are_disjoint_contiguous_and_cover_the_range(first: int, extra: int, count: int) -> None:
    last = first + extra + count - 1
    slices = relay_slices(first, last, count)
    assert len(slices) == count and slices[0][0] == first and slices[-1][1] == last
    for (_, hi), (lo, _) in itertools.pairwise(slices):
        assert lo == hi + 1
    sizes = [hi - lo + 1 for lo, hi in slices]
    assert max(sizes) - min(sizes) <= 1


def test_a_range_smaller_than_the_workers_is_refused() -> None:
    with pytest.raises(ValueError):
        relay_slices(50000, 50000, 2)


@given(st.integers(0, 2**32), st.integers(1, 8), st.data())
def test_connection_ids_name_their_worker(seed: int, count: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, count - 1))
    rng = WorkerRandom(seed, index, count)
    for _ in range(20):
        cid = rng.getrandbits(32)
        assert 0 <= cid <= 0xFFFFFFFF  # RFC 6062 §6.2.1: a 32-bit CONNECTION-ID
        assert connection_owner(cid, count) == index


def _bind(cid: int, *, signed: bool = True) -> bytes:
    msg = stun.request(TurnMethod.CONNECTION_BIND, bytes(range(12)), attr(turn.CONNECTION_ID, cid), dialect=turn.RFC)
    if signed:
        msg = msg.with_attributes(attr(stun.USERNAME, "alice"), attr(stun.REALM, "r"), attr(stun.NONCE, "n"))
        return msg.serialize(key=b"k" * 16)
    return msg.serialize()


@pytest.mark.parametrize("signed", [True, False])
def test_the_peek_reads_the_connection_id_of_a_whole_connection_bind(signed: bool) -> None:
    wire = _bind(0xDEADBEEF, signed=signed)
    assert connection_bind_id(wire) == 0xDEADBEEF
    assert connection_bind_id(wire + b"trailing data") == 0xDEADBEEF
    for cut in range(len(wire)):  # TCP may deliver it in pieces: wait for the whole message
        assert connection_bind_id(wire[:cut]) is True


def test_the_peek_leaves_every_other_first_message_alone() -> None:
    allocate = stun.request(TurnMethod.ALLOCATE, bytes(12), attr(turn.REQUESTED_TRANSPORT, 6), dialect=turn.RFC)
    assert connection_bind_id(allocate.serialize()) is None
    assert connection_bind_id(b"\x16\x03\x01\x00\x10" + bytes(40)) is None  # MS-TURN pseudo-TLS hello
    no_cid = stun.request(TurnMethod.CONNECTION_BIND, bytes(12), dialect=turn.RFC).serialize()
    assert connection_bind_id(no_cid) is None
    assert connection_bind_id(b"") is True


def test_derived_credentials_follow_the_rest_scheme_and_expire() -> None:
    # draft-uberti-behave-turn-rest §2.2 (coturn use-auth-secret): username "expiry:user",
    # password base64(HMAC-SHA1(secret, username))
    credential = derived_credential("s3", "sip:alice@contoso.com", 2000.9)
    assert credential.username == "2000:sip:alice@contoso.com" and credential.expires_at == 2000
    want = base64.b64encode(hmac.new(b"s3", credential.username.encode(), hashlib.sha1).digest()).decode()
    assert credential.password == want
    store = CredentialStore(rest_secret="s3")  # another process: nothing issued into it
    assert store.password_for(credential.username, 1999.0) == want
    assert store.password_for(credential.username, 2000.0) is None
    assert CredentialStore(rest_secret="other").password_for(credential.username, 1999.0) != want


def test_a_listening_port_held_with_so_reuseport_is_an_environment_error() -> None:
    """Another process holding the port with SO_REUSEPORT would otherwise share its traffic with the workers."""
    import socket
    import subprocess
    import sys

    host = f"127.83.{random.Random().randrange(1, 250)}.40"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((host, 0))
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "simulator.cli", "serve", "av-edge", "--listen", host,
                               "--public", host, "--udp-port", str(port), "--tcp-port", "0", "--workers", "2"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines() == [f"edgesim: serve av-edge: [Errno 98] UDP {host}:{port}: "
                                                "Address already in use"]
