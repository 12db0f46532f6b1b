"""kill -9 the real `gpuwarden-agent serve` at random moments under load: nothing lost or doubled.

A client submits jobs with idempotency keys and retries until each is acknowledged, as a real
client would across an agent restart. The agent is killed (SIGKILL to its process group, so
the jobs it started become orphans in their own sessions) at seeded random points several
times, restarted on the same database, and finally left to drain the queue.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import WEBHOOK_TOKEN, console_script, free_port, wait_until
from tests.scheduler_agent.test_api import TOKEN, Api

JOB = [sys.executable, "-c", "import random, time; time.sleep(random.uniform(0.05, 0.3))"]


def _submit_all(
    base: str, keys: list[str], acked: dict[str, int], stop: threading.Event, errors: list[BaseException]
) -> None:
    try:
        _submit_each(base, keys, acked, stop)
    except BaseException as exc:  # noqa: BLE001 - reported by the test's assertion, not lost in a thread
        errors.append(exc)


def _submit_each(base: str, keys: list[str], acked: dict[str, int], stop: threading.Event) -> None:
    rng = random.Random(1)
    for key in keys:
        body = json.dumps(
            {
                "name": key,
                "gpus": rng.randint(1, 2),
                "command": JOB,
                "priority": rng.randint(0, 2),
                "idempotency_key": key,
            }
        ).encode()
        while not stop.is_set():
            req = urllib.request.Request(
                base + "/api/v1/jobs", data=body, method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    acked[key] = json.loads(resp.read())["id"]
                break
            # Agent down, or killed mid-response (a truncated body raises IncompleteRead or
            # a JSON error): retry the same key, as a real client would.
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(0.02)
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path: Path, spawn) -> None:
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "webhook-token").write_text(WEBHOOK_TOKEN)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"""
web: {{listen_address: "127.0.0.1:{port}", token_file: token}}
remediation: {{auth: {{bearer_token_file: webhook-token}}}}
database: {{path: agent.db}}
inventory: {{nodes: [{{name: a, count: 4}}, {{name: b, count: 4}}]}}
executor: {{kind: local, log_dir: logs}}
scheduler: {{tick_seconds: 0.05, stop_grace_seconds: 0.5, max_preemptions: 100}}
""")
    argv = [console_script("gpuwarden-agent"), "serve", "--config", str(cfg)]
    base = f"http://127.0.0.1:{port}"
    api = Api(base)
    keys = [f"job-{i}" for i in range(60)]
    acked: dict[str, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []
    submitter = threading.Thread(target=_submit_all, args=(base, keys, acked, stop, errors), daemon=True)
    rng = random.Random(20240601)
    unfinished_at_kill: list[int] = []  # jobs queued or running when each kill landed
    try:
        for round_ in range(4):
            proc = spawn(argv, name=f"agent{round_}")
            wait_until(lambda: api.call("GET", "/healthz")[0] == 200, 20, what="agent up")
            if round_ == 0:
                submitter.start()
            time.sleep(rng.uniform(0.1, 0.9))
            listed = api.call("GET", "/api/v1/jobs?limit=10000")[1] or []
            unfinished_at_kill.append(sum(j["state"] in ("pending", "running") for j in listed))
            proc.kill9()
        proc = spawn(argv, name="agent-final")
        wait_until(lambda: api.call("GET", "/healthz")[0] == 200, 20, what="agent up")
        submitter.join(60)
        assert not errors, f"the submitter failed: {errors[0]!r}"
        assert not submitter.is_alive() and len(acked) == len(keys), (
            f"the submitter got {len(acked)} of {len(keys)} jobs acknowledged"
        )

        def drained():
            jobs = api.call("GET", "/api/v1/jobs?limit=10000")[1]
            return jobs if jobs and all(j["state"] == "completed" for j in jobs) and len(jobs) >= len(keys) else None

        jobs = wait_until(drained, 60, interval=0.2, what="every job to complete")
    finally:
        stop.set()
    # The kills landed under load (else this test would prove nothing about crash recovery).
    assert len(unfinished_at_kill) == 4 and max(unfinished_at_kill) > 0, unfinished_at_kill
    by_key = {j["idempotency_key"]: j for j in jobs}
    assert len(jobs) == len(keys) == len(by_key), "a job was duplicated or lost"
    assert set(by_key) == set(keys)
    for key, job_id in acked.items():
        assert by_key[key]["id"] == job_id, f"{key}: acknowledged as {job_id}, stored as {by_key[key]['id']}"
    gpus = api.call("GET", "/api/v1/gpus")[1]
    assert len(gpus) == 8 and all(g["job_id"] is None for g in gpus), gpus
    assert all(j["runs"] >= 1 and j["exit_code"] == 0 for j in jobs)
    print("requeued by a restart:", sum(1 for j in jobs if j["runs"] > 1))
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert f"jobs_submitted_total {float(len(keys))}" in metrics
    assert f"jobs_completed_total {float(len(keys))}" in metrics
    proc.stop()
