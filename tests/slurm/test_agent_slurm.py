"""The real agent (``gpuwarden-agent serve``) configured with the Slurm backend, against a real
slurmctld/slurmd: Alertmanager webhook v4 notifications in, Slurm's state and the audit out."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import WEBHOOK_TOKEN, console_script, free_port, http_get, wait_until
from tests.predictor.fakeprom import FakePrometheus
from tests.slurm.cluster import SlurmCluster

TOKEN = "slurm-test-token"


def uuid_of(i: int) -> str:
    return f"GPU-5a1e0000-0000-0000-0000-00000000000{i}"


class Agent:
    def __init__(self, spawn, tmp: Path, slurm: SlurmCluster, scontrol: Path, extra_slurm: str = "") -> None:
        self.spawn, self.tmp, self.slurm = spawn, tmp, slurm
        self.port = free_port()
        self.instance = f"{slurm.node}:9786"  # as Prometheus labels the exporter's target
        (tmp / "token").write_text(TOKEN + "\n")
        (tmp / "webhook-token").write_text(WEBHOOK_TOKEN + "\n")
        gpus = ", ".join(f"{{index: {i}, uuid: {uuid_of(i)}}}" for i in range(8))
        self.config = tmp / "agent.yaml"
        self.config.write_text(f"""
web: {{listen_address: "127.0.0.1:{self.port}", token_file: token}}
database: {{path: agent.db}}
executor: {{kind: tracking}}
inventory:
  nodes: [{{name: "{self.instance}", gpus: [{gpus}]}}]
remediation:
  auth: {{bearer_token_file: webhook-token}}
  worker: {{poll_interval_seconds: 0.1}}
  escalation: {{enabled: false}}
  budget: {{max_quarantined_ratio: 1.0, max_actions_per_minute: 1000}}
slurm:
  scontrol: ["{scontrol}"]
  slurm_conf: "{slurm.conf}"
  backoff_seconds: 0.1
{extra_slurm}
""")
        self.proc = None

    def start(self, name: str = "agent") -> Agent:
        self.proc = self.spawn([console_script("gpuwarden-agent"), "serve", "--config", str(self.config)], name=name)
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{self.port}/healthz")[0] == 200,
            20,
            what=f"the agent: {self.proc.output()[-2000:]}",
        )
        return self

    def kill(self) -> None:
        """SIGKILL the agent alone (a scontrol it started keeps running, as after a crash)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait(10)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {WEBHOOK_TOKEN if path.startswith('/webhook/') else TOKEN}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def notify(
        self,
        rule: str,
        action: str,
        gpu: int,
        status: str = "firing",
        instance: str | None = None,
        starts: str = "2026-01-01T00:00:00Z",
    ) -> None:
        labels = {
            "alertname": rule,
            "rule": rule,
            "severity": "critical",
            "action": action,
            "instance": instance or self.instance,
            "job": "gpuwarden-exporter",
            "gpu": str(gpu),
            "uuid": uuid_of(gpu),
        }
        body = {
            "version": "4",
            "receiver": "gpuwarden-agent",
            "status": status,
            "groupKey": f'{{}}:{{rule="{rule}"}}',
            "truncatedAlerts": 0,
            "groupLabels": {"rule": rule},
            "commonLabels": labels,
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [
                {
                    "status": status,
                    "labels": labels,
                    "annotations": {},
                    "startsAt": starts,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090",
                    "fingerprint": f"{rule}-{gpu}-{instance or ''}",
                }
            ],
        }
        status_code, answer = self.request("POST", "/webhook/alertmanager", body)
        assert status_code == 202, answer

    def actions(self, **query: str) -> list[dict]:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = self.request("GET", f"/api/v1/actions?{q}")
        assert status == 200, body
        return body["actions"]

    def decided(self, action: str, uuid: str, timeout: float = 30) -> dict:
        def done():
            rows = [a for a in self.actions(action=action, uuid=uuid) if a["outcome"] != "pending"]
            return rows[0] if rows else None

        return wait_until(done, timeout, 0.1, f"the {action} decision on {uuid}: {self.proc.output()[-3000:]}")

    def commands(self) -> list[dict]:
        status, body = self.request("GET", "/api/v1/slurm/commands")
        assert status == 200, body
        return body["commands"]


def calls(log: Path, verb: str) -> list[str]:
    """The scontrol calls (argv) that changed something: requeue, update."""
    if not log.exists():
        return []
    return [ln[len("start ") :] for ln in log.read_text().splitlines() if ln.startswith(f"start {verb}")]


def running(slurm: SlurmCluster, job: int) -> dict[str, str] | None:
    j = slurm.job(job)
    return j if j.get("JobState") == "RUNNING" else None


def test_power_critical_requeues_the_job_on_that_gpu_and_it_runs_again_promptly(
    clean_slurm, spawn, tmp_path, scontrol_wrapper
):
    slurm = clean_slurm
    wrapper, log = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    a = slurm.sbatch(2)  # GPUs 0-1
    wait_until(lambda: running(slurm, a), 20, what="job a running")
    b = slurm.sbatch(2)  # GPUs 2-3
    wait_until(lambda: running(slurm, b), 20, what="job b running")
    assert "IDX:0-1" in slurm.scontrol("show", "job", "-d", str(a)).stdout

    agent.notify("POWER_CRITICAL", "preempt", gpu=1)
    act = agent.decided("preempt", uuid_of(1))
    assert act["outcome"] == "acted", act
    assert act["detail"]["preempted_jobs"] == [a]
    requeued_at = time.monotonic()
    job = wait_until(
        lambda: (lambda j: j if j.get("JobState") == "RUNNING" and j.get("Restarts") == "1" else None)(slurm.job(a)),
        30,
        0.2,
        "job a to run again after its requeue",
    )
    # Without the StartTime reset Slurm holds a requeued job ~120 s (Reason=BeginTime).
    assert time.monotonic() - requeued_at < 30, job
    assert slurm.job(b)["Restarts"] == "0"  # the other GPUs' job is untouched
    assert calls(log, "requeue") == [f"requeue {a}"]
    assert calls(log, "update") == [f"update JobId={a} StartTime=now"]
    # Not within the second slurmd revoked the first run's credential: the restart would fail
    # with "Job credential revoked" (one run in CI did, when both fell in the same second).
    at = {
        line.split(" ", 2)[1]: float(line.split(" ", 1)[0])
        for line in Path(f"{log}.times").read_text().splitlines()
        if " requeue " in line or " update " in line
    }
    assert at["update"] - at["requeue"] >= 1.0, at
    journal = agent.commands()
    assert {(c["op"], c["target"], c["outcome"]) for c in journal} == {
        ("requeue", str(a), "ok"),
        ("start_now", str(a), "ok"),
    }


def test_ecc_drains_the_node_new_jobs_wait_and_release_resumes_it(clean_slurm, spawn, tmp_path, scontrol_wrapper):
    slurm = clean_slurm
    wrapper, log = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    a = slurm.sbatch(4)  # GPUs 0-3, GPU 3 among them
    wait_until(lambda: running(slurm, a), 20, what="job a running")

    agent.notify("ECC_UNCORRECTABLE", "quarantine", gpu=3)
    act = agent.decided("quarantine", uuid_of(3))
    assert act["outcome"] == "acted", act
    assert "cannot drain a single GPU" in act["detail"]["slurm_note"]
    assert act["detail"]["slurm_node"] == slurm.node
    assert act["detail"]["preempted_jobs"] == [a]  # quarantine preempts the GPU's job
    node = slurm.node_info()
    assert "DRAIN" in node["State"], node
    assert node["Reason"] == f"gpuwarden: ECC_UNCORRECTABLE gpu 3 {uuid_of(3)}"

    late = slurm.sbatch(1)
    time.sleep(3)  # several scheduling passes
    assert slurm.job(late)["JobState"] == "PENDING"
    assert slurm.job(a)["JobState"] == "PENDING"  # requeued, and the node takes nothing

    # The operator releases the GPU through the agent's own API: Slurm follows.
    status, body = agent.request("POST", f"/api/v1/gpus/{uuid_of(3)}/release", {})
    assert status == 200, body
    wait_until(lambda: "DRAIN" not in slurm.node_info()["State"], 15, what="node resumed")
    wait_until(lambda: running(slurm, late) and running(slurm, a), 30, what="the waiting jobs to start")
    assert calls(log, "update NodeName") == [
        f"update NodeName={slurm.node} State=DRAIN Reason=gpuwarden: ECC_UNCORRECTABLE gpu 3 {uuid_of(3)}",
        f"update NodeName={slurm.node} State=RESUME",
    ]


def test_a_node_an_operator_drained_is_left_alone(clean_slurm, spawn, tmp_path, scontrol_wrapper):
    slurm = clean_slurm
    wrapper, log = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    # Ours first, then the operator takes the node for maintenance: release must not undo it.
    agent.notify("ECC_UNCORRECTABLE", "quarantine", gpu=5)
    assert agent.decided("quarantine", uuid_of(5))["outcome"] == "acted"
    slurm.scontrol("update", f"NodeName={slurm.node}", "State=DRAIN", "Reason=maintenance: PSU")
    status, body = agent.request("POST", f"/api/v1/slurm/gpus/{uuid_of(5)}/release")
    assert status == 200 and body["resumed"] is False, body
    node = slurm.node_info()
    assert "DRAIN" in node["State"] and node["Reason"] == "maintenance: PSU", node

    # Drained by the operator before any alert: a quarantine leaves their reason in place.
    agent.notify("ECC_UNCORRECTABLE", "quarantine", gpu=6)
    act = agent.decided("quarantine", uuid_of(6))
    assert act["outcome"] == "acted" and "someone else" in act["detail"]["slurm"], act
    assert slurm.node_info()["Reason"] == "maintenance: PSU"
    assert not [c for c in calls(log, "update NodeName") if "RESUME" in c]


def test_an_unknown_node_fails_the_action_with_a_clear_error(clean_slurm, spawn, tmp_path, scontrol_wrapper):
    slurm = clean_slurm
    wrapper, log = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    agent.notify("POWER_CRITICAL", "preempt", gpu=2, instance="ghost-node:9786")
    act = agent.decided("preempt", uuid_of(2))
    assert act["outcome"] == "failed"
    assert "instance='ghost-node:9786'" in act["error"]
    assert "slurm.nodes" in act["error"] and slurm.node in act["error"]
    assert not calls(log, "requeue") and not calls(log, "update")


def test_the_agent_killed_mid_requeue_repeats_no_command(clean_slurm, spawn, tmp_path, scontrol_wrapper):
    slurm = clean_slurm
    wrapper, log = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    a = slurm.sbatch(1)  # GPU 0
    wait_until(lambda: running(slurm, a), 20, what="job a running")

    (tmp_path / "slow-requeue").touch()
    agent.notify("POWER_CRITICAL", "preempt", gpu=0)
    wait_until(lambda: calls(log, "requeue"), 20, 0.05, "the requeue to start")
    agent.kill()  # the requeue is still in flight
    (tmp_path / "slow-requeue").unlink()
    wait_until(lambda: slurm.job(a).get("Restarts") == "1", 15, 0.1, "Slurm to requeue job a")

    agent.start("agent-restarted")
    act = agent.decided("preempt", uuid_of(0))
    assert act["outcome"] == "acted", act
    wait_until(lambda: running(slurm, a), 30, 0.2, "job a running again")
    # Alertmanager delivers the same notification again after the restart: nothing new.
    agent.notify("POWER_CRITICAL", "preempt", gpu=0)
    time.sleep(1.5)
    assert calls(log, "requeue") == [f"requeue {a}"]
    assert slurm.job(a)["Restarts"] == "1"
    assert len([x for x in agent.actions(action="preempt")]) == 1
    ops = [(c["op"], c["outcome"]) for c in reversed(agent.commands())]
    assert ops == [("requeue", "ok"), ("start_now", "ok")], agent.commands()


def test_two_quarantined_gpus_share_the_drain_until_both_are_released(clean_slurm, spawn, tmp_path, scontrol_wrapper):
    slurm = clean_slurm
    wrapper, _ = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    agent.notify("ECC_UNCORRECTABLE", "quarantine", gpu=1)
    agent.decided("quarantine", uuid_of(1))
    agent.notify("ECC_UNCORRECTABLE", "quarantine", gpu=2)
    agent.decided("quarantine", uuid_of(2))
    assert slurm.node_info()["Reason"] == (
        f"gpuwarden: ECC_UNCORRECTABLE gpu 1 {uuid_of(1)}; ECC_UNCORRECTABLE gpu 2 {uuid_of(2)}"
    )
    status, body = agent.request("POST", f"/api/v1/slurm/gpus/{uuid_of(1)}/release")
    assert status == 200 and body["resumed"] is False, body
    node = slurm.node_info()
    assert "DRAIN" in node["State"]
    assert node["Reason"] == f"gpuwarden: ECC_UNCORRECTABLE gpu 2 {uuid_of(2)}"
    status, body = agent.request("POST", f"/api/v1/slurm/gpus/{uuid_of(2)}/release")
    assert status == 200 and body["resumed"] is True, body
    assert "DRAIN" not in slurm.node_info()["State"]


def test_a_manual_quarantine_through_the_agents_api_drains_in_slurm(clean_slurm, spawn, tmp_path, scontrol_wrapper):
    slurm = clean_slurm
    wrapper, _ = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    status, body = agent.request("POST", f"/api/v1/gpus/{uuid_of(7)}/quarantine", {"reason": "fan noise"})
    assert status == 200, body
    assert slurm.node_info()["Reason"] == f"gpuwarden: manual gpu 7 {uuid_of(7)}"
    status, body = agent.request("POST", f"/api/v1/gpus/{uuid_of(7)}/release", {})
    assert status == 200, body
    assert "DRAIN" not in slurm.node_info()["State"]
    assert [c["op"] for c in reversed(agent.commands())] == ["drain", "resume"]


# -- the predictor's migrations reach Slurm ----------------------------------------------------
# The real agent with ``slurm:`` and ``predictor:``, a fake Prometheus in which one GPU's
# temperature climbs toward its threshold: the job on that GPU is requeued through the agent's
# one scheduler port (``SlurmPort``), journaled under the predictor's migration key. (In this
# file, not its own: `make test` distributes by file, and the Slurm cluster is one per worker.)

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


def allocation_lines(agent: Agent) -> set[str]:
    status, text = http_get(f"http://127.0.0.1:{agent.port}/metrics")
    assert status == 200, text
    return {ln for ln in text.decode().splitlines() if ln.startswith("gpu_allocation_info{")}


def test_the_agent_exports_which_slurm_job_holds_which_gpu(clean_slurm, spawn, tmp_path, scontrol_wrapper):
    slurm = clean_slurm
    wrapper, _log = scontrol_wrapper
    agent = Agent(spawn, tmp_path, slurm, wrapper).start()
    a = slurm.sbatch(2, 600, "--job-name=train llm v2")  # GPUs 0-1; a name with spaces
    wait_until(lambda: running(slurm, a), 20, what="job a running")
    b = slurm.sbatch(1, 600, "--job-name=eval")  # GPU 2
    wait_until(lambda: running(slurm, b), 20, what="job b running")
    assert "IDX:0-1" in slurm.scontrol("show", "job", "-d", str(a)).stdout
    assert "IDX:2" in slurm.scontrol("show", "job", "-d", str(b)).stdout

    def series(job: int, name: str, gpu: int) -> str:
        return (
            f'gpu_allocation_info{{gpu="{gpu}",instance="{agent.instance}",job_id="{job}",'
            f'job_name="{name}",uuid="{uuid_of(gpu)}"}} 1.0'
        )

    want = {series(a, "train llm v2", 0), series(a, "train llm v2", 1), series(b, "eval", 2)}
    assert allocation_lines(agent) == want
    slurm.run("scancel", str(a))
    wait_until(lambda: allocation_lines(agent) == {series(b, "eval", 2)}, 20, what="job a's GPUs to be let go")
