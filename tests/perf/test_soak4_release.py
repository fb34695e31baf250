"""A sign-in leaves nothing live behind once it ended (issue 14, the churn soak's RSS slope).

Design (simulator/lab/access.py, helpers/soak4/NOTES.md): a remote user's TLS connection, SIP client, its
transactions and the Edge's and Director's per-connection state all go when the user signs out (closes). What
may stay, each with its own bound: the client NAT's binding of the closed TCP connection (RFC 5382 §5 REQ-5:
until the transitory timeout, >= 4 min; one binding and one endpoint per sign-in here) and entries of the wire
layer's parse caches (functools.lru_cache, bounded by maxsize). So between two equal batches of sign-ins, the
count of live objects of every other simulator type must not change.
"""

from __future__ import annotations

import asyncio
import collections
import gc

from simulator.lab.access import remote_user_session, user_accounts
from simulator.lab.topology import Lab
from simulator.spec.schema import Scenario

BATCH = 24
# bounded, not per-session: see the module docstring
ALLOWED = ("simulator.core.nat._Binding", "simulator.core.nat._Endpoint")
CACHED_MODULES = ("simulator.wire.",)  # lru_cache results (Via, NameAddr, SipUri...) are bounded by maxsize


def simulator_objects() -> collections.Counter[str]:
    gc.collect()
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        module = kind.__dict__.get("__module__")  # a metaclass's __module__ is a descriptor, not a str
        if isinstance(module, str) and module.startswith("simulator."):
            counts[f"{module}.{kind.__qualname__}"] += 1
    return counts


async def test_sign_ins_leave_no_live_simulator_objects(shipped_scenario: Scenario) -> None:
    async with Lab(shipped_scenario) as lab:
        accounts = user_accounts(lab)
        index = 0

        async def batch() -> None:
            nonlocal index
            for _ in range(BATCH):
                async with remote_user_session(lab, "edge1", index=index % len(accounts), timeout=5, seed=index):
                    index += 1
            await asyncio.sleep(0.3)  # the far ends see the connections close

        await batch()  # warm-up: lazily built state (TLS contexts, pooled Edge<->Director connections)
        before = simulator_objects()
        await batch()
        after = simulator_objects()
        grew = {name: after[name] - before[name] for name in after if after[name] != before[name]}
        nat = {name: n for name, n in grew.items() if name in ALLOWED}
        rest = {name: n for name, n in grew.items()
                if name not in ALLOWED and not name.startswith(CACHED_MODULES) and n > 0}
        assert rest == {}, f"per-sign-in objects still live after {BATCH} sign-ins: {rest}"
        # the NAT keeps exactly one binding (and endpoint) per closed connection until the transitory timeout
        assert nat == {"simulator.core.nat._Binding": BATCH, "simulator.core.nat._Endpoint": BATCH}, nat
