"""The lab's DNS zone: typed records, built from scenario data, answering (qname, qtype) lookups.

Theory of operation
-------------------
A :class:`Zone` is an immutable set of typed records (:class:`ARecord`, :class:`SrvRecord`,
:class:`CnameRecord`). The scenario loader hands plain data (a list of dicts) to
:meth:`Zone.from_records`; every dict is checked against the row of ``RECORD_PARSERS`` for its
``type`` and a bad one raises :class:`ZoneError` naming the record's index and field.

DNS load balancing (research-lync-edge.md §2) is just *several A records for one name*, one per
pool node: ``sip.contoso.com`` → every node's Access Edge public address, and so on. Order in the
zone is kept; shuffling is the server's (optional) or the client policy's business.

:meth:`Zone.lookup` is pure and wire-format free: it returns a :class:`LookupResult` with a
:class:`LookupStatus` (``NOERROR`` with answers, ``NODATA`` when the name exists but has no record
of that type, ``NXDOMAIN`` when the name does not exist at all), the answer records (following a
CNAME chain inside the zone) and additional A records for SRV targets (RFC 2782, "Usage rules").
Names compare case-insensitively (RFC 4343) and without the trailing dot. This module does no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

DEFAULT_TTL: Final = 300
MAX_TTL: Final = 2**31 - 1  # RFC 2181 §8: TTL is an unsigned 31-bit value
MAX_CNAME_CHAIN: Final = 8

# RFC 1035 §2.3.1 letters/digits/hyphen, plus '_' for the SRV service and protocol labels (RFC 2782).
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class ZoneError(ValueError):
    """A record in the zone data is invalid; ``index`` is its position in the input (if known)."""

    def __init__(self, reason: str, index: int | None = None, field: str | None = None) -> None:
        where = "" if index is None else f"record {index}"
        if field is not None:
            where = f"{where} field {field!r}" if where else f"field {field!r}"
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.index = index
        self.field = field


def normalize_name(name: str) -> str:
    """Lower-case ``name`` and drop a trailing dot (RFC 4343: DNS names compare case-insensitively)."""
    return name.rstrip(".").lower() if name != "." else ""


def validate_name(name: object, field: str = "name") -> str:
    """Return ``name`` normalised, or raise :class:`ZoneError` when it is not a valid domain name."""
    if not isinstance(name, str) or not name.strip("."):
        raise ZoneError("must be a non-empty domain name", field=field)
    normalized = normalize_name(name)
    if len(normalized) > 253:  # RFC 1035 §2.3.4: 255 octets on the wire
        raise ZoneError(f"name {name!r} is longer than 253 characters", field=field)
    for label in normalized.split("."):
        if not _LABEL.match(label):  # RFC 1035 §2.3.4: labels are 1-63 octets
            raise ZoneError(f"name {name!r} has an invalid label {label!r}", field=field)
    return normalized


class RecordType(StrEnum):
    """Record types the zone holds; lookups also accept "ANY" and any other type name."""

    A = "A"
    SRV = "SRV"
    CNAME = "CNAME"


@dataclass(frozen=True, slots=True)
class ARecord:
    """``name`` IN A ``address`` — one per pool node for a DNS-load-balanced name."""

    name: str
    address: str
    ttl: int = DEFAULT_TTL

    @property
    def rtype(self) -> RecordType:
        return RecordType.A


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """``name`` IN SRV ``priority weight port target`` (RFC 2782)."""

    name: str
    priority: int
    weight: int
    port: int
    target: str
    ttl: int = DEFAULT_TTL

    @property
    def rtype(self) -> RecordType:
        return RecordType.SRV


@dataclass(frozen=True, slots=True)
class CnameRecord:
    """``name`` IN CNAME ``target`` (RFC 1034 §3.6.2)."""

    name: str
    target: str
    ttl: int = DEFAULT_TTL

    @property
    def rtype(self) -> RecordType:
        return RecordType.CNAME


Record = ARecord | SrvRecord | CnameRecord


class LookupStatus(Enum):
    """Outcome of a lookup, as the server turns it into an RCODE."""

    NOERROR = "NOERROR"  # answers present
    NODATA = "NODATA"  # RFC 2308 §2.2: name exists, no record of the type (RCODE 0, empty answer)
    NXDOMAIN = "NXDOMAIN"  # RFC 2308 §2.1: name does not exist (RCODE 3)


@dataclass(frozen=True, slots=True)
class LookupResult:
    """Answer records and additional A records for one (qname, qtype) lookup."""

    status: LookupStatus
    answers: tuple[Record, ...] = ()
    additionals: tuple[ARecord, ...] = ()


# ---- parsing plain data: one row per record type -------------------------------------------------


def _int_field(
    data: Mapping[str, object], field: str, low: int, high: int, default: int | None = None
) -> int:
    value = data.get(field, default)
    if value is None:
        raise ZoneError("is required", field=field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZoneError(f"must be an integer, got {value!r}", field=field)
    if not low <= value <= high:
        raise ZoneError(f"must be in {low}..{high}, got {value}", field=field)
    return value


def _ttl(data: Mapping[str, object]) -> int:
    return _int_field(data, "ttl", 0, MAX_TTL, DEFAULT_TTL)


def _parse_a(data: Mapping[str, object], name: str) -> ARecord:
    value = data.get("value")
    if not isinstance(value, str):
        raise ZoneError("must be an IPv4 address string", field="value")
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise ZoneError(f"{value!r} is not an IPv4 address", field="value") from None
    return ARecord(name, str(address), _ttl(data))


def _parse_srv(data: Mapping[str, object], name: str) -> SrvRecord:
    # RFC 2782: priority, weight and port are 16-bit unsigned integers.
    return SrvRecord(
        name=name,
        priority=_int_field(data, "priority", 0, 65535),
        weight=_int_field(data, "weight", 0, 65535),
        port=_int_field(data, "port", 0, 65535),
        target=validate_name(data.get("target"), field="target"),
        ttl=_ttl(data),
    )


def _parse_cname(data: Mapping[str, object], name: str) -> CnameRecord:
    return CnameRecord(name, validate_name(data.get("value", data.get("target")), field="value"), _ttl(data))


@dataclass(frozen=True, slots=True)
class _RecordParser:
    fields: frozenset[str]
    parse: Callable[[Mapping[str, object], str], Record]


_COMMON_FIELDS = frozenset({"name", "type", "ttl"})

RECORD_PARSERS: Final[Mapping[RecordType, _RecordParser]] = {
    RecordType.A: _RecordParser(_COMMON_FIELDS | {"value"}, _parse_a),
    RecordType.SRV: _RecordParser(_COMMON_FIELDS | {"priority", "weight", "port", "target"}, _parse_srv),
    RecordType.CNAME: _RecordParser(_COMMON_FIELDS | {"value", "target"}, _parse_cname),
}


def parse_record(data: Mapping[str, object]) -> Record:
    """Build one typed record from plain data; raise :class:`ZoneError` on a bad one."""
    if not isinstance(data, Mapping):
        raise ZoneError(f"must be a mapping, got {type(data).__name__}")
    raw_type = data.get("type")
    try:
        rtype = RecordType(str(raw_type).upper())
    except ValueError:
        known = ", ".join(t.value for t in RECORD_PARSERS)
        raise ZoneError(f"unsupported record type {raw_type!r} (known: {known})", field="type") from None
    parser = RECORD_PARSERS[rtype]
    unknown = sorted(str(key) for key in data if key not in parser.fields)
    if unknown:
        raise ZoneError(f"unknown field(s) {', '.join(unknown)} for a {rtype.value} record")
    return parser.parse(data, validate_name(data.get("name")))


# ---- the zone -----------------------------------------------------------------------------------


class Zone:
    """An immutable set of records answering (qname, qtype) lookups."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._records: tuple[Record, ...] = tuple(records)
        by_name: dict[str, list[Record]] = {}
        for index, record in enumerate(self._records):
            owned = by_name.setdefault(record.name, [])
            if record in owned:
                raise ZoneError(f"duplicate {record.rtype.value} record for {record.name}", index=index)
            # RFC 1034 §3.6.2 / RFC 2181 §10.1: a CNAME owner holds no other data.
            if owned and (isinstance(record, CnameRecord) or any(isinstance(r, CnameRecord) for r in owned)):
                raise ZoneError(f"{record.name} has a CNAME and other records", index=index)
            owned.append(record)
        self._by_name = {name: tuple(owned) for name, owned in by_name.items()}
        # Every ancestor of an owner name exists as an empty non-terminal (RFC 8020: NODATA, not
        # NXDOMAIN), e.g. "_tcp.contoso.com" under "_sipfederationtls._tcp.contoso.com".
        self._existing_names: frozenset[str] = frozenset(
            ".".join(name.split(".")[depth:]) for name in by_name for depth in range(name.count(".") + 1)
        )

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]]) -> Zone:
        """Build a zone from plain data (the scenario loader's list of dicts).

        Each dict has ``name``, ``type`` (``A``, ``SRV``, ``CNAME``), optional ``ttl`` and the type's
        fields: ``value`` (A: IPv4 address; CNAME: target name) or ``priority``, ``weight``, ``port``,
        ``target`` (SRV). Raises :class:`ZoneError` with the record's index on the first bad record.
        """
        parsed: list[Record] = []
        for index, data in enumerate(records):
            try:
                parsed.append(parse_record(data))
            except ZoneError as error:
                raise ZoneError(error.reason, index=index, field=error.field) from None
        return cls(parsed)

    @property
    def records(self) -> tuple[Record, ...]:
        """All records, in the order given."""
        return self._records

    def addresses(self, name: str) -> list[str]:
        """The A record addresses of ``name`` (following CNAMEs), in zone order."""
        return [r.address for r in self.lookup(name, RecordType.A).answers if isinstance(r, ARecord)]

    def lookup(self, qname: str, qtype: RecordType | str) -> LookupResult:
        """Answer records for (``qname``, ``qtype``); ``qtype`` may be any type name ("AAAA" → NODATA).

        ``"ANY"`` returns every record at the name. A CNAME at ``qname`` is returned and followed
        inside the zone (RFC 1034 §3.6.2) unless the query is for the CNAME itself.
        """
        wanted = qtype.value if isinstance(qtype, RecordType) else qtype.upper()
        name = normalize_name(qname)
        answers: list[Record] = []
        for _ in range(MAX_CNAME_CHAIN):
            owned = self._by_name.get(name, ())
            if not owned:
                if answers:  # a CNAME pointing outside the zone (or to a missing name): answer the chain
                    break
                status = LookupStatus.NODATA if name in self._existing_names else LookupStatus.NXDOMAIN
                return LookupResult(status)
            matching = [r for r in owned if wanted in ("ANY", r.rtype.value)]
            if matching:
                answers.extend(matching)
                break
            cname = next((r for r in owned if isinstance(r, CnameRecord)), None)
            if cname is None:
                break
            answers.append(cname)
            name = cname.target
        if not answers:
            return LookupResult(LookupStatus.NODATA)
        return LookupResult(LookupStatus.NOERROR, tuple(answers), self._srv_additionals(answers))

    def _srv_additionals(self, answers: Iterable[Record]) -> tuple[ARecord, ...]:
        # RFC 2782 "Usage rules": the server puts the targets' A records in the additional section.
        additionals: list[ARecord] = []
        for record in answers:
            if isinstance(record, SrvRecord):
                for glue in self._by_name.get(record.target, ()):
                    if isinstance(glue, ARecord) and glue not in additionals:
                        additionals.append(glue)
        return tuple(additionals)
