"""Every probe module, imported so their probes register; the runner reads :data:`PROBES` from here."""

from __future__ import annotations

from simulator.scenario import (  # noqa: F401  (registration)
    probes_access,
    probes_av,
    probes_dns,
    probes_mgmt,
    probes_webconf,
    probes_xmpp,
)
from simulator.scenario.probing import PROBES, Probe, ProbeContext

__all__ = ["PROBES", "Probe", "ProbeContext"]
