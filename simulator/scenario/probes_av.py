"""Probes of the A/V rules: E10–E17, I6, I7, P4–P6.

Every probe first gets TURN credentials the way a Lync client does — sign in through the Access Edge
(443), SERVICE to MRAS, which the Director routes to the node's 5062 (rule I5) — then allocates on the
node's A/V Edge and moves data through the relay:

* MS-TURN over UDP 3478 / TCP 443 (E15, E16, P6 from outside; I6, I7 from inside): the 401 must carry
  ALTERNATE-SERVER = this node's public A/V address, the relay (MAPPED-ADDRESS) must be this node's public
  address on a port in the relay range, never a private address, and a payload must cross the relay to a
  media peer and back (the peer reports the source it saw: the relay's public address and port);
* UDP relay both ways (E11 out; E13 in, the peer speaking first), and Edge-to-Edge STUN to a partner's 3478
  through the relay (E14, P5: the partner's Binding answer names the relay address);
* TCP relays (RFC 6062 over TCP 443): the relay opens TCP to a peer (E10, P4; E17 to the peer's 443) or
  a peer opens TCP to the relay port (E12), and bytes cross both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from simulator.lab.access import frontend_mras_credentials, request_mras_credentials
from simulator.lab.addressing import HostKind
from simulator.lab.av import PEER_TCP_MEDIA_PORT, PEER_UDP_MEDIA_PORT, TURN_TCP_PORT, TURN_UDP_PORT
from simulator.lab.clients import nat_for, open_tcp
from simulator.net.clients.turn_client import Allocation, MsTurnClient, RfcTcpRelayClient
from simulator.net.clients.udp_sender import UdpSender
from simulator.net.peers.media_peer import parse_seen
from simulator.outcome import Outcome, ProbeFailure, Reason
from simulator.scenario.probing import ProbeContext, guarded, peer, probe
from simulator.spec.schema import ClientRole
from simulator.wire import mras, stun
from simulator.wire.errors import MalformedMessage
from simulator.wire.stun import Address, StunMethod

MS_VERSION = 3
DISCARD_PORT = 9  # RFC 863: where a Send that only opens a permission goes


async def _av_guarded(ctx: ProbeContext, node: str, check: Callable[[], Awaitable[str]]) -> Outcome:
    """Run an A/V check; when nothing came back through the relay, say whether inbound SNAT is why."""
    outcome = await guarded(node, check)
    if outcome.reason not in (Reason.NO_RETURN_PATH, Reason.TIMEOUT):
        return outcome
    try:
        cause = await _inbound_snat(ctx, node)
    except (ProbeFailure, OSError, TimeoutError):
        return outcome  # the diagnosis itself failed: keep the original verdict
    if cause is None:
        return outcome
    return Outcome(node, outcome.verdict, Reason.SNAT_INBOUND, f"{outcome.detail}; {cause}", outcome.elapsed_ms)


async def _inbound_snat(ctx: ProbeContext, node: str) -> str | None:
    """Whether the node's A/V Edge sees a rewritten source for an outside client (MS-TURN 0x8020)."""
    client, allocation, _ = await _ms_session(ctx, node, "udp", internal=False, client_role=ClientRole.REMOTE_USER,
                                              check_source=False)
    try:
        expected = client.public
    finally:
        await client.close()
    if allocation.reflexive is None or expected is None or allocation.reflexive.host == expected.host:
        return None
    return (f"the A/V Edge sees outside sources rewritten ({expected.host} arrives as {allocation.reflexive.host}): "
            "inbound SNAT breaks the relay's per-peer permissions")


RTP_RULES = frozenset({"E11"})  # RTP/UDP through the relay: to the peer's media port, not its 3478


def _rng(ctx: ProbeContext, node: str) -> random.Random:
    return random.Random(f"{ctx.lab.scenario.seed}:{ctx.rule.id}:{node}")


async def _credentials(ctx: ProbeContext, node: str, internal: bool) -> tuple[str, str]:
    """An outside user's credentials come through its sign-in (443 → Director → 5062); an internal user's from
    its Front End asking the node's MRAS directly (I5), as Lync does."""
    if internal:
        _, answer = await frontend_mras_credentials(ctx.lab, node, _rng(ctx, node), timeout=ctx.timeout)
    else:
        answer = await request_mras_credentials(ctx.lab, node, timeout=ctx.timeout,
                                                location=mras.MrasLocation.INTERNET)
    if answer.credentials is None:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, "MRAS answered without credentials")
    return answer.credentials.username, answer.credentials.password


def _peer_host(ctx: ProbeContext, role: ClientRole) -> str:
    client = peer(ctx, role)
    return ctx.lab.plan.of(client.name, HostKind.CLIENT)[0].address


def _client_host(ctx: ProbeContext, role: ClientRole) -> str:
    """Where the client side of a rule sits: a remote user, a Live Messenger user, an internal server."""
    clients = ctx.lab.scenario.clients_with_role(role)
    if not clients:
        raise ProbeFailure(Reason.NO_PEER, f"the scenario has no {role} to run {ctx.rule.id} from")
    return ctx.lab.plan.of(clients[0].name, HostKind.CLIENT)[-1].address


def _check_allocation(ctx: ProbeContext, node: str, allocation: Allocation, server: Address,
                      client: Address | None, check_source: bool) -> str:
    public = ctx.lab.public_address(node, "av")
    private = ctx.lab.private_addresses(node)
    seen = {allocation.relay.host, *(a.host for a in (allocation.alternate, allocation.reflexive) if a)}
    if seen & private:
        raise ProbeFailure(Reason.PRIVATE_ADDRESS_LEAKED, f"private address {sorted(seen & private)} in the answer")
    if allocation.alternate != server:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"401 ALTERNATE-SERVER {allocation.alternate}, expected "
                                                  f"{server.host}:{server.port} (pins the client to this node)")
    relays = ctx.lab.scenario.edge_pool.relay_ports
    if allocation.relay.host != public or not relays.first <= allocation.relay.port <= relays.last:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"relay {allocation.relay} is not {public}:"
                                                  f"{relays.first}-{relays.last}")
    if check_source and allocation.reflexive is not None and client is not None and \
            allocation.reflexive.host != client.host:
        # MS-TURN 0x8020 is the source the Edge saw: the 1:1 NAT must preserve it (research §2.2).
        raise ProbeFailure(Reason.SNAT_INBOUND, f"the A/V Edge saw the client as {allocation.reflexive.host}, not "
                                                f"{client.host}: inbound traffic is source-NATed")
    if check_source and (allocation.reflexive is None or allocation.reflexive != client):
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"reflexive address {allocation.reflexive}, expected {client}")
    reflexive = allocation.reflexive
    return f"relay {allocation.relay.host}:{allocation.relay.port}" + (
        f", client seen as {reflexive.host}:{reflexive.port}" if reflexive is not None else "")


async def _ms_session(ctx: ProbeContext, node: str, transport: str, *, internal: bool,
                      client_role: ClientRole, check_source: bool = True,
                      credentials: tuple[str, str] | None = None) -> tuple[MsTurnClient, Allocation, str]:
    username, password = credentials or await _credentials(ctx, node, internal)
    host = ctx.lab.plan.one(node, HostKind.EDGE_INTERNAL).address if internal else ctx.lab.public_address(node, "av")
    port = ctx.lab.port_map(TURN_UDP_PORT if transport == "udp" else TURN_TCP_PORT)
    source = _client_host(ctx, client_role)
    # MS-VERSION 3 (RFC 5389 header, real attribute lengths) as Lync 2013 clients send (research §1.1). A
    # client behind a scenario NAT sends through its NAT box: the Edge must see, and report, the NAT's mapping.
    client = MsTurnClient("udp" if transport == "udp" else "tcp", Address(host, port), username, password,
                          _rng(ctx, node), version=MS_VERSION, local_host=source, nat=nat_for(ctx.lab, source),
                          tcp_opener=lambda: open_tcp(ctx.lab, source, host, port, timeout=ctx.timeout))
    await client.open(ctx.timeout)
    try:
        allocation = await client.allocate(ctx.timeout)
        detail = _check_allocation(ctx, node, allocation, Address(host, port), client.public, check_source)
    except BaseException:
        await client.close()
        raise
    return client, allocation, f"{host}:{port}/{transport}: {detail}"


async def _echo_through(ctx: ProbeContext, client: MsTurnClient, allocation: Allocation, peer_host: str,
                        port: int) -> str:
    """Send a payload to the peer's UDP echo on ``port`` through the relay; it must come back, sent from the relay."""
    peer_address = Address(peer_host, port)
    payload = f"edgesim-{ctx.rule.id}".encode()
    for _ in range(3):  # UDP: a couple of tries, bounded
        client.send(peer_address, payload)
        try:
            source, data = await client.receive(ctx.timeout / 2)
        except ProbeFailure:
            continue
        parsed = parse_seen(data)
        if parsed is None or parsed[1] != payload:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"unexpected data back: {data[:60]!r}")
        if parsed[0] != allocation.relay:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"the peer saw {parsed[0]}, not the relay {allocation.relay}")
        if source is not None and source.host != peer_address.host:
            raise ProbeFailure(Reason.SNAT_INBOUND, f"the relay saw the peer as {source.host}, not "
                                                    f"{peer_address.host}: inbound traffic is source-NATed")
        if source is not None and source != peer_address:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"data came from {source}, not {peer_address}")
        return f"peer {peer_address.host} saw the relay, echo came back"
    raise ProbeFailure(Reason.NO_RETURN_PATH, f"nothing came back from {peer_address} through the relay")


async def _ms_probe(ctx: ProbeContext, node: str, transport: str, *, internal: bool, client_role: ClientRole,
                    peer_role: ClientRole, check_source: bool = True) -> str:
    client, allocation, detail = await _ms_session(ctx, node, transport, internal=internal, client_role=client_role,
                                                   check_source=check_source)
    try:
        # RTP goes to the peer's media port (E11, E13); the allocation rules echo off the remote Edge's 3478.
        port = PEER_UDP_MEDIA_PORT if ctx.rule.id in RTP_RULES else ctx.lab.port_map(TURN_UDP_PORT)
        return f"{detail}; {await _echo_through(ctx, client, allocation, _peer_host(ctx, peer_role), port)}"
    finally:
        await client.close()


async def _across_the_pool(ctx: ProbeContext, node: str, outbound: bool) -> str:
    """Relay to relay between two pool nodes' public A/V addresses: a call between two users whose
    allocations landed on different nodes through DNS load balancing needs the 1:1 NAT's hairpin."""
    others = [n.name for n in ctx.lab.scenario.edge_pool.nodes if n.name != node]
    if not others:
        return "single-node pool: no hairpin to check"
    # Each node's credentials from its own MRAS: in a split lab every node checks its own store.
    here, here_alloc, _ = await _ms_session(ctx, node, "udp", internal=False, client_role=ClientRole.REMOTE_USER,
                                            check_source=False, credentials=await _credentials(ctx, node, False))
    try:
        there, there_alloc, _ = await _ms_session(ctx, others[0], "udp", internal=False,
                                                  client_role=ClientRole.REMOTE_USER, check_source=False,
                                                  credentials=await _credentials(ctx, others[0], False))
        try:
            sender, receiver = (here, there) if outbound else (there, here)
            sender_alloc, receiver_alloc = (here_alloc, there_alloc) if outbound else (there_alloc, here_alloc)
            payload = f"edgesim-{ctx.rule.id}-hairpin".encode()
            for _ in range(3):  # MS-TURN: each side's Send opens its relay to the other (implicit permission)
                receiver.send(sender_alloc.relay, b"open")
                sender.send(receiver_alloc.relay, payload)
                try:
                    while True:
                        _, data = await receiver.receive(ctx.timeout / 3)
                        if data == payload:
                            return (f"relay {sender_alloc.relay.host}:{sender_alloc.relay.port} → relay "
                                    f"{receiver_alloc.relay.host}:{receiver_alloc.relay.port} across the pool")
                except ProbeFailure:
                    continue
            raise ProbeFailure(Reason.NO_HAIRPIN, f"nothing crossed from {sender_alloc.relay.host} to "
                                                  f"{receiver_alloc.relay.host}: the pool's public A/V addresses "
                                                  "do not reach each other (1:1 NAT hairpin)")
        finally:
            await there.close()
    finally:
        await here.close()


def _simple(ctx: ProbeContext, node: str, transport: str, internal: bool, role: ClientRole) -> Awaitable[Outcome]:
    """Allocate from ``role``'s host, check the answer, echo through the relay to a federated partner's peer."""
    return _av_guarded(ctx, node, lambda: _ms_probe(ctx, node, transport, internal=internal, client_role=role,
                                                    peer_role=ClientRole.FEDERATED_PARTNER))


@probe("av-turn-udp-in")
async def av_turn_udp_in(ctx: ProbeContext, node: str) -> Outcome:
    """E15/P6: MS-TURN Allocate over UDP 3478 from outside (a remote user; for P6 a Live Messenger user)."""
    role = ClientRole.PIC_PARTNER if ctx.rule.id == "P6" else ClientRole.REMOTE_USER
    return await _simple(ctx, node, "udp", False, role)


@probe("av-turn-tcp-in")
async def av_turn_tcp_in(ctx: ProbeContext, node: str) -> Outcome:
    """E16: MS-TURN over TCP 443 (pseudo-TLS hello, 4-byte framing) from a remote user."""
    return await _simple(ctx, node, "tcp", False, ClientRole.REMOTE_USER)


@probe("av-turn-udp-internal")
async def av_turn_udp_internal(ctx: ProbeContext, node: str) -> Outcome:
    """I6: MS-TURN over UDP 3478 to the internal interface; the relay is still the public A/V address."""
    return await _simple(ctx, node, "udp", True, ClientRole.FRONT_END)


@probe("av-turn-tcp-internal")
async def av_turn_tcp_internal(ctx: ProbeContext, node: str) -> Outcome:
    """I7: MS-TURN over TCP 443 to the internal interface."""
    return await _simple(ctx, node, "tcp", True, ClientRole.FRONT_END)


@probe("av-relay-udp-out")
async def av_relay_udp_out(ctx: ProbeContext, node: str) -> Outcome:
    """E11: the relay sends RTP/UDP from its public port (50000–59999) to a federated peer, and to a relay on
    another pool node (hairpin)."""

    async def check() -> str:
        detail = await _ms_probe(ctx, node, "udp", internal=False, client_role=ClientRole.REMOTE_USER,
                                 peer_role=ClientRole.FEDERATED_PARTNER, check_source=False)
        return f"{detail}; {await _across_the_pool(ctx, node, outbound=True)}"

    return await _av_guarded(ctx, node, check)


@probe("av-relay-udp-in")
async def av_relay_udp_in(ctx: ProbeContext, node: str) -> Outcome:
    """E13: a federated peer's RTP/UDP reaches the relay port and is delivered to the client, as does a relay's
    on another pool node (hairpin)."""

    async def check() -> str:
        detail = await _peer_speaks_first(ctx, node)
        return f"{detail}; {await _across_the_pool(ctx, node, outbound=False)}"

    return await _av_guarded(ctx, node, check)


async def _peer_speaks_first(ctx: ProbeContext, node: str) -> str:
    """The peer's datagram is the first of its flow: the client's Send to the peer's *discard* port opens the
    relay's permission for the peer's address (MS-TURN permissions are per address) without starting the flow the
    peer then sends on, so only the inbound accept rule (E13) lets it through — never conntrack's reply state."""
    client, allocation, detail = await _ms_session(ctx, node, "udp", internal=False,
                                                   client_role=ClientRole.REMOTE_USER)
    try:
        peer_host = _peer_host(ctx, ClientRole.FEDERATED_PARTNER)
        payload = f"edgesim-{ctx.rule.id}-first".encode()
        with UdpSender(peer_host) as sender:
            for _ in range(3):  # UDP: a couple of tries, bounded
                client.send(Address(peer_host, DISCARD_PORT), b"open")
                await asyncio.sleep(0.05)  # the permission is in place before the peer speaks
                sender.send((allocation.relay.host, allocation.relay.port), payload)
                try:
                    while True:
                        source, data = await client.receive(ctx.timeout / 2)
                        if data == payload:
                            break
                except ProbeFailure:
                    continue
                if source is not None and source.host != peer_host:
                    raise ProbeFailure(Reason.SNAT_INBOUND, f"the relay saw the peer as {source.host}, not "
                                                            f"{peer_host}: inbound traffic is source-NATed")
                return (f"{detail}; peer {sender.local[0]}:{sender.local[1]} spoke first to the relay "
                        f"{allocation.relay.host}:{allocation.relay.port}: delivered")
        raise ProbeFailure(Reason.TIMEOUT, f"the peer's datagrams to the relay {allocation.relay.host}:"
                                           f"{allocation.relay.port} never reached the client")
    finally:
        await client.close()


@probe("av-turn-udp-out")
async def av_turn_udp_out(ctx: ProbeContext, node: str) -> Outcome:
    """E14/P5: from the relay to a remote Edge's (or Live Messenger client's) 3478: a STUN Binding through
    the relay, answered with the relay's public address."""
    peer_role = ClientRole.PIC_PARTNER if ctx.rule.id == "P5" else ClientRole.FEDERATED_PARTNER

    async def check() -> str:
        client, allocation, detail = await _ms_session(ctx, node, "udp", internal=False,
                                                       client_role=ClientRole.REMOTE_USER, check_source=False)
        try:
            target = Address(_peer_host(ctx, peer_role), ctx.lab.port_map(TURN_UDP_PORT))
            rng = _rng(ctx, node)
            for _ in range(3):
                binding = stun.request(StunMethod.BINDING, stun.new_transaction_id(rng))
                client.send(target, binding.serialize(fingerprint=True))
                try:
                    _, data = await client.receive(ctx.timeout / 2)
                except ProbeFailure:
                    continue
                try:
                    answer = stun.parse(data)
                except MalformedMessage:
                    raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{target} answered a non-STUN datagram") from None
                if answer.transaction_id != binding.transaction_id:
                    continue  # a late answer to an earlier try: ask again
                mapped = answer.get(stun.XOR_MAPPED_ADDRESS)
                if mapped != allocation.relay:
                    raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{target} saw {mapped}, not the relay")
                return (f"{detail}; STUN to {target.host}:{target.port} answered: relay seen as "
                        f"{mapped.host}:{mapped.port}")
            raise ProbeFailure(Reason.NO_RETURN_PATH, f"no STUN answer from {target} through the relay")
        finally:
            await client.close()

    return await _av_guarded(ctx, node, check)


async def _tcp_relay(ctx: ProbeContext, node: str) -> tuple[RfcTcpRelayClient, Address]:
    username, password = await _credentials(ctx, node, internal=False)
    server = Address(ctx.lab.public_address(node, "av"), ctx.lab.port_map(TURN_TCP_PORT))
    source = _client_host(ctx, ClientRole.REMOTE_USER)
    client = RfcTcpRelayClient(
        server, username, password, _rng(ctx, node), local_host=source,
        tcp_opener=lambda: open_tcp(ctx.lab, source, server.host, server.port, timeout=ctx.timeout))
    await client.open(ctx.timeout)
    try:
        relay = await client.allocate(ctx.timeout)
        public, ranges = ctx.lab.public_address(node, "av"), ctx.lab.scenario.edge_pool.relay_ports
        if relay.host != public or not ranges.first <= relay.port <= ranges.last:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"TCP relay {relay} is not {public}:{ranges.first}-{ranges.last}")
    except BaseException:
        await client.close()
        raise
    return client, relay


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes,
                     timeout: float) -> bytes:
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), timeout)
    except TimeoutError:
        raise ProbeFailure(Reason.NO_RETURN_PATH, "no bytes came back over the TCP relay") from None
    except OSError as error:
        raise ProbeFailure(Reason.RESET, f"the TCP relay connection broke: {error}") from None


async def _tcp_out(ctx: ProbeContext, node: str, peer_role: ClientRole, peer_port: int) -> str:
    client, relay = await _tcp_relay(ctx, node)
    try:
        target = Address(_peer_host(ctx, peer_role), peer_port)
        await client.permit(target, ctx.timeout)
        connection_id = await client.connect(target, ctx.timeout)
        reader, writer = await client.bind(connection_id, ctx.timeout)
        payload = f"edgesim-{ctx.rule.id}".encode()
        parsed = parse_seen(await _roundtrip(reader, writer, payload, ctx.timeout))
        if parsed is None or parsed[1] != payload:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "the TCP peer's echo did not match")
        ranges = ctx.lab.scenario.edge_pool.relay_ports
        if parsed[0].host != relay.host or not ranges.first <= parsed[0].port <= ranges.last:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"the peer saw {parsed[0]}, not the relay {relay.host} "
                                                      f"on a port in {ranges.first}-{ranges.last}")
        return f"TCP relay {relay.host}:{relay.port} → {target.host}:{target.port} (seen from port {parsed[0].port})"
    finally:
        await client.close()


@probe("av-relay-tcp-out")
async def av_relay_tcp_out(ctx: ProbeContext, node: str) -> Outcome:
    """E10/P4: the relay opens RTP/TCP to a peer (RFC 6062 Connect) and bytes cross both ways."""
    role = ClientRole.PIC_PARTNER if ctx.rule.id == "P4" else ClientRole.FEDERATED_PARTNER
    return await _av_guarded(ctx, node, lambda: _tcp_out(ctx, node, role, PEER_TCP_MEDIA_PORT))


@probe("av-turn-tcp-out")
async def av_turn_tcp_out(ctx: ProbeContext, node: str) -> Outcome:
    """E17: the relay opens TCP to a remote Edge's 443."""
    return await _av_guarded(ctx, node, lambda: _tcp_out(ctx, node, ClientRole.FEDERATED_PARTNER,
                                                ctx.lab.port_map(TURN_TCP_PORT)))


@probe("av-relay-tcp-in")
async def av_relay_tcp_in(ctx: ProbeContext, node: str) -> Outcome:
    """E12: a peer opens RTP/TCP to the relay port (RFC 6062 ConnectionAttempt); bytes cross both ways."""

    async def check() -> str:
        client, relay = await _tcp_relay(ctx, node)
        peer_host = _peer_host(ctx, ClientRole.FEDERATED_PARTNER)
        writer: asyncio.StreamWriter | None = None
        try:
            await client.permit(Address(peer_host, 9), ctx.timeout)  # RFC 8656 §9: the port is ignored
            try:
                peer_reader, peer_writer = await asyncio.wait_for(
                    asyncio.open_connection(relay.host, relay.port, local_addr=(peer_host, 0)), ctx.timeout)
                writer = peer_writer
            except (OSError, TimeoutError) as error:
                raise ProbeFailure(Reason.REFUSED if isinstance(error, ConnectionRefusedError) else Reason.TIMEOUT,
                                   f"peer → relay {relay}: {error}") from None
            connection_id, seen_peer = await client.attempt(ctx.timeout)
            reader, data_writer = await client.bind(connection_id, ctx.timeout)
            peer_writer.write(b"from-peer")
            await peer_writer.drain()
            got = await asyncio.wait_for(reader.read(4096), ctx.timeout)
            data_writer.write(b"from-client")
            await data_writer.drain()
            back = await asyncio.wait_for(peer_reader.read(4096), ctx.timeout)
            if got != b"from-peer" or back != b"from-client":
                raise ProbeFailure(Reason.PROTOCOL_ERROR, f"TCP relay carried {got!r}/{back!r}")
            return f"peer {seen_peer} → TCP relay {relay.host}:{relay.port}: bytes both ways"
        except TimeoutError:
            raise ProbeFailure(Reason.NO_RETURN_PATH, "no bytes crossed the TCP relay") from None
        except OSError as error:
            raise ProbeFailure(Reason.RESET, f"a TCP relay connection broke: {error}") from None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await client.close()

    return await _av_guarded(ctx, node, check)
