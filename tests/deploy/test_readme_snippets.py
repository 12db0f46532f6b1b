"""deploy/README.md's Prometheus and Alertmanager snippets match what is shipped (job names the
rules select; the agent's route and receiver as in alertmanager/alertmanager.yml)."""

from __future__ import annotations

import re
from typing import Any

import yaml

import rules.config
from tests.deploy.conftest import DEPLOY, REPO


def _blocks() -> list[dict[str, Any]]:
    text = (DEPLOY / "README.md").read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]


def test_prometheus_snippet_uses_the_rules_job_names() -> None:
    [prom] = [b for b in _blocks() if "scrape_configs" in b]
    jobs = [s["job_name"] for s in prom["scrape_configs"]]
    assert jobs == [rules.config.load().exporter_job, "gpuwarden-agent"]
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"][0].endswith(":9786")
    assert prom["scrape_configs"][1]["static_configs"][0]["targets"][0].endswith(":9787")
    assert prom["rule_files"][0].endswith("*.rules.yml")


def test_alertmanager_snippet_is_the_shipped_agent_route() -> None:
    [am] = [b for b in _blocks() if "receivers" in b]
    shipped = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    [ship_route] = [r for r in shipped["route"]["routes"] if r["receiver"] == "gpuwarden-agent"]
    route = am["route"]["routes"][0]
    for key in ("matchers", "group_wait", "group_interval", "repeat_interval", "continue"):
        assert route[key] == ship_route[key], key
    assert route["group_by"] == ship_route.get("group_by", shipped["route"]["group_by"])
    [ship_recv] = [r for r in shipped["receivers"] if r["name"] == "gpuwarden-agent"]
    [recv] = am["receivers"]
    [hook], [ship_hook] = recv["webhook_configs"], ship_recv["webhook_configs"]
    assert hook["url"].endswith(":9787/webhook/alertmanager") and ship_hook["url"].endswith(":9787/webhook/alertmanager")
    assert {k: v for k, v in hook.items() if k != "url" and k != "http_config"} == \
        {k: v for k, v in ship_hook.items() if k != "url" and k != "http_config"}
    assert hook["http_config"]["authorization"]["type"] == ship_hook["http_config"]["authorization"]["type"] == "Bearer"
