"""The embedded lab: address plan, port map, PKI, and :class:`~simulator.lab.topology.Lab`, which starts every
service of a scenario (each on its own loopback address) in one process.

One module per Edge role builds that role's services from the scenario (``access``, ``av``, ``mgmt``,
``webconf``, ``xmpp``, ``clients``); ``topology`` lists those builders in start order. May import:
:mod:`simulator.net`, :mod:`simulator.spec`, :mod:`simulator.outcome`, :mod:`simulator.core`,
:mod:`simulator.wire`.
"""
