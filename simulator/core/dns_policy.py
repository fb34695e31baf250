"""Client resolver policies: in which order a client tries the addresses DNS gave it.

Theory of operation
-------------------
Lync DNS load balancing (research-lync-edge.md §2.1) is decided by the *client*, not by the DNS
server: the pool FQDN resolves to every node's address and the client picks. A policy is a small
state machine fed by the client's connect logic::

    for address in policy.candidates(addresses, now):
        try connect(address)            # TCP/TLS/SIP, with the client's own timeout
        except failure/timeout: policy.report_failure(address, now); continue
        policy.report_success(address, now); break

Two behaviours are modelled, each one row of ``RESOLVER_POLICIES``:

* ``"lync"`` (:class:`LyncFailoverPolicy`, Lync 2010+/UCMA): shuffle all usable addresses with a
  seeded RNG, try them in turn; a failed address is unusable for 600 s (UCMA "DNS load balancing":
  10 minutes). When *every* address is penalised the policy still offers them all, least recently
  failed first, rather than nothing: a client with no candidate could never notice a recovery.
* ``"legacy"`` (:class:`LegacySingleAddressPolicy`, OCS 2007/R2 federation, PIC, old UM): one
  address — the first one returned — and never a second one, which is the documented "no failover
  through a DNS-LB pool" gap the report must show.

Time is passed in as ``now`` (seconds, any monotonic origin); nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final, Protocol

LYNC_FAILED_ADDRESS_PENALTY_SECONDS: Final = 600.0  # UCMA: a failed server is unusable for 10 minutes


class ResolverPolicy(Protocol):
    """What a client's connect logic needs from a resolver policy."""

    name: ClassVar[str]

    def candidates(self, addresses: Sequence[str], now: float) -> list[str]:
        """The addresses to try, in order (duplicates removed); empty only if ``addresses`` is."""
        ...

    def report_failure(self, address: str, now: float) -> None:
        """The connect attempt to ``address`` failed or timed out at ``now``."""
        ...

    def report_success(self, address: str, now: float) -> None:
        """The connect attempt to ``address`` succeeded at ``now``."""
        ...


def _unique(addresses: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


class LyncFailoverPolicy:
    """Lync 2010+/UCMA: shuffle, try each in turn, penalise a failed address for 600 s."""

    name: ClassVar[str] = "lync"

    def __init__(
        self, rng: random.Random, penalty_seconds: float = LYNC_FAILED_ADDRESS_PENALTY_SECONDS
    ) -> None:
        self._rng = rng
        self._penalty_seconds = penalty_seconds
        self._failed_at: dict[str, float] = {}

    def is_penalised(self, address: str, now: float) -> bool:
        """True while ``address`` is inside its penalty window (failed less than 600 s ago)."""
        failed_at = self._failed_at.get(address)
        return failed_at is not None and now < failed_at + self._penalty_seconds

    def penalised_until(self, address: str) -> float | None:
        """When the address becomes usable again, or ``None`` if it never failed (or recovered)."""
        failed_at = self._failed_at.get(address)
        return None if failed_at is None else failed_at + self._penalty_seconds

    def candidates(self, addresses: Sequence[str], now: float) -> list[str]:
        """Usable addresses shuffled; if none is usable, all of them, least recently failed first."""
        unique = _unique(addresses)
        usable = [a for a in unique if not self.is_penalised(a, now)]
        if usable:
            self._rng.shuffle(usable)
            return usable
        return sorted(unique, key=lambda address: self._failed_at[address])

    def report_failure(self, address: str, now: float) -> None:
        """Start (or restart) the 600 s penalty for ``address``."""
        self._failed_at[address] = now

    def report_success(self, address: str, now: float) -> None:
        """A working address is usable again at once."""
        self._failed_at.pop(address, None)


class LegacySingleAddressPolicy:
    """OCS 2007/R2 federation, PIC: the first address only, never a failover."""

    name: ClassVar[str] = "legacy"

    def __init__(self, rng: random.Random | None = None) -> None:
        # The RNG is accepted so every policy is built the same way; the legacy client ignores it.
        del rng

    def candidates(self, addresses: Sequence[str], now: float) -> list[str]:
        """``[addresses[0]]``, or ``[]`` when DNS returned nothing."""
        return list(addresses[:1])

    def report_failure(self, address: str, now: float) -> None:
        """Ignored: the legacy client neither remembers nor avoids a failed address."""

    def report_success(self, address: str, now: float) -> None:
        """Ignored."""


RESOLVER_POLICIES: Final[Mapping[str, Callable[[random.Random], ResolverPolicy]]] = {
    LyncFailoverPolicy.name: LyncFailoverPolicy,
    LegacySingleAddressPolicy.name: LegacySingleAddressPolicy,
}


def make_resolver_policy(name: str, rng: random.Random) -> ResolverPolicy:
    """Build the policy registered as ``name`` ("lync", "legacy"); ``ValueError`` lists the known ones."""
    try:
        factory = RESOLVER_POLICIES[name.lower()]
    except KeyError:
        known = ", ".join(sorted(RESOLVER_POLICIES))
        raise ValueError(f"unknown resolver policy {name!r} (known: {known})") from None
    return factory(rng)
