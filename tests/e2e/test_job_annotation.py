"""Alerts name the job a GPU runs (the ``running_job`` annotation, read at evaluation time from
the agent's gpu_allocation_info) while no alert depends on the agent: with the agent stopped,
a hot GPU still fires, with the annotation empty. Real Prometheus, the generated dcgm-exporter
rules over dcgm-exporter's published /metrics, the agent's own gpu_allocation_info."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.dcgm import DcgmStack, MetricsServer, fixture, set_value
from tests.helpers import wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]

JOB_COMMAND = ["sleep", "900"]  # the tracking executor never runs it


@pytest.fixture()
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DcgmStack, MetricsServer]]:
    node = MetricsServer(fixture("pr736-k8s-mixed.prom"))
    running = DcgmStack(tmp_path_factory.mktemp("dcgm-job"), {"dcgm-exporter": [node]})
    try:
        running.start()
        yield running, node
    finally:
        running.stop()
        node.stop()


def _alert_of(s: DcgmStack, uuid: str) -> dict[str, Any] | None:
    return next((a for a in s.firing("GPUThermalCritical") if a["labels"]["uuid"] == uuid), None)


def test_alerts_name_the_running_job_and_fire_without_the_agent(stack: tuple[DcgmStack, MetricsServer]) -> None:
    s, node = stack
    gpus = s.wait_gpus(3)
    job = s.agent("/api/v1/jobs", {"name": "train-llm", "gpus": 1, "command": JOB_COMMAND})

    def placed() -> list[str] | None:
        uuids: list[str] = s.agent(f"/api/v1/jobs/{job['id']}").get("gpu_uuids") or []
        return uuids or None

    (busy,) = wait_until(placed, timeout=30, interval=0.2, what="the job to be placed")
    idle = next(g["uuid"] for g in gpus if g["uuid"] != busy)
    wait_until(
        lambda: s.prom().query(f'gpu_allocation_info{{uuid="{busy}", job_name="train-llm"}}'),
        timeout=30,
        interval=0.5,
        what="Prometheus to scrape the agent's gpu_allocation_info",
    )

    node.edit(set_value("DCGM_FI_DEV_GPU_TEMP", busy, 90))
    named = wait_until(lambda: _alert_of(s, busy), timeout=90, interval=1, what="GPUThermalCritical on the busy GPU")
    assert named["annotations"]["running_job"] == f"train-llm (job_id {job['id']})"

    # The agent goes away: its series go stale, and the next GPU's alert fires all the same.
    s.stop_agent()
    wait_until(
        lambda: s.prom().query('up{job="gpuwarden-agent"} == 0'),
        timeout=30,
        interval=0.5,
        what="the agent's target down",
    )
    node.edit(set_value("DCGM_FI_DEV_GPU_TEMP", idle, 90))
    unnamed = wait_until(
        lambda: _alert_of(s, idle), timeout=90, interval=1, what="GPUThermalCritical without the agent"
    )
    assert unnamed["annotations"]["running_job"] == ""
    assert unnamed["labels"]["rule"] == "THERMAL_CRITICAL"
    assert not s.prom().query("gpu_allocation_info")  # nothing left to name a job from
