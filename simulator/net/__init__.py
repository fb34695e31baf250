"""Asyncio shells: the only layer (with the runner's loop) that touches sockets, TLS and the clock.

Grouped by kind, one role per file:

* ``transport/`` — listeners, TLS, stream framing, the DNS stub resolver, SIP connections and forwarding,
  XMPP streams: plumbing every role uses;
* ``nat/`` — the NAT box datapath (in-process and TUN + network namespace);
* ``clients/`` — SIP user, TURN/MS-TURN client, HTTP/PSOM/XMPP/management clients;
* ``edge/`` — the Edge's roles: Access Edge, MRAS, A/V Edge, Web Conferencing, XMPP proxy, management;
* ``peers/`` — what the Edge talks to: Front End/Director, partners' servers, media peers, DNS, CRL server.

``edge`` and ``peers`` never import each other; both may use ``clients``, ``nat`` and ``transport``. May
import: :mod:`simulator.outcome`, :mod:`simulator.core`, :mod:`simulator.wire`.
"""
