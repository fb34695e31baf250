"""The synthetic CMS replication exchange on the Edge's internal HTTPS 4443 (I8).

Microsoft's Central Management Store replication payload is not public (research-lync-edge §6.8); the lab's
is **synthetic** and labelled so: the Front End POSTs a config document to :data:`REPLICATION_PATH` over
mutual TLS and the Edge answers 200 with a JSON body carrying the document's SHA-256. A firewall sees only
the TLS layer, which is real.
"""

from __future__ import annotations

REPLICATION_PATH = b"/replication/config"
MAX_DOCUMENT = 64 * 1024
