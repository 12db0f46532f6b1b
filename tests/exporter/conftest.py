"""A simulated exporter in-process: fleet on a manual clock, the real pynvml wrappers over the
simulated library, the real service and collector, a fresh registry per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.exporter import collectors
from gpuwarden.exporter.collector import GpuCollector
from gpuwarden.exporter.exposition import TextRenderer
from gpuwarden.exporter.service import ExporterService
from gpuwarden.exporter.sim.clock import ManualClock
from gpuwarden.exporter.sim.fleet import Fleet
from gpuwarden.exporter.sim.library import SimLibrary, install
from tests.helpers import wait_until


@dataclass
class Harness:
    fleet: Fleet
    clock: ManualClock
    lib: SimLibrary
    service: ExporterService
    registry: CollectorRegistry
    renderer: TextRenderer = field(default_factory=TextRenderer)

    def text(self) -> str:
        """One scrape, rendered the way GET /metrics renders it."""
        return self.renderer.render(self.registry).decode()

    def scrape(self) -> dict[str, Any]:
        """name -> Metric family from one scrape."""
        return {f.name: f for f in text_string_to_metric_families(self.text())}

    def values(self, fams: dict[str, Any], name: str, **labels: str) -> dict[str, float]:
        """{gpu: value} for samples of ``name`` matching ``labels``."""
        out = {}
        for fam in fams.values():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out[s.labels.get("gpu", "")] = s.value
        return out


@pytest.fixture
def make_exporter() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(
        count: int = 8,
        model: str = "h100",
        missing: frozenset[str] = frozenset(),
        timeout: float = 5.0,
        latency_s: float = 0.0,
        enabled: dict[str, bool] | None = None,
        loader: Callable[[], None] | None = None,
        setup: Callable[[Fleet], None] | None = None,
        **service_kw: Any,
    ) -> Harness:
        """``setup`` runs on the fleet before the exporter starts (faults present at start-up)."""
        clock = ManualClock()
        fleet = Fleet(count, clock, model=model)
        if setup is not None:
            setup(fleet)
        lib = SimLibrary(fleet, missing=missing, latency_s=latency_s)
        service = ExporterService(
            collectors.enabled(enabled),
            timeout=timeout,
            loader=loader or (lambda: install(lib)),
            event_wait_ms=50,
            **service_kw,
        )
        service.start(wait=5.0)
        if service.xid is not None:  # XIDs raised before registration are missed, as on a real driver
            wait_until(lambda: service.xid.running, timeout=5, what="XID watcher registered")
        registry = CollectorRegistry()
        registry.register(GpuCollector(service))
        h = Harness(fleet, clock, lib, service, registry)
        made.append(h)
        return h

    yield make
    for h in made:
        h.fleet.clear("all")  # releases calls blocked by hang faults
        h.service.stop()
        if h.service.xid is not None:
            h.service.xid.stop(join=2.0)
    install(None)
    pynvml._nvmlLib_refcount = 0
