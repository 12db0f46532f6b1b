"""Every collector, registered here and nowhere else (node_exporter style).

Each is on unless its module says otherwise; ``--collector.<name>`` / ``--no-collector.<name>``
toggle them. Order here is the order of families in /metrics.
"""

from __future__ import annotations

from . import clocks, ecc, encoder, gpm, memory, nvlink, pcie, pcie_traffic, power, thermal, throttle, utilization, xid
from .base import Collector

COLLECTORS: dict[str, Collector] = {
    c.name: c
    for c in (
        thermal.COLLECTOR,
        power.COLLECTOR,
        utilization.COLLECTOR,
        gpm.COLLECTOR,
        encoder.COLLECTOR,
        memory.COLLECTOR,
        ecc.COLLECTOR,
        throttle.COLLECTOR,
        clocks.COLLECTOR,
        pcie.COLLECTOR,
        pcie_traffic.COLLECTOR,
        nvlink.COLLECTOR,
        xid.COLLECTOR,
    )
}


def enabled(overrides: dict[str, bool] | None = None) -> list[Collector]:
    """The collectors to run: defaults, then ``overrides`` (name -> on/off)."""
    overrides = overrides or {}
    unknown = set(overrides) - set(COLLECTORS)
    if unknown:
        raise ValueError(f"unknown collector(s) {sorted(unknown)}; known: {', '.join(COLLECTORS)}")
    return [c for name, c in COLLECTORS.items() if overrides.get(name, c.default_enabled)]
