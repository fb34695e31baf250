"""Every probe module, imported so their probes register; the runner reads :data:`PROBES` from here."""

from __future__ import annotations

from simulator.scenario import probes_dns, probes_mgmt, probes_webconf, probes_xmpp  # noqa: F401  (registration)
from simulator.scenario.probing import PROBES, Probe, ProbeContext

__all__ = ["PROBES", "Probe", "ProbeContext"]
