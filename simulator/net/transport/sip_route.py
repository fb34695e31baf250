"""SIP routing vocabulary shared by the Edge and the servers behind it: the next hop of a TLS connection and
the header with which an Edge vouches for the source of a request.
"""

from __future__ import annotations

from dataclasses import dataclass

TRUST_HEADER = "ms-edge-proxy-message-trust"  # Lync: how the Edge vouches for the source of a request


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a TLS connection goes: address, port and the name its certificate must carry."""

    host: str
    port: int
    server_name: str

