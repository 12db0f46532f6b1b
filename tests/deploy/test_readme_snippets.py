"""The Prometheus and Alertmanager snippets of deploy/README.md and of the top-level README.md
match what is shipped (job names the rules select; the agent's route and receiver as in
alertmanager/alertmanager.yml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwarden.rules import config as rules_config
from tests.deploy.conftest import DEPLOY, REPO

READMES = [DEPLOY / "README.md", REPO / "README.md"]


def _blocks(readme: Path) -> list[dict[str, Any]]:
    text = readme.read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_prometheus_snippet_uses_the_rules_job_names(readme: Path) -> None:
    [prom] = [b for b in _blocks(readme) if isinstance(b, dict) and "scrape_configs" in b]
    jobs = [s["job_name"] for s in prom["scrape_configs"]]
    assert jobs == [rules_config.load().exporter_job, "gpuwarden-agent"]
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"][0].endswith(":9786")
    assert prom["scrape_configs"][1]["static_configs"][0]["targets"][0].endswith(":9787")
    assert prom["rule_files"][0].endswith("*.rules.yml")


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_alertmanager_snippet_is_the_shipped_agent_route(readme: Path) -> None:
    [am] = [b for b in _blocks(readme) if isinstance(b, dict) and "receivers" in b]
    shipped = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    [ship_route] = [r for r in shipped["route"]["routes"] if r["receiver"] == "gpuwarden-agent"]
    route = am["route"]["routes"][0]
    for key in ("matchers", "group_wait", "group_interval", "repeat_interval", "continue"):
        assert route[key] == ship_route[key], key
    assert route["group_by"] == ship_route.get("group_by", shipped["route"]["group_by"])
    [ship_recv] = [r for r in shipped["receivers"] if r["name"] == "gpuwarden-agent"]
    [recv] = am["receivers"]
    [hook], [ship_hook] = recv["webhook_configs"], ship_recv["webhook_configs"]
    assert hook["url"].endswith(":9787/webhook/alertmanager") and ship_hook["url"].endswith(
        ":9787/webhook/alertmanager"
    )
    assert {k: v for k, v in hook.items() if k != "url" and k != "http_config"} == {
        k: v for k, v in ship_hook.items() if k != "url" and k != "http_config"
    }
    assert hook["http_config"]["authorization"]["type"] == ship_hook["http_config"]["authorization"]["type"] == "Bearer"
