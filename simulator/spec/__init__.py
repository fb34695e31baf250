"""What a run is asked to do: the scenario schema and its loader (errors name file, line, column and field)
and the catalog of the 38 documented rules.

May import: :mod:`simulator.outcome` (expected verdicts), :mod:`simulator.core`, :mod:`simulator.wire`.
"""
