"""A stub resolver for the lab's own clients: A and SRV queries to the lab DNS server.

Theory of operation
-------------------
The simulated clients (remote users, federated partners, XMPP peers) resolve names exactly like a
real stub: one query over UDP to a configured server; if the response comes back with TC set, the
same query again over TCP (RFC 7766 §5, RFC 1035 §4.2.1) — dnspython's
``dns.asyncquery.udp_with_fallback`` does that and tells us whether TCP was used. Each leg is bounded
by ``timeout`` seconds; a timeout becomes :class:`ResolverTimeout`, NXDOMAIN becomes
:class:`NameNotFound` from the ``resolve_*`` helpers, any other non-zero RCODE :class:`ResolverError`.

It only *resolves*. Which address to connect to first, and whether to fail over, is the client's
resolver policy (``simulator.core.dns_policy``): ``policy.candidates(await resolver.resolve_a(name), now)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from dns.rdtypes.IN.A import A as ARdata
from dns.rdtypes.IN.SRV import SRV as SrvRdata

DEFAULT_TIMEOUT: Final = 2.0


class ResolverError(Exception):
    """The lookup failed (an error RCODE or an unusable response)."""


class ResolverTimeout(ResolverError):
    """No response within the timeout (over UDP, or over TCP after a truncated UDP answer)."""


class NameNotFound(ResolverError):
    """The server answered NXDOMAIN (RFC 2308 §2.1)."""


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """One SRV answer (RFC 2782) with the target's addresses from the additional section, if any."""

    priority: int
    weight: int
    port: int
    target: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """A response boiled down: RCODE name, A addresses, SRV targets, and whether TCP was needed."""

    rcode: str
    addresses: tuple[str, ...] = ()
    srv_targets: tuple[SrvTarget, ...] = ()
    used_tcp: bool = False


@dataclass
class ResolverCounters:
    """Queries sent, and how many of them had to be retried over TCP."""

    queries: int = 0
    tcp_retries: int = 0
    timeouts: int = 0


@dataclass
class StubResolver:
    """Queries one DNS server (``server_host``, ``server_port``) from an optional ``source`` address.

    ``edns_payload`` adds an EDNS0 OPT advertising that UDP payload size (RFC 6891 §6.2.5); ``None``
    sends classic queries, limited to 512-octet UDP answers (RFC 1035 §4.2.1).
    """

    server_host: str
    server_port: int
    timeout: float = DEFAULT_TIMEOUT
    source: str | None = None
    edns_payload: int | None = None
    counters: ResolverCounters = field(default_factory=ResolverCounters)

    async def query(self, name: str, rdtype: str, transport: str = "auto") -> DnsAnswer:
        """Send one query for (``name``, ``rdtype``); any RCODE returned.

        ``transport``: ``auto`` — UDP first, TCP when truncated (RFC 7766 §5); ``udp`` — UDP only (a
        truncated answer comes back as it is); ``tcp`` — TCP only.
        """
        if transport not in ("auto", "udp", "tcp"):
            raise ValueError(f"transport must be auto, udp or tcp, not {transport!r}")
        use_edns = 0 if self.edns_payload is not None else False
        request = dns.message.make_query(
            name, dns.rdatatype.from_text(rdtype), use_edns=use_edns, payload=self.edns_payload or 512
        )
        self.counters.queries += 1
        try:
            if transport == "auto":
                response, used_tcp = await dns.asyncquery.udp_with_fallback(
                    request, self.server_host, timeout=self.timeout, port=self.server_port, source=self.source
                )
            elif transport == "udp":
                response = await dns.asyncquery.udp(request, self.server_host, timeout=self.timeout,
                                                    port=self.server_port, source=self.source, ignore_trailing=True)
                used_tcp = False
            else:
                response = await dns.asyncquery.tcp(request, self.server_host, timeout=self.timeout,
                                                    port=self.server_port, source=self.source)
                used_tcp = True
        except dns.exception.Timeout:
            self.counters.timeouts += 1
            raise ResolverTimeout(
                f"no answer for {name} {rdtype} from {self.server_host}:{self.server_port} "
                f"within {self.timeout} s"
            ) from None
        except dns.exception.DNSException as error:
            raise ResolverError(f"bad response for {name} {rdtype}: {error}") from None
        if used_tcp and transport == "auto":
            self.counters.tcp_retries += 1
        return _summarise(response, used_tcp)

    async def resolve_a(self, name: str, transport: str = "auto") -> list[str]:
        """All A addresses of ``name`` in the order the server gave them; ``[]`` for NODATA."""
        answer = _checked(await self.query(name, "A", transport), name)
        return list(answer.addresses)

    async def resolve_srv(self, name: str, transport: str = "auto") -> list[SrvTarget]:
        """SRV targets of ``name``, lowest priority first, then highest weight (RFC 2782 order)."""
        answer = _checked(await self.query(name, "SRV", transport), name)
        return sorted(answer.srv_targets, key=lambda srv: (srv.priority, -srv.weight))


def _checked(answer: DnsAnswer, name: str) -> DnsAnswer:
    if answer.rcode == "NXDOMAIN":
        raise NameNotFound(f"{name} does not exist")
    if answer.rcode != "NOERROR":
        raise ResolverError(f"{name}: server answered {answer.rcode}")
    return answer


def _summarise(response: dns.message.Message, used_tcp: bool) -> DnsAnswer:
    addresses: list[str] = []
    srv_records: list[SrvRdata] = []
    for rrset in response.answer:
        for rdata in rrset:
            if isinstance(rdata, ARdata):
                addresses.append(rdata.address)
            elif isinstance(rdata, SrvRdata):
                srv_records.append(rdata)
    glue: dict[str, list[str]] = {}
    for rrset in response.additional:  # RFC 2782: targets' addresses may come as additional data
        for rdata in rrset:
            if isinstance(rdata, ARdata):
                glue.setdefault(rrset.name.to_text(omit_final_dot=True).lower(), []).append(rdata.address)
    targets = []
    for srv in srv_records:
        target = srv.target.to_text(omit_final_dot=True).lower()
        targets.append(SrvTarget(srv.priority, srv.weight, srv.port, target, tuple(glue.get(target, ()))))
    return DnsAnswer(
        rcode=dns.rcode.to_text(response.rcode()),
        addresses=tuple(addresses),
        srv_targets=tuple(targets),
        used_tcp=used_tcp,
    )
