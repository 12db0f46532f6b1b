"""The files ``gpuwarden up`` writes under its working directory.

Prometheus gets the generated rules and a scrape job for the exporter and one for the agent
(``honor_labels: true``: the agent's per-GPU series name their GPU's node in ``instance``);
Alertmanager gets the shipped routing tree with the agent's URL and token wired in, and its
on-call and chat receivers pointed at the stack's local notification sink (no PagerDuty or Slack
secrets on a demo host); the agent gets a config that discovers GPUs from Prometheus and acts
through the simulator's control endpoint or NVML.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gpuwarden import alertmanager, rules

# Package data (importlib.resources): found the same way in a checkout and in an installed wheel.
RULES_DIR = Path(str(resources.files(rules).joinpath("generated")))
ALERTMANAGER_DIR = Path(str(resources.files(alertmanager)))


@dataclass(frozen=True)
class Ports:
    exporter: int
    agent: int
    prometheus: int
    alertmanager: int
    sim_control: int
    sink: int


@dataclass(frozen=True)
class Settings:
    """What ``gpuwarden up`` was asked for; intervals are Prometheus duration strings."""

    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    simulated: bool = True
    throttle_hold_down_seconds: float = 30.0
    # None: lower the limit to 70 % of the current one. A wattage (the demo's) makes the cut
    # deep enough that a GPU with failed cooling really drops below the critical temperature.
    throttle_watts: float | None = None


def write_token(workdir: Path, role: str) -> Path:
    """A random token for ``role`` (``operator``: the agent's API; ``webhook``: Alertmanager's),
    created once, readable by its owner only."""
    path = workdir / f"agent-{role}.token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def prometheus_config(ports: Ports, settings: Settings) -> dict[str, Any]:
    rule_files = sorted(str(p) for p in RULES_DIR.glob("*.rules.yml"))
    if not rule_files:
        raise FileNotFoundError(f"no generated rules in {RULES_DIR}: run 'gpuwarden-rules generate'")
    return {
        "global": {"scrape_interval": settings.scrape_interval, "evaluation_interval": settings.evaluation_interval},
        "rule_files": rule_files,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports.alertmanager}"]}]}]},
        "scrape_configs": [
            {"job_name": "gpuwarden-exporter", "static_configs": [{"targets": [f"127.0.0.1:{ports.exporter}"]}]},
            # honor_labels: the agent's per-GPU series (gpu_state, gpu_allocation_info, the
            # predictor's) carry the GPU's own instance, which must not become the agent's.
            {
                "job_name": "gpuwarden-agent",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{ports.agent}"]}],
            },
        ],
    }


def alertmanager_config(ports: Ports, token_file: Path, shipped: Path | None = None) -> dict[str, Any]:
    """The shipped routing tree, unchanged but for where its receivers deliver."""
    shipped = shipped or ALERTMANAGER_DIR / "alertmanager.yml"
    doc: dict[str, Any] = yaml.safe_load(shipped.read_text())
    doc["templates"] = [str(shipped.parent / t) for t in doc.get("templates", [])]
    for receiver in doc["receivers"]:
        if receiver["name"] == "gpuwarden-agent":
            for hook in receiver["webhook_configs"]:
                hook["url"] = f"http://127.0.0.1:{ports.agent}/webhook/alertmanager"
                hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        else:
            # Pages and chat messages land in the stack's sink, which the live view shows.
            name = receiver["name"]
            receiver.clear()
            receiver.update(
                {
                    "name": name,
                    "webhook_configs": [{"url": f"http://127.0.0.1:{ports.sink}/{name}", "send_resolved": True}],
                }
            )
    return doc


def agent_config(
    workdir: Path, ports: Ports, token_file: Path, webhook_token_file: Path, settings: Settings
) -> dict[str, Any]:
    agent_dir = workdir / "agent"
    actuator = (
        {"kind": "sim", "sim_url": f"http://127.0.0.1:{ports.sim_control}"} if settings.simulated else {"kind": "nvml"}
    )
    return {
        "web": {"listen_address": f"127.0.0.1:{ports.agent}", "token_file": str(token_file)},
        "database": {"path": str(agent_dir / "agent.db")},
        "inventory": {"prometheus": {"url": f"http://127.0.0.1:{ports.prometheus}", "refresh_seconds": 5}},
        "executor": {"kind": "local", "log_dir": str(agent_dir / "job-logs")},
        "remediation": {
            "auth": {"bearer_token_file": str(webhook_token_file)},
            "actuator": actuator,
            "throttle": {
                **({"watts": settings.throttle_watts} if settings.throttle_watts else {"fraction": 0.7}),
                "hold_down_seconds": settings.throttle_hold_down_seconds,
            },
        },
        # Risk scores for placement, the dashboard and `gpuwarden-agent predict`. Migrating ahead
        # of an alert stays off here so that what the demo shows is the alert-driven loop; turn
        # it on with `migrate: true` in a real deployment's agent config.
        "predictor": {"prometheus_url": f"http://127.0.0.1:{ports.prometheus}", "period_seconds": 15, "migrate": False},
    }


def write_all(workdir: Path, ports: Ports, settings: Settings) -> dict[str, Path]:
    """Writes every config; returns their paths by component."""
    for sub in ("prometheus/data", "alertmanager/data", "agent", "logs"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    # Two credentials, two roles: Alertmanager's can only post alerts; the operator's (the demo,
    # the live view, `gpuwarden-agent --token-file`) runs jobs and releases GPUs.
    token, webhook_token = write_token(workdir, "operator"), write_token(workdir, "webhook")
    paths = {
        "prometheus": workdir / "prometheus" / "prometheus.yml",
        "alertmanager": workdir / "alertmanager" / "alertmanager.yml",
        "agent": workdir / "agent" / "agent.yaml",
        "token": token,
        "webhook_token": webhook_token,
    }
    header = "# Written by 'gpuwarden up'; rewritten at every start.\n"
    paths["prometheus"].write_text(header + yaml.safe_dump(prometheus_config(ports, settings), sort_keys=False))
    paths["alertmanager"].write_text(
        header + yaml.safe_dump(alertmanager_config(ports, webhook_token), sort_keys=False)
    )
    paths["agent"].write_text(
        header + yaml.safe_dump(agent_config(workdir, ports, token, webhook_token, settings), sort_keys=False)
    )
    return paths
