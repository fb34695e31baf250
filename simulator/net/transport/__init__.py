"""Plumbing every role uses: TCP/TLS listeners and streams, TLS contexts and error mapping, the DNS stub
resolver, SIP connections and forwarding, XMPP streams, the Service/EdgeNode shapes.

May import: :mod:`simulator.outcome`, :mod:`simulator.core`, :mod:`simulator.wire`.
"""
