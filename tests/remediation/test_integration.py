"""The real agent (``gpuwarden-agent serve``) with real Alertmanager 0.25 posting to it, and the
agent killed between accepting and acting."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import WEBHOOK_TOKEN, console_script, free_port, http_get, require_binary, wait_until
from tests.remediation.conftest import TOKEN, post
from tests.remediation.fakes import alert, notification


def write_agent_config(tmp: Path, port: int, remediation: str = "") -> Path:
    return helpers.write_agent_config(
        tmp,
        port,
        TOKEN,
        nodes="[{name: n0, count: 4}, {name: n1, count: 4}]",
        extra="remediation:\n  budget: {max_quarantined_ratio: 0.5}\n" + remediation + "\n",
    )


def start_agent(spawn, cfg: Path, port: int, name: str = "agent"):
    proc = spawn([console_script("gpuwarden-agent"), "serve", "--config", str(cfg)], name=name)
    wait_until(
        lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
        20,
        what=f"agent on {port}: {proc.output()[-2000:]}",
    )
    return proc


def api(port: int, path: str):
    status, body = http_get(f"http://127.0.0.1:{port}{path}", token=TOKEN)
    assert status == 200, (path, body)
    return json.loads(body)


def gpu(port: int, uuid: str) -> dict:
    return next(g for g in api(port, "/api/v1/gpus") if g["uuid"] == uuid)


def submit_job(port: int) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/jobs",
        method="POST",
        data=json.dumps({"name": "train", "gpus": 1}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        job = json.loads(resp.read())
    return wait_until(
        lambda: (j := api(port, f"/api/v1/jobs/{job['id']}"))["state"] == "running" and j, 10, what="job placed"
    )


def start_alertmanager(spawn, tmp: Path, agent_port: int, name: str) -> int:
    binary = require_binary("alertmanager")
    port = free_port()
    d = tmp / name
    d.mkdir()
    (d / "am.yml").write_text(f"""
route:
  receiver: agent
  group_by: [alertname, uuid]
  group_wait: 200ms
  group_interval: 500ms
  repeat_interval: 1h
receivers:
  - name: agent
    webhook_configs:
      - url: http://127.0.0.1:{agent_port}/webhook/alertmanager
        send_resolved: true
        max_alerts: 0
        http_config:
          authorization:
            credentials_file: {tmp / "webhook-token"}
""")
    spawn(
        [
            binary,
            f"--config.file={d / 'am.yml'}",
            f"--storage.path={d}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        name=name,
    )
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 20, what=f"{name} ready")
    return port


def am_post(port: int, alerts: list[dict]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v2/alerts",
        method="POST",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.mark.binaries
def test_two_alertmanagers_firing_then_resolved_act_once(spawn, tmp_path: Path):
    port = free_port()
    cfg = write_agent_config(tmp_path, port, "  throttle: {fraction: 0.8}")
    start_agent(spawn, cfg, port)
    job = submit_job(port)
    uuid = job["gpu_uuids"][0]
    am1 = start_alertmanager(spawn, tmp_path, port, "am1")
    am2 = start_alertmanager(spawn, tmp_path, port, "am2")
    starts = datetime.now(UTC) - timedelta(seconds=5)
    labels = {
        "alertname": "POWER_CRITICAL",
        "rule": "POWER_CRITICAL",
        "severity": "critical",
        "action": "preempt",
        "uuid": uuid,
        "gpu": "0",
        "instance": "n0:9786",
    }
    firing = [
        {
            "labels": labels,
            "annotations": {"summary": "power"},
            "startsAt": rfc3339(starts),
            "endsAt": rfc3339(starts + timedelta(hours=1)),
        }
    ]
    # Both Alertmanagers of the "pair" get the alert, as Prometheus sends to each.
    am_post(am1, firing)
    am_post(am2, firing)

    def preempts() -> list[dict]:
        return [a for a in api(port, "/api/v1/actions?action=preempt")["actions"] if a["status"] == "firing"]

    wait_until(lambda: preempts(), 15, what="preempt action from Alertmanager")
    wait_until(
        lambda: _metric(port, "remediation_alert_deliveries_total") >= 2, 15, what="the second Alertmanager's delivery"
    )
    assert len(preempts()) == 1 and preempts()[0]["outcome"] == "acted"
    assert job["id"] in preempts()[0]["detail"]["preempted_jobs"]
    assert gpu(port, uuid)["alerts"] == [{"rule": "POWER_CRITICAL", "severity": "critical"}]
    assert _metric(port, "alerts_active") == 1

    resolved = [{**firing[0], "endsAt": rfc3339(datetime.now(UTC))}]
    am_post(am1, resolved)
    am_post(am2, resolved)
    wait_until(lambda: _metric(port, "alerts_active") == 0, 15, what="resolved delivered")
    wait_until(lambda: gpu(port, uuid)["alerts"] == [], 10, what="alert cleared on the GPU")
    all_preempts = api(port, "/api/v1/actions?action=preempt")["actions"]
    assert [(a["status"], a["outcome"]) for a in all_preempts] == [("resolved", "recorded"), ("firing", "acted")]
    assert _metric(port, "alerts_triggered_total", 'rule="POWER_CRITICAL",severity="critical"') == 1


def _metric(port: int, name: str, labels: str = "") -> float:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    want = f"{name}{{{labels}}}" if labels else name
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return float("nan") if labels else 0.0


def test_killed_between_accepting_and_acting_acts_once_after_restart(spawn, tmp_path: Path):
    port = free_port()
    # The worker waits a minute after start, so the kill lands after the 202 and before acting.
    cfg = write_agent_config(tmp_path, port, "  worker: {start_delay_seconds: 60}")
    proc = start_agent(spawn, cfg, port, "agent-1")
    job = submit_job(port)
    uuid = job["gpu_uuids"][0]
    doc = notification(alert(uuid, rule="ECC_UNCORRECTABLE", action="quarantine"))
    url = f"http://127.0.0.1:{port}/webhook/alertmanager"
    assert post(url, doc, WEBHOOK_TOKEN)[0] == 202
    assert post(url, doc, WEBHOOK_TOKEN)[0] == 202  # a retry of the same delivery
    proc.kill9()
    assert gpu_state_in_db(tmp_path / "agent.db", uuid) is None

    cfg.write_text(cfg.read_text().replace("start_delay_seconds: 60", "start_delay_seconds: 0"))
    start_agent(spawn, cfg, port, "agent-2")
    wait_until(lambda: gpu(port, uuid)["quarantined"], 15, what="quarantine after restart")
    assert post(url, doc, WEBHOOK_TOKEN)[0] == 202  # and a delivery after the restart changes nothing
    time.sleep(0.5)
    acts = api(port, "/api/v1/actions?action=quarantine")["actions"]
    assert [(a["outcome"], a["uuid"]) for a in acts] == [("acted", uuid)]
    assert acts[0]["detail"]["preempted_jobs"] == [job["id"]]
    assert api(port, f"/api/v1/jobs/{job['id']}")["preemptions"] == 1


def gpu_state_in_db(db: Path, uuid: str):
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        n = conn.execute(
            "SELECT count(*) FROM remediation_events WHERE uuid = ? AND processed_at IS NULL", (uuid,)
        ).fetchone()[0]
        assert n == 1, "the accepted alert was not on disk when the agent died"
        return conn.execute("SELECT outcome FROM remediation_actions WHERE uuid = ?", (uuid,)).fetchone()
    finally:
        conn.close()


def test_breaker_shown_in_api_and_metrics_and_reset_by_cli(spawn, tmp_path: Path):
    import subprocess

    port = free_port()
    cfg = write_agent_config(tmp_path, port, "  budget: {max_actions_per_minute: 1}")
    cfg.write_text(cfg.read_text().replace("  budget: {max_quarantined_ratio: 0.5}\n", ""))
    start_agent(spawn, cfg, port)
    url = f"http://127.0.0.1:{port}/webhook/alertmanager"
    assert (
        post(
            url,
            notification(
                alert("GPU-n0-0", action="preempt", fingerprint="a"),
                alert("GPU-n0-1", action="preempt", fingerprint="b"),
            ),
            WEBHOOK_TOKEN,
        )[0]
        == 202
    )
    wait_until(lambda: api(port, "/api/v1/remediation/breaker")["state"] == "open", 10, what="breaker open")
    assert _metric(port, "remediation_breaker_open") == 1
    cli = [console_script("gpuwarden-agent")]
    base = ["--url", f"http://127.0.0.1:{port}"]
    operator = ["--token-file", str(tmp_path / "token")]
    listed = subprocess.run(cli + ["actions", "list"] + base + operator, capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "breaker: open" in listed.stdout
    assert "skipped_budget" in listed.stdout and "max_actions_per_minute" in listed.stdout
    for who in ([], ["--token-file", str(tmp_path / "webhook-token")]):  # nobody, Alertmanager
        denied = subprocess.run(cli + ["breaker", "reset"] + base + who, capture_output=True, text=True, timeout=30)
        assert denied.returncode == 1 and "401" in denied.stderr, who
    ok = subprocess.run(
        cli + ["breaker", "reset", "--actor", "oncall"] + base + ["--token-file", str(tmp_path / "token")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["state"] == "closed"
    assert _metric(port, "remediation_breaker_open") == 0
