"""SIP message codec (RFC 3261), sans-I/O.

Theory of operation
-------------------
A message is a frozen :class:`SipRequest` or :class:`SipResponse` with an ordered :class:`Headers` and a
``bytes`` body; the typed views :class:`SipUri`, :class:`NameAddr`, :class:`Via` and :class:`CSeq` parse
single values on demand. Two entry points take bytes from the wire:

* :func:`parse_message` for one datagram (UDP);
* :class:`SipStreamFramer` for TCP/TLS: ``feed(data)`` then ``next_event()`` until ``None``; it yields
  messages and RFC 5626 §3.5.1 keepalives (CRLFCRLF ping, CRLF pong).

Bad input raises :class:`~simulator.wire.errors.MalformedMessage` carrying the status to answer
(400, 413, 416, 505), or ``None`` for a malformed response (RFC 3261 §18.1.2: discarded silently).
Nothing else escapes.

One layer per module, each importing only the ones above it:

* :mod:`~simulator.wire.sip.grammar` — constants, header-name keys, quoting, parameters, host:port;
* :mod:`~simulator.wire.sip.uri` — ``sip:``/``sips:`` and absolute URIs;
* :mod:`~simulator.wire.sip.views` — From/To/Contact (name-addr), Via, CSeq;
* :mod:`~simulator.wire.sip.headers` — the ordered header list;
* :mod:`~simulator.wire.sip.message` — requests, responses, keepalives;
* :mod:`~simulator.wire.sip.parse` — bytes → message (fast path and reference path);
* :mod:`~simulator.wire.sip.framer` — stream framing;
* :mod:`~simulator.wire.sip.build` — requests, responses, ACKs and fresh identifiers;
* :mod:`~simulator.wire.sip.registration` — what a registrar refuses in a request that parsed.

All but the framer are compiled with mypyc when the package is installed (``setup.py``); :data:`COMPILED` says
whether the compiled modules run (:mod:`~simulator.wire.sip._native` decides, before anything else is imported).
"""

from __future__ import annotations

from simulator.wire.sip._native import COMPILED
from simulator.wire.sip.build import (
    make_ack,
    make_request,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
)
from simulator.wire.sip.framer import SipStreamFramer
from simulator.wire.sip.grammar import (
    BRANCH_MAGIC_COOKIE,
    CANONICAL_NAMES,
    COMPACT_FORMS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    LIST_HEADERS,
    MANDATORY_HEADERS,
    REASON_PHRASES,
    SIP_VERSION,
    SUPPORTED_URI_SCHEMES,
    Params,
    canonical_name,
    header_key,
    quote,
    split_unquoted,
    unquote,
)
from simulator.wire.sip.headers import Headers
from simulator.wire.sip.message import (
    KEEPALIVE_PING,
    KEEPALIVE_PONG,
    KeepalivePing,
    KeepalivePong,
    SipMessage,
    SipRequest,
    SipResponse,
    StreamEvent,
)
from simulator.wire.sip.parse import parse_message
from simulator.wire.sip.registration import registrar_address_problem
from simulator.wire.sip.uri import AbsoluteUri, SipUri, Uri, parse_sip_uri, parse_uri
from simulator.wire.sip.views import CSeq, NameAddr, Via, parse_cseq, parse_name_addr, parse_via

__all__ = [
    "BRANCH_MAGIC_COOKIE",
    "CANONICAL_NAMES",
    "COMPACT_FORMS",
    "COMPILED",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "KEEPALIVE_PING",
    "KEEPALIVE_PONG",
    "LIST_HEADERS",
    "MANDATORY_HEADERS",
    "REASON_PHRASES",
    "SIP_VERSION",
    "SUPPORTED_URI_SCHEMES",
    "AbsoluteUri",
    "CSeq",
    "Headers",
    "KeepalivePing",
    "KeepalivePong",
    "NameAddr",
    "Params",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "SipStreamFramer",
    "SipUri",
    "StreamEvent",
    "Uri",
    "Via",
    "canonical_name",
    "header_key",
    "make_ack",
    "make_request",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_sip_uri",
    "parse_uri",
    "parse_via",
    "quote",
    "registrar_address_problem",
    "split_unquoted",
    "unquote",
]
