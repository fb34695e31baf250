"""SDP for ICE: ``a=candidate`` lines in the RFC 8839 form and the MS-ICE2 form, ufrag/pwd, and a minimal
offer/answer body around them.

Theory of operation
-------------------
One :class:`SdpCandidate` value, two spellings:

- **RFC 8839 §5.1** (``form="rfc8839"``)::

      candidate:<foundation> <component-id> <transport> <priority> <address> <port> typ <type>
                [raddr <address> rport <port>] [tcptype active|passive|so] *(<ext-name> <ext-value>)

  The transport is ``UDP`` or ``TCP`` (RFC 6544 adds ``tcptype``); unknown extensions are skipped.
- **MS-ICE2 / MS-SDPEXT** (``form="ms-ice2"``, what Lync 2013 and libnice OC2007R2 write): the same
  positional fields, but a TCP candidate's direction is in the transport token (``TCP-ACT``,
  ``TCP-PASS``) and there is no ``tcptype`` (research-lync-edge.md §1.2, research-next.md A2).

:func:`parse_candidate` reads both forms (with or without ``a=``). :func:`build_sdp` writes a body with
``a=ice-ufrag``/``a=ice-pwd`` (RFC 8839 §5.4) at media level and one line per candidate;
:func:`parse_sdp` reads back what an ICE agent needs: ufrag, pwd (session or media level), the default
``c=``/``m=`` address, the candidates, ``a=ice-lite`` and ``a=remote-candidates``. Bad input raises
:class:`~simulator.wire.errors.MalformedMessage` (status None: an SDP body is rejected by the caller,
not answered here) and nothing else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from simulator.wire.errors import MalformedMessage

SdpForm = Literal["rfc8839", "ms-ice2"]
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
TCP_TYPES = ("active", "passive", "so")
_MS_TCP = {"TCP-ACT": "active", "TCP-PASS": "passive", "TCP-SO": "so"}
_MS_TCP_TOKEN = {v: k for k, v in _MS_TCP.items()}
_ICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")  # RFC 8839 ice-char


@dataclass(frozen=True, slots=True)
class SdpCandidate:
    """One candidate as SDP carries it. ``transport`` is ``"udp"`` or ``"tcp"`` (lower case)."""

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: str
    related_host: str | None = None
    related_port: int | None = None
    tcptype: str | None = None

    def to_sdp(self, form: SdpForm = "rfc8839") -> str:
        """The attribute value (``candidate:…``, no ``a=``)."""
        if self.transport == "tcp" and form == "ms-ice2":
            token = _MS_TCP_TOKEN.get(self.tcptype or "passive", "TCP-PASS")
        else:
            token = self.transport.upper()
        parts = [f"candidate:{self.foundation}", str(self.component), token, str(self.priority), self.host,
                 str(self.port), "typ", self.type]
        related = self.related_host is not None and self.related_port is not None
        if related:
            parts += ["raddr", str(self.related_host), "rport", str(self.related_port)]
        if self.transport == "tcp" and form == "rfc8839" and self.tcptype:
            parts += ["tcptype", self.tcptype]
        return " ".join(parts)


def _bad(reason: str) -> MalformedMessage:
    return MalformedMessage(reason, None)


def _int(text: str, what: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _bad(f"{what} is not a number: {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise _bad(f"{what} {value} outside {low}..{high}")
    return value


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _bad(f"not an IP address: {text!r}") from None  # FQDN/mDNS candidates are not used here


def parse_candidate(line: str) -> SdpCandidate:
    """Parse an ``a=candidate`` line (RFC 8839 or MS-ICE2 form)."""
    text = line.strip()
    if text.startswith("a="):
        text = text[2:]
    if not text.startswith("candidate:"):
        raise _bad("not a candidate attribute")
    fields = text[len("candidate:"):].split()
    if len(fields) < 8 or fields[6] != "typ":
        raise _bad("candidate needs foundation component transport priority address port typ type")
    foundation = fields[0]
    if not 1 <= len(foundation) <= 32 or not set(foundation) <= _ICE_CHARS:
        raise _bad(f"bad foundation {foundation!r}")  # RFC 8839 §5.1: 1*32ice-char
    component = _int(fields[1], "component-id", 1, 256)
    token = fields[2].upper()
    tcptype: str | None = None
    if token in _MS_TCP:
        transport, tcptype = "tcp", _MS_TCP[token]
    elif token in ("UDP", "TCP"):
        transport = token.lower()
    else:
        raise _bad(f"unknown transport {fields[2]!r}")
    priority = _int(fields[3], "priority", 1, 2**31 - 1)
    host = _address(fields[4])
    port = _int(fields[5], "port", 0, 65535)
    kind = fields[7]
    if kind not in CANDIDATE_TYPES:
        raise _bad(f"unknown candidate type {kind!r}")
    related_host: str | None = None
    related_port: int | None = None
    rest = fields[8:]
    if len(rest) % 2:
        raise _bad("extension attribute without a value")
    for name, value in zip(rest[::2], rest[1::2], strict=True):
        if name == "raddr":
            related_host = _address(value)
        elif name == "rport":
            related_port = _int(value, "rport", 0, 65535)
        elif name == "tcptype":
            if value not in TCP_TYPES:
                raise _bad(f"unknown tcptype {value!r}")
            tcptype = value
        # RFC 8839 §5.1: unknown extension attributes (generation, network-id, ufrag, …) are ignored
    if (related_host is None) != (related_port is None):
        raise _bad("raddr without rport or rport without raddr")
    return SdpCandidate(foundation, component, transport, priority, host, port, kind, related_host,
                        related_port, tcptype)


@dataclass(frozen=True, slots=True)
class IceDescription:
    """What one side's SDP says for ICE (one media stream)."""

    ufrag: str
    pwd: str
    candidates: tuple[SdpCandidate, ...] = ()
    host: str = "0.0.0.0"  # c= (the default candidate's address)
    port: int = 9  # m= port
    lite: bool = False
    media: str = "audio"
    remote_candidates: tuple[tuple[int, str, int], ...] = field(default=())  # RFC 8839 §5.2


def _check_credential(value: str, what: str, low: int) -> str:
    # RFC 8839 §5.4: ufrag 4..256, pwd 22..256 ice-chars
    if not low <= len(value) <= 256 or not set(value) <= _ICE_CHARS:
        raise _bad(f"bad {what} {value!r}")
    return value


def build_sdp(desc: IceDescription, *, form: SdpForm = "rfc8839", session_id: int = 1, origin: str | None = None,
              payload_types: str = "0 8 101") -> str:
    """An SDP body (RFC 4566) for one RTP stream with ICE attributes. ``form`` picks the candidate spelling."""
    family = "IP6" if ":" in desc.host else "IP4"
    origin_host = origin or desc.host
    lines = [
        "v=0",
        f"o=- {session_id} 0 IN {'IP6' if ':' in origin_host else 'IP4'} {origin_host}",
        "s=session",
        f"c=IN {family} {desc.host}",
        "t=0 0",
    ]
    if desc.lite:
        lines.append("a=ice-lite")
    lines += [
        f"m={desc.media} {desc.port} RTP/AVP {payload_types}",
        f"a=ice-ufrag:{desc.ufrag}",
        f"a=ice-pwd:{desc.pwd}",
    ]
    lines += [f"a={c.to_sdp(form)}" for c in desc.candidates]
    if desc.remote_candidates:
        lines.append("a=remote-candidates:" + " ".join(f"{c} {h} {p}" for c, h, p in desc.remote_candidates))
    return "\r\n".join(lines) + "\r\n"


def parse_sdp(text: str) -> IceDescription:
    """Read the ICE parts of an SDP body (the first m= section; media-level ufrag/pwd win over session)."""
    ufrag: dict[str, str] = {}
    pwd: dict[str, str] = {}
    level = "session"
    host = "0.0.0.0"
    port = 9
    media = "audio"
    lite = False
    sections = 0
    candidates: list[SdpCandidate] = []
    remote: list[tuple[int, str, int]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise _bad(f"not an SDP line: {line[:40]!r}")
        if line.startswith("m="):
            sections += 1
            if sections > 1:
                break
            level = "media"
            parts = line[2:].split()
            if len(parts) < 3:
                raise _bad("short m= line")
            media = parts[0]
            port = _int(parts[1].split("/")[0], "m= port", 0, 65535)
        elif line.startswith("c="):
            parts = line[2:].split()
            if len(parts) != 3 or parts[0] != "IN":
                raise _bad("bad c= line")
            host = _address(parts[2].split("/")[0])
        elif line.startswith("a=ice-ufrag:"):
            ufrag[level] = _check_credential(line[len("a=ice-ufrag:"):], "ice-ufrag", 4)
        elif line.startswith("a=ice-pwd:"):
            pwd[level] = _check_credential(line[len("a=ice-pwd:"):], "ice-pwd", 22)
        elif line == "a=ice-lite":
            lite = True
        elif line.startswith("a=candidate:"):
            candidates.append(parse_candidate(line))
        elif line.startswith("a=remote-candidates:"):
            items = line[len("a=remote-candidates:"):].split()
            if len(items) % 3:
                raise _bad("remote-candidates needs component address port triples")
            for i in range(0, len(items), 3):
                remote.append((_int(items[i], "component-id", 1, 256), _address(items[i + 1]),
                               _int(items[i + 2], "port", 0, 65535)))
    found_ufrag = ufrag.get("media") or ufrag.get("session")
    found_pwd = pwd.get("media") or pwd.get("session")
    if found_ufrag is None or found_pwd is None:
        raise _bad("SDP without ice-ufrag/ice-pwd")
    return IceDescription(found_ufrag, found_pwd, tuple(candidates), host, port, lite, media, tuple(remote))
