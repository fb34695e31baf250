"""Sans-I/O state machines: the TURN/MS-TURN server, relay port allocator, NAT tables, DNS zone and resolver
policies, SIP transactions, credential store.

They take bytes, addresses and ``now`` and return bytes, events and timers; a seeded ``random.Random`` is
passed in. May import: :mod:`simulator.wire` and the standard library (no asyncio, socket, ssl or clock).
"""
