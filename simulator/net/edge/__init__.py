"""The Edge's roles, one per file: Access Edge (SIP), MRAS (5062), A/V Edge (TURN/MS-TURN), Web Conferencing
(PSOM), XMPP proxy and gateway link, internal management (CMS, CLS).

Never imports :mod:`simulator.net.peers`. May import: :mod:`simulator.net.clients`, ``nat``, ``transport``
and the layers below :mod:`simulator.net`.
"""
