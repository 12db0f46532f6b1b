"""alertmanager/alertmanager.yml: valid for amtool 0.25, routes every generated alert by the
contract, and inhibits a warning only on the GPU whose critical of the same family fires
(proven against a real Alertmanager)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwarden.rules import config, render, testgen
from tests.helpers import REPO, Proc, free_port, http_get, require_binary, wait_until

AM_DIR = REPO / "alertmanager"
AM_CONFIG = AM_DIR / "alertmanager.yml"
# Every action of the contract reaches the agent (issue 8): notify to be recorded in its audit.
AGENT_ACTIONS = {"notify", "throttle", "preempt", "quarantine"}

pytestmark = pytest.mark.binaries


def _generated_labels() -> list[dict[str, str]]:
    """alertname + the labels of every alert `gpuwarden-rules` generates."""
    cfg = config.load()
    return [{"alertname": r["alert"], **r["labels"]} for g in render.alert_groups(cfg) for r in g["rules"]]


def _expected_receivers(labels: dict[str, str]) -> list[str]:
    """DESIGN.md + issues 3 and 8: every gpuwarden alert (notify too) reaches the agent,
    critical pages on-call, warning goes to chat; the agent is matched first (continue), in
    that order."""
    out = []
    if labels["action"] in AGENT_ACTIONS:
        out.append("gpuwarden-agent")
    out.append("oncall" if labels["severity"] == "critical" else "chat")
    return out


def test_amtool_check_config_accepts_the_shipped_config() -> None:
    amtool = require_binary("amtool")
    res = subprocess.run([amtool, "check-config", str(AM_CONFIG)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 inhibit rules" in res.stdout and "3 receivers" in res.stdout


@pytest.mark.parametrize("labels", _generated_labels(), ids=lambda labels: labels["rule"])
def test_routes_for_each_rule(labels: dict[str, str]) -> None:
    amtool = require_binary("amtool")
    expected = _expected_receivers(labels)
    args = [f"{k}={v}" for k, v in {**labels, "instance": "n1:9786", "gpu": "0"}.items()]
    res = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={AM_CONFIG}",
            f"--verify.receivers={','.join(expected)}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"{labels['rule']}: expected {expected}, got {res.stdout.strip()} {res.stderr}"


def test_verify_receivers_catches_a_wrong_expectation() -> None:
    """The routing test above can fail: a critical throttle is not only on-call."""
    amtool = require_binary("amtool")
    res = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={AM_CONFIG}",
            "--verify.receivers=oncall",
            "severity=critical",
            "action=throttle",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0


@pytest.mark.parametrize(
    "labels,expected",
    [
        ({"alertname": "NodeDiskFull", "severity": "warning"}, "chat"),
        ({"alertname": "NodeDown", "severity": "critical"}, "oncall"),
        ({"alertname": "Other", "severity": "warning", "action": "reboot"}, "chat"),
    ],
)
def test_alerts_without_a_gpuwarden_action_skip_the_agent(labels: dict[str, str], expected: str) -> None:
    """The agent gets the contract's four actions, not every alert of a shared Alertmanager."""
    amtool = require_binary("amtool")
    res = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={AM_CONFIG}",
            f"--verify.receivers={expected}",
            *[f"{k}={v}" for k, v in labels.items()],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"{labels}: expected {expected}, got {res.stdout.strip()} {res.stderr}"


def test_agent_receiver_contract() -> None:
    doc = yaml.safe_load(AM_CONFIG.read_text())
    agent_route = doc["route"]["routes"][0]
    assert agent_route["receiver"] == "gpuwarden-agent" and agent_route["continue"] is True
    assert set(doc["route"]["group_by"]) >= {"alertname", "instance", "gpu"}
    (agent,) = [r for r in doc["receivers"] if r["name"] == "gpuwarden-agent"]
    (hook,) = agent["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9787/webhook/alertmanager"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"]
    assert "credentials" not in hook["http_config"]["authorization"]


def _post(url: str, body: Any) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def _am_config_for_test(tmp_path: Path) -> Path:
    """The shipped route tree and inhibit rules, with receivers pointed at a closed local port
    (never at a real agent, PagerDuty or Slack)."""
    doc = yaml.safe_load(AM_CONFIG.read_text())
    doc.pop("templates", None)
    dead = f"http://127.0.0.1:{free_port()}/"
    doc["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": dead}]} for r in doc["receivers"]]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_critical_inhibits_same_family_warning_on_same_gpu_only(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    binary = require_binary("alertmanager")
    port = free_port()
    am = spawn(
        [
            binary,
            f"--config.file={_am_config_for_test(tmp_path)}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        name="alertmanager",
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(f"{base}/-/ready")[0] == 200, timeout=20, what=f"alertmanager ready ({am.log_path})")

    labels = {a["rule"]: a for a in _generated_labels()}

    def alert(rule: str, instance: str, gpu: str) -> dict[str, Any]:
        return {
            "labels": {
                **labels[rule],
                "instance": instance,
                "gpu": gpu,
                "uuid": f"GPU-{instance}-{gpu}",
                "job": "gpuwarden-exporter",
            },
            "annotations": {"summary": rule},
        }

    posted = {
        "critical": alert("THERMAL_CRITICAL", "n1:9786", "0"),
        "same_gpu": alert("THERMAL_WARNING", "n1:9786", "0"),  # inhibited
        "other_gpu": alert("THERMAL_WARNING", "n1:9786", "1"),  # same node, other GPU
        "other_node": alert("THERMAL_WARNING", "n2:9786", "0"),  # same index, other node
        "other_family": alert("POWER_SPIKE", "n1:9786", "0"),  # same GPU, power family
    }
    assert _post(f"{base}/api/v2/alerts", list(posted.values())) == 200

    def states() -> dict[tuple[str, str, str], dict[str, Any]] | None:
        status, body = http_get(f"{base}/api/v2/alerts")
        got = (
            {(a["labels"]["rule"], a["labels"]["instance"], a["labels"]["gpu"]): a["status"] for a in json.loads(body)}
            if status == 200
            else {}
        )
        return got if len(got) == len(posted) else None

    def key(a: dict[str, Any]) -> tuple[str, str, str]:
        return a["labels"]["rule"], a["labels"]["instance"], a["labels"]["gpu"]

    got = wait_until(
        lambda: (s := states()) and s[key(posted["same_gpu"])]["inhibitedBy"] and s,
        timeout=15,
        what="the same-GPU warning to be inhibited",
    )
    assert got[key(posted["same_gpu"])]["state"] == "suppressed"
    assert got[key(posted["critical"])]["state"] == "active"
    for name in ("other_gpu", "other_node", "other_family"):
        assert got[key(posted[name])]["state"] == "active", (name, got[key(posted[name])])
        assert got[key(posted[name])]["inhibitedBy"] == []
    assert am.alive()


def _render(template: str, data: dict[str, Any], tmp_path: Path) -> str:
    """``{{ template "<template>" . }}`` over the shipped templates, with amtool's renderer."""
    amtool = require_binary("amtool")
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    res = subprocess.run(
        [
            amtool,
            "template",
            "render",
            f"--template.glob={AM_DIR / 'templates' / '*.tmpl'}",
            f'--template.text={{{{ template "{template}" . }}}}',
            f"--template.data={path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_notifications_show_the_running_job_when_the_alert_has_one(tmp_path: Path) -> None:
    """GPUThermalCritical as generated, its annotations expanded as Prometheus does: GPU 0 runs
    a job (the agent's gpu_allocation_info), GPU 1 none. Each alert's text names its own job or
    none; the title names the job only when every alert of the notification shares it."""
    cfg = config.load()
    [rule] = [
        r
        for g in render.alert_groups(cfg)
        for r in g["rules"]
        if r["alert"] == "GPUThermalCritical" and "profile" not in r["labels"]
    ]
    allocation = {"job_id": "4711", "job_name": "train-llm"}

    def alert(gpu: str, allocated: dict[str, str] | None) -> dict[str, Any]:
        labels = {"alertname": rule["alert"], "instance": "n1:9786", "gpu": gpu, "uuid": f"GPU-{gpu}", **rule["labels"]}
        notes = {k: testgen.expand(v, labels, 90.0, allocated) for k, v in rule["annotations"].items()}
        return {"status": "firing", "labels": labels, "annotations": notes, "startsAt": "2026-01-01T00:00:00Z"}

    def data(*alerts: dict[str, Any]) -> dict[str, Any]:
        common = {k: v for k, v in alerts[0]["annotations"].items() if all(a["annotations"][k] == v for a in alerts)}
        labels = {k: v for k, v in alerts[0]["labels"].items() if all(a["labels"][k] == v for a in alerts)}
        return {
            "receiver": "oncall",
            "status": "firing",
            "alerts": list(alerts),
            "groupLabels": {"alertname": rule["alert"]},
            "commonLabels": labels,
            "commonAnnotations": common,
            "externalURL": "http://alertmanager",
        }

    busy, idle = alert("0", allocation), alert("1", None)
    assert busy["annotations"][render.JOB_ANNOTATION] == "train-llm (job_id 4711)"
    assert idle["annotations"][render.JOB_ANNOTATION] == ""

    text = _render("gpuwarden.text", data(busy, idle), tmp_path)
    blocks = text.split("*THERMAL_CRITICAL*")[1:]
    assert len(blocks) == 2
    assert "GPU 0 of n1:9786" in blocks[0] and "\nRunning job: train-llm (job_id 4711)\nRunbook: " in blocks[0]
    assert "GPU 1 of n1:9786" in blocks[1] and "Running job" not in blocks[1]
    assert "\nRunbook: " in blocks[1]

    title = _render("gpuwarden.title", data(busy), tmp_path)
    assert title.strip() == "[FIRING:1] GPUThermalCritical on n1:9786 GPU 0, running train-llm (job_id 4711)"
    assert "running" not in _render("gpuwarden.title", data(busy, idle), tmp_path)
    assert "running" not in _render("gpuwarden.title", data(idle), tmp_path)
