"""The default demo: three faults played on the simulated fleet, aimed at GPUs the agent knows.

- thermal runaway (failed cooling) on an idle GPU: THERMAL_CRITICAL → throttle, the GPU cools,
  the alert resolves, and after the hold-down the power limit is restored;
- an uncorrectable ECC error on another idle GPU: ECC_UNCORRECTABLE → quarantine (held until a
  person releases it);
- a power excursion on the GPU running job ``train-b``: POWER_CRITICAL → preempt, and the job runs
  again on a healthy GPU.

The faults are aimed only once the jobs are placed, so the power-critical GPU really has a job.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gpuwarden.scheduler_agent.client import ApiError, Client

JOB_COMMAND = [
    sys.executable,
    "-c",
    "import os, time; print('training on CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'], "
    "flush=True); time.sleep(10**6)",
]
JOBS = [("train-a", 2), ("train-b", 1), ("eval-c", 1)]
# With cooling at half its strength (the fault below), a 700 W-class board at 60 % load settles
# near 100 °C (held at 88 °C by its own slowdown) and at 300 W near 78 °C: the throttle cools it
# below THERMAL_CRITICAL's 85 °C, the alert resolves, and after the hold-down the limit returns,
# by when the cooling is repaired (110 s).
THROTTLE_WATTS = 300.0


def wait_for_gpus(agent_url: str, token: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            gpus: list[dict[str, Any]] = Client(agent_url, token, timeout=5).call("GET", "/api/v1/gpus")
            if len(gpus) >= count:
                return gpus
        except (OSError, ApiError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the agent did not discover {count} GPUs from Prometheus within {timeout:.0f}s")


def submit_jobs(agent_url: str, token: str) -> list[int]:
    return [
        Client(agent_url, token, timeout=5).call(
            "POST",
            "/api/v1/jobs",
            {"name": name, "gpus": n, "command": JOB_COMMAND, "idempotency_key": f"demo-{name}"},
        )["id"]
        for name, n in JOBS
    ]


def _running_gpus(agent_url: str, token: str, job_id: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Client(agent_url, token, timeout=5).call("GET", f"/api/v1/jobs/{job_id}")
        if job.get("state") == "running" and job.get("gpu_uuids"):
            return list(job["gpu_uuids"])
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} was not running within {timeout:.0f}s")


def scenario(thermal: int, ecc: int, power: int) -> dict[str, Any]:
    """The demo's scenario document for the simulator's control endpoint (times from now)."""
    return {
        "name": "demo",
        "description": "thermal runaway throttled, uncorrectable ECC quarantined, power-critical job preempted",
        "steps": [
            {"at": 0, "gpu": thermal, "load": {"utilization": 0.6}},
            {"at": 0, "gpu": thermal, "fault": {"kind": "cooling", "factor": 2.0}},
            {"at": "110s", "gpu": thermal, "clear_faults": True},
            {"at": "110s", "gpu": thermal, "release_load": True},
            {"at": "20s", "gpu": ecc, "fault": {"kind": "ecc", "uncorrectable": 1}},
            {"at": "40s", "gpu": power, "load": {"utilization": 0.72}},
            {"at": "150s", "gpu": power, "release_load": True},
        ],
    }


def start(agent_url: str, token: str, control_url: str, gpu_count: int) -> dict[str, int]:
    """Submits the demo's jobs, then aims and plays the faults; returns the target GPU indexes."""
    gpus = wait_for_gpus(agent_url, token, gpu_count)
    index = {g["uuid"]: g["index"] for g in gpus}
    ids = submit_jobs(agent_url, token)
    busy = {u for job_id in ids for u in _running_gpus(agent_url, token, job_id)}
    power = index[_running_gpus(agent_url, token, ids[1])[0]]
    idle = sorted(i for u, i in index.items() if u not in busy)
    if len(idle) < 2:
        raise RuntimeError("the demo needs at least two idle GPUs besides its jobs' (use --simulate 8)")
    targets = {"thermal": idle[0], "ecc": idle[-1], "power": power}
    Client(control_url, timeout=5).call("POST", "/api/v1/scenario", scenario(**targets))
    return targets
