"""What the Edge talks to, one role per file: the Front End/Director, federated and PIC partners' Edges, the
Front End's Web Conferencing and XMPP services, the XMPP partner, media peers, the DNS and CRL servers.

Never imports :mod:`simulator.net.edge`. May import: :mod:`simulator.net.clients`, ``nat``, ``transport``
and the layers below :mod:`simulator.net`.
"""
