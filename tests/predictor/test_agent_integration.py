"""The plug-in inside the real agent: placement prefers low risk, a predicted GPU is drained."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.scheduler_agent import config as agent_config
from gpuwarden.scheduler_agent.server import Agent
from tests.predictor.fakeprom import FakePrometheus


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    p = FakePrometheus()
    yield p
    p.close()


def test_risk_steers_placement_and_prediction_migrates(tmp_path: Path, prom: FakePrometheus) -> None:
    now = time.time()
    # GPU-n1-0 climbs +1 °C/min from 77 °C: 85 °C in 8 minutes, inside a 10 minute lead time.
    prom.add("gpu_temperature_celsius", {"gpu": "0", "uuid": "GPU-n1-0"}, lambda t: 77 + (t - now) / 60)
    prom.add("gpu_temperature_celsius", {"gpu": "1", "uuid": "GPU-n1-1"}, lambda t: 60.0)
    (tmp_path / "token").write_text("secret\n")
    (tmp_path / "webhook-token").write_text("webhook-secret\n")
    cfg_path = tmp_path / "agent.yml"
    cfg_path.write_text(f"""
web: {{listen_address: "127.0.0.1:0", token_file: token}}
remediation: {{auth: {{bearer_token_file: webhook-token}}}}
database: {{path: agent.db}}
executor: {{kind: tracking}}
inventory: {{nodes: [{{name: n1, count: 2}}]}}
predictor: {{prometheus_url: "{prom.url}", lead_time_seconds: 600, period_seconds: 30}}
""")
    agent = Agent(agent_config.load(cfg_path))
    try:
        svc = next(p for p in agent.plugins if hasattr(p, "risk"))
        svc.run_once()  # nothing runs yet: the hot GPU stays armed for migration
        assert agent.scheduler.risk("GPU-n1-0") > 0.5 > agent.scheduler.risk("GPU-n1-1")
        first = agent.scheduler.submit("a", 1)["id"]
        agent.scheduler.schedule_once()
        assert agent.scheduler.get_job(first)["gpu_uuids"] == ["GPU-n1-1"]  # low risk preferred
        second = agent.scheduler.submit("b", 1)["id"]
        agent.scheduler.schedule_once()
        assert agent.scheduler.get_job(second)["gpu_uuids"] == ["GPU-n1-0"]  # the only one left
        svc.run_once()  # predicted critical within the lead time: drained
        job = agent.scheduler.get_job(second)
        assert job["state"] in ("queued", "pending") and job["preemptions"] == 1, job
        svc.run_once()  # once per episode
        assert agent.scheduler.get_job(second)["preemptions"] == 1
    finally:
        agent.close()
