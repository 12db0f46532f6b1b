"""What the generated rules mean on a sharded Prometheus (deploy/scale/README.md's review):
GPUMetricsAbsent speaks of this Prometheus, and GPUFatalXID does not take a fatal XID series
that arrives together with its target (a reshard) for a new error. The behaviour itself is
proven by the generated promtool tests (the reshard and exporter restart cases), run by
test_generate.py and test_dcgm_source.py."""

from __future__ import annotations

import pytest
import yaml

from gpuwarden.rules import config, render
from tests.helpers import REPO

GENERATED = {"gpuwarden": REPO / "rules" / "generated", "dcgm-exporter": REPO / "rules" / "generated" / "dcgm-exporter"}


def _alert(source: str, name: str) -> dict[str, object]:
    cfg = config.load().with_source(source)
    [rule] = [r for g in render.alert_groups(cfg) for r in g["rules"] if r["alert"] == name]
    return rule


@pytest.mark.parametrize("source", sorted(GENERATED))
def test_metrics_absent_speaks_of_this_prometheus_and_its_shard(source: str) -> None:
    description = str(_alert(source, "GPUMetricsAbsent")["annotations"]["description"])  # type: ignore[index]
    assert " on this Prometheus " in description
    assert "no exporter it scrapes is up, or they report no GPU" in description
    assert "a shard holding no node fires this too" in description


@pytest.mark.parametrize("source", sorted(GENERATED))
def test_fatal_xid_first_appearance_needs_a_scrape_without_it(source: str) -> None:
    """A series new to this Prometheus fires only when a successful scrape of its target within
    the window did not have it (its target's sum_over_time(up) outnumbers its samples)."""
    cfg = config.load().with_source(source)
    expr = str(_alert(source, "GPUFatalXID")["expr"])
    assert f"< on (job, instance) group_left () sum_over_time(up{{{cfg.job_selector}}}[10m])" in expr
    assert "unless on (instance) up" not in expr


@pytest.mark.parametrize("source", sorted(GENERATED))
def test_generated_tests_hold_a_reshard_case(source: str) -> None:
    """A test group where the target's up and a fatal XID series both start late, and the alert
    is checked empty at that moment."""
    doc = yaml.safe_load((GENERATED[source] / "gpuwarden-alerts.test.yml").read_text())
    reshard = [
        t
        for t in doc["tests"]
        if any(s["series"].startswith("up{") and s["values"].startswith("_") for s in t["input_series"])
    ]
    assert reshard, "no reshard case in the generated tests"
    assert any(c["alertname"] == "GPUFatalXID" and c["exp_alerts"] == [] for t in reshard for c in t["alert_rule_test"])
