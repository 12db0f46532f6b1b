"""Every scrape config we ship for the agent keeps the labels it exports (``honor_labels``): its
per-GPU series (gpu_state, gpu_allocation_info, the predictor's) name their GPU's node in
``instance``, which Prometheus would otherwise overwrite with the agent's own address.
(tests/dashboards/test_live.py checks the effect against a real Prometheus.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gpuwarden.stack.configs import Ports, Settings, prometheus_config
from tests.deploy.conftest import DEPLOY, REPO, k8s_docs


def test_gpuwarden_up_scrapes_the_agent_with_honor_labels() -> None:
    cfg = prometheus_config(Ports(1, 2, 3, 4, 5, 6), Settings())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["gpuwarden-agent"]["honor_labels"] is True
    # The exporter's instance is Prometheus' own (the target), never one the exporter invents.
    assert not jobs["gpuwarden-exporter"].get("honor_labels", False)


@pytest.mark.parametrize("readme", [DEPLOY / "README.md", REPO / "README.md"], ids=lambda p: str(p.relative_to(REPO)))
def test_the_readme_snippets_scrape_the_agent_with_honor_labels(readme: Path) -> None:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme.read_text(), flags=re.S)]
    jobs = [j for b in blocks if isinstance(b, dict) for j in b.get("scrape_configs", [])]
    agent = [j for j in jobs if j["job_name"] == "gpuwarden-agent"]
    assert agent and all(j.get("honor_labels") is True for j in agent)


def test_the_agents_service_monitor_honors_its_labels() -> None:
    [monitor] = [d for d in k8s_docs("agent.yaml") if d["kind"] == "ServiceMonitor"]
    assert [e.get("honorLabels") for e in monitor["spec"]["endpoints"]] == [True]
