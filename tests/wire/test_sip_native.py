"""The mypyc-compiled SIP codec against its pure-Python sources, the reference (issue 14's compiled-code rule).

Two child processes parse the same inputs — the Lync corpus, the RFC 4475 torture messages and seeded
mutations of both — one with the compiled modules, one with ``EDGESIM_PURE=1`` (sources only). Each prints,
per input, what came out: the status and reason of a refusal, or the re-encoded bytes, the typed views and
the 200 built for a request. The two outputs must be the same, byte for byte.

Also here: the install compiled the codec (in CI: a fresh machine must get the fast path the benchmark
figures were measured on), and an edited source makes every module run from its ``.py``, so a stale
extension never runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.wire import sip

ROOT = Path(__file__).resolve().parent.parent.parent
IN_CI = os.environ.get("CI") == "true"

# The child: prints one line per input. Inputs are built in the child from the same seed, so both children
# see the same bytes.
CHILD = r"""
import random
from simulator.wire import sip
from simulator.wire.errors import MalformedMessage
from simulator.wire.sip import SipRequest, make_response, parse_message, parse_name_addr
from tests.sip.corpus import ALL
from tests.sip.test_never_crash import _INTERESTING as interesting
from tests.sip.test_rfc4475 import MESSAGES as RFC4475

inputs = list(ALL.values()) + list(RFC4475.values())
rng = random.Random(4475)
base = list(inputs)
for _ in range(3000):
    data = bytearray(rng.choice(base))
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(data))
        kind = rng.randint(0, 3)
        if kind == 0:
            del data[pos:pos + rng.randint(1, 20)]
        elif kind == 1:
            data[pos:pos] = rng.choice(interesting)
        elif kind == 2:
            data[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif pos < len(data):
            data[pos] = rng.getrandbits(8)
    inputs.append(bytes(data))
print("compiled" if sip.COMPILED else "pure", len(inputs))
for data in inputs:
    try:
        message = parse_message(data)
    except MalformedMessage as error:
        print("refused", error.status, repr(error.reason))
        continue
    def attempt(view):
        try:
            return view()
        except MalformedMessage as error:  # a view parsed on demand may refuse what the parse let through
            return "view refused " + repr(error.reason)
    fields = [type(message).__name__] + [attempt(view) for view in (
        lambda: message.encode().hex(), lambda: repr(message.headers.items), lambda: str(message.top_via),
        lambda: str(message.from_), lambda: str(message.to), lambda: str(message.cseq),
        lambda: repr(message.from_.tag),
        lambda: repr([parse_name_addr(value) for value in message.headers.values("contact")]))]
    if isinstance(message, SipRequest):
        fields.append(attempt(lambda: str(message.uri)))
        fields.append(attempt(lambda: make_response(message, 200, to_tag="5f3a").encode().hex()))
    print("parsed", repr(fields))  # repr: a field may hold a raw line break
"""


def _run(pure: bool) -> list[str]:
    env = {**os.environ, "EDGESIM_PURE": "1" if pure else "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def _need_compiled() -> None:
    if sip.COMPILED:
        return
    if IN_CI:
        pytest.fail("the SIP codec is not compiled: `make venv` must build it with mypyc (setup.py)")
    pytest.skip("the SIP codec is not compiled here (no C compiler at install time, EDGESIM_PURE=1, or an edited "
                "source since the build: run `make venv`)")


def test_the_install_compiled_the_sip_codec() -> None:
    _need_compiled()
    assert sip.parse.__file__ is not None and not sip.parse.__file__.endswith(".py")


def test_compiled_and_pure_codecs_give_the_same_bytes() -> None:
    _need_compiled()
    compiled, pure = _run(pure=False), _run(pure=True)
    assert compiled[0].startswith("compiled ") and pure[0].startswith("pure ")
    assert compiled[0].split()[1] == pure[0].split()[1]
    outcomes = {line.split(" ", 1)[0] for line in pure[1:]}
    assert outcomes == {"parsed", "refused"}, outcomes  # the mutations reach both outcomes
    for index, (left, right) in enumerate(zip(compiled[1:], pure[1:], strict=True)):
        assert left == right, f"input {index}: compiled {left[:300]!r} != pure {right[:300]!r}"


def test_an_edited_source_runs_from_source(tmp_path: Path) -> None:
    _need_compiled()
    copy = tmp_path / "simulator"
    shutil.copytree(ROOT / "simulator", copy, ignore=shutil.ignore_patterns("__pycache__"))
    for shared in ROOT.glob("*__mypyc*.so"):  # the compiled modules' shared library
        shutil.copy(shared, tmp_path)
    probe = ("from simulator.wire import sip; import simulator.wire.sip.parse as p, simulator.wire.sip.uri as u; "
             "print(sip.COMPILED, p.__file__.endswith('.py'), u.__file__.endswith('.py'))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EDGESIM_PURE": "0"}

    def run() -> str:
        done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert run() == "True False False"  # the copy, as built
    uri = copy / "wire" / "sip" / "uri.py"
    uri.write_text(uri.read_text() + "\n# edited after the build\n")
    assert run() == "False True True"  # one source edited: every module from its source
