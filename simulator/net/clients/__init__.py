"""Clients: the SIP user agent (sign-in, MRAS), the TURN/MS-TURN client, and the HTTP, PSOM, XMPP and
management clients the probes and the emulated Front End use.

May import: :mod:`simulator.net.transport`, :mod:`simulator.net.nat` and the layers below :mod:`simulator.net`.
"""
