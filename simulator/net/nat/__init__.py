"""The NAT box datapath: RFC 4787 NAPT for in-process clients (one real socket per binding) and a TUN +
network namespace front end for unmodified binaries.

May import: :mod:`simulator.outcome`, :mod:`simulator.core`, :mod:`simulator.wire`.
"""
