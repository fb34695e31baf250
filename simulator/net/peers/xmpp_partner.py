"""A federated XMPP partner server's delivery: it answers every message that asks for a receipt (XEP-0184).
The partner's 5269 listener is :class:`~simulator.net.transport.xmpp_stream.XmppServerListener`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable

from simulator.net.transport.xmpp_stream import receipt_for


def answering_deliver(domain: str) -> Callable[[ET.Element], Awaitable[bytes | None]]:
    """A server that answers every message with a receipt and every iq with a result (a partner)."""

    async def deliver(stanza: ET.Element) -> bytes | None:
        return receipt_for(stanza, domain)

    return deliver

