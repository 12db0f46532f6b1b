"""The agent plug-in: config validation and wiring (risk hook, metrics, migration through the port)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

from gpuwarden.scheduler_agent.predictor import plugin
from gpuwarden.scheduler_agent.remediation.service import SchedulerAdapter
from gpuwarden.scheduler_agent.store import Database
from tests.predictor.fakeprom import FakePrometheus


class FakeConfig:
    def __init__(self, section: dict[str, Any], inventory: dict[str, Any] | None = None) -> None:
        self.raw = {"predictor": section} if section else {}
        self.path = Path("/etc/gpuwarden/agent.yml")
        self.inventory = inventory or {}

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.raw.get(name) or {})

    def error(self, field: str, message: str) -> Exception:
        return ValueError(f"{self.path}: {field}: {message}")

    def resolve(self, p: str) -> Path:
        return Path(p)


class FakeScheduler:
    def __init__(self) -> None:
        self.risk = lambda uuid: 0.0
        self.preempted: list[tuple[str, str, str]] = []

    def preempt_gpu(self, uuid: str, reason: str, actor: str = "scheduler") -> list[int]:
        self.preempted.append((uuid, reason, actor))
        return [7]


class FakeAgent:
    def __init__(
        self, section: dict[str, Any], db: Database | None = None, inventory: dict[str, Any] | None = None
    ) -> None:
        self.config = FakeConfig(section, inventory)
        self.scheduler = FakeScheduler()
        self.port = SchedulerAdapter(self.scheduler)  # type: ignore[arg-type]
        self.db = db
        self.registry = CollectorRegistry()
        self.tracer_provider = TracerProvider()

    def install(self) -> Any:
        return plugin.install(self, self.port)


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    p = FakePrometheus()
    yield p
    p.close()


def test_absent_section_disables_the_predictor() -> None:
    assert FakeAgent({}).install() is None


@pytest.mark.parametrize(
    "section, field",
    [
        ({"prometheus_url": "localhost:9090"}, "predictor.prometheus_url"),
        ({"prometheus_url": "http://x", "period_seconds": 0}, "predictor.period_seconds"),
        ({"prometheus_url": "http://x", "lead_time_seconds": "5m"}, "predictor.lead_time_seconds"),
        ({"prometheus_url": "http://x", "migrate": "yes"}, "predictor.migrate"),
        ({"prometheus_url": "http://x", "perod_seconds": 5}, "predictor.perod_seconds"),
    ],
)
def test_bad_config_names_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FakeAgent(section).install()


def test_wires_risk_hook_metrics_and_migration(prom: FakePrometheus, tmp_path: Path) -> None:
    import time

    now = time.time()
    prom.add("gpu_temperature_celsius", {"gpu": "0", "uuid": "GPU-a"}, lambda t: 80 + (t - now) / 60)
    db = Database(tmp_path / "agent.db")
    agent = FakeAgent({"prometheus_url": prom.url, "lead_time_seconds": 600, "period_seconds": 30}, db)
    svc = agent.install()
    assert svc is not None
    svc.run_once()
    assert agent.scheduler.risk("GPU-a") > 0.5
    assert [(u, a) for u, _, a in agent.scheduler.preempted] == [("GPU-a", "predictor")]
    assert "gpu_failure_risk_score" in generate_latest(agent.registry).decode()
    svc.close()
    db.close()


def _rules(tmp_path: Path, source: str) -> Path:
    from gpuwarden.rules.config import DEFAULT_PATH

    text = DEFAULT_PATH.read_text().replace("  source: gpuwarden\n", f"  source: {source}\n", 1)
    assert f"  source: {source}\n" in text
    path = tmp_path / "thresholds.yaml"
    path.write_text(text)
    return path


def test_source_follows_the_inventory_discovery_setting(prom: FakePrometheus, tmp_path: Path) -> None:
    """inventory.prometheus.source (the agent's one source setting) decides what the predictor
    queries; it must agree with the thresholds file's settings.source."""
    inventory = {"prometheus": {"url": prom.url, "source": "dcgm-exporter", "job_selector": 'job="dcgm"'}}
    section = {"prometheus_url": prom.url, "migrate": False, "rules_file": str(_rules(tmp_path, "dcgm-exporter"))}
    svc = FakeAgent(section, inventory=inventory).install()
    assert svc is not None
    assert (svc.source, svc.job_selector) == ("dcgm-exporter", 'job="dcgm"')
    assert all('job="dcgm"' in s.query and "DCGM_FI_DEV_" in s.query for s in svc.specs)
    svc.close()
    with pytest.raises(ValueError, match="inventory.prometheus.source.*settings.source"):
        FakeAgent({"prometheus_url": prom.url, "migrate": False}, inventory=inventory).install()
    # Without Prometheus discovery the thresholds file's own source applies.
    svc = FakeAgent(section).install()
    assert svc is not None and svc.source == "dcgm-exporter"
    assert svc.job_selector == 'job=~"(nvidia-)?dcgm-exporter"'
    svc.close()
