"""The predictor's migrations reach Slurm: the real agent with ``slurm:`` and ``predictor:``, a
fake Prometheus in which one GPU's temperature climbs toward its threshold, a real
slurmctld/slurmd. The job on that GPU is requeued through the agent's one scheduler port
(``SlurmPort``), journaled under the predictor's migration key."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.helpers import wait_until
from tests.predictor.fakeprom import FakePrometheus
from tests.slurm.test_agent_slurm import Agent, calls, running, uuid_of

# One shared slurm per session: every test of it on one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")

HOT = 2  # the GPU whose temperature climbs


def runs(prom: FakePrometheus) -> int:
    """Predictor runs so far: each range-queries the temperature once."""
    return len([q for q in list(prom.queries) if "gpu_temperature_celsius" in q])


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    p = FakePrometheus()
    yield p
    p.close()


def test_a_predicted_failure_requeues_the_slurm_job_on_that_gpu(
    clean_slurm, spawn, tmp_path, scontrol_wrapper, prom: FakePrometheus
):
    slurm = clean_slurm
    wrapper, log = scontrol_wrapper
    now = time.time()
    for i in range(8):
        labels = {"instance": f"{slurm.node}:9786", "gpu": str(i), "uuid": uuid_of(i), "job": "gpuwarden-exporter"}
        # GPU 2: 77 °C and +1 °C a minute, 85 °C (THERMAL_CRITICAL) in 8 minutes: inside the
        # 10 minute lead time. The others stay at 60 °C.
        prom.add("gpu_temperature_celsius", labels, (lambda t: 77 + (t - now) / 60) if i == HOT else (lambda t: 60.0))
    a = slurm.sbatch(2)  # GPUs 0-1
    wait_until(lambda: running(slurm, a), 20, what="job a running")
    assert "IDX:0-1" in slurm.scontrol("show", "job", "-d", str(a)).stdout

    agent = Agent(
        spawn,
        tmp_path,
        slurm,
        wrapper,
        extra_slurm=f"""
predictor:
  prometheus_url: "{prom.url}"
  period_seconds: 0.5
  lead_time_seconds: 600
  migrate: true
""",
    ).start()
    # GPU 2 is predicted but idle: each run looks again (the key stays, no plan is kept) and
    # requeues nothing.
    wait_until(lambda: runs(prom) >= 3, 20, 0.1, f"three predictor runs: {agent.proc.output()[-2000:]}")
    assert not calls(log, "requeue")

    b = slurm.sbatch(2)  # GPUs 2-3: on the hot GPU
    wait_until(lambda: calls(log, "requeue"), 30, 0.1, f"the predictor to requeue job b: {agent.proc.output()[-3000:]}")

    def requeued_and_running() -> dict[str, str] | None:
        j = slurm.job(b)
        return j if j.get("JobState") == "RUNNING" and j.get("Restarts") == "1" else None

    job = wait_until(requeued_and_running, 30, 0.2, "job b to run again after its requeue")
    assert job["JobId"] == str(b)
    assert slurm.job(a)["Restarts"] == "0"  # the other GPUs' job is untouched
    assert calls(log, "requeue") == [f"requeue {b}"]
    assert calls(log, "update") == [f"update JobId={b} StartTime=now"]

    # Through the port, under the predictor's key (not remediation's: no alert, no action).
    journal = agent.commands()
    assert {(c["op"], c["target"], c["outcome"], c["source"]) for c in journal} == {
        ("requeue", str(b), "ok", "predictor"),
        ("start_now", str(b), "ok", "predictor"),
    }
    assert len({c["action_id"] for c in journal}) == 1
    assert agent.actions() == []

    # Once per prediction episode: job b, back on the only free GPUs, is not bounced.
    done = runs(prom)
    wait_until(lambda: runs(prom) >= done + 3, 20, 0.1, "three more predictor runs")
    assert calls(log, "requeue") == [f"requeue {b}"]
    assert slurm.job(b)["Restarts"] == "1"
