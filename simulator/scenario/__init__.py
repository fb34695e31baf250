"""Running a scenario against a lab: the probe registry and probes (one application-level check per rule),
the dependency-ordered runner, the load phases and events.

May import: :mod:`simulator.lab` and every layer below it.
"""
