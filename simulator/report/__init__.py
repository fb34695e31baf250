"""The report of a run: a pure model built from the runner's results, and its renderers (terminal, JSON).

May import: :mod:`simulator.scenario` and every layer below it.
"""
