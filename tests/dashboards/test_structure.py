"""The committed dashboards' models (one per metrics source): generated, importable in Grafana
10+, laid out sanely, the same panels whichever source they read."""

from __future__ import annotations

import itertools
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest

from gpuwarden import sources
from gpuwarden.dashboards import fleet, generate, grafana, queries
from gpuwarden.dashboards.fleet import DashboardConfigError, Thresholds

DS = {"type": "prometheus", "uid": "${datasource}"}


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in model["panels"] if p["type"] != "row"]


def _by_title(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in _panels(model)}


def _fake_rules(**overrides: float) -> SimpleNamespace:
    values = {
        "THERMAL_WARNING": 80.0,
        "THERMAL_CRITICAL": 85.0,
        "POWER_SPIKE": 400.0,
        "POWER_CRITICAL": 450.0,
        "MEMORY_PRESSURE": 0.9,
        **overrides,
    }
    return SimpleNamespace(alerts={k: SimpleNamespace(threshold=v) for k, v in values.items()})


def test_committed_dashboard_is_what_generation_gives_now() -> None:
    assert set(generate.OUTPUTS) == set(sources.SOURCES)
    assert generate.main(["--check"]) == 0, (
        "a committed dashboard differs from a fresh generation: run python -m gpuwarden.dashboards.generate"
    )


def test_check_covers_the_dcgm_dashboard_too(tmp_path, monkeypatch, capsys) -> None:
    stale = tmp_path / "gpu-fleet.json"
    stale.write_text(generate.OUTPUTS["dcgm-exporter"].read_text().replace("DCGM_FI_DEV_GPU_TEMP", "X", 1))
    monkeypatch.setitem(generate.OUTPUTS, "dcgm-exporter", stale)
    assert generate.main(["--check"]) == 1
    assert f"{stale} is out of date" in capsys.readouterr().err
    assert generate.main(["--check", "--source", "gpuwarden"]) == 0


def test_generate_writes_each_source_where_its_outputs_say(tmp_path, monkeypatch) -> None:
    outputs = {s: tmp_path / s / "gpu-fleet.json" for s in sources.SOURCES}
    for source, path in outputs.items():
        monkeypatch.setitem(generate.OUTPUTS, source, path)
    assert generate.main([]) == 0
    for source, path in outputs.items():
        assert path.read_text() == generate.OUTPUTS[source].read_text()
        assert json.loads(path.read_text())["uid"] == fleet.UID[source]
        assert path.read_text() == generate.to_json(generate.dashboard(source=source))


def test_check_fails_when_the_committed_file_was_edited(tmp_path) -> None:
    edited = tmp_path / "gpu-fleet.json"
    edited.write_text(generate.DEFAULT_OUT.read_text().replace('"5s"', '"1m"', 1))
    assert generate.main(["--check", "--out", str(edited)]) == 1


def test_generation_is_deterministic() -> None:
    assert generate.to_json(generate.dashboard()) == generate.to_json(generate.dashboard())


def test_grafana_10_settings(each_committed: dict[str, Any]) -> None:
    committed = each_committed
    assert committed["schemaVersion"] >= 39
    assert committed["refresh"] == "5s"
    assert committed["uid"] in ("gpuwarden-fleet", "gpuwarden-fleet-dcgm")
    variables = {v["name"]: v for v in committed["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "gpu"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == DS
        assert v["query"]["query"].startswith("label_values(") and v["multi"] and v["includeAll"]


def test_panel_ids_are_unique(each_committed: dict[str, Any]) -> None:
    committed = each_committed
    ids = [p["id"] for p in committed["panels"]]
    assert len(ids) == len(set(ids)), ids


def test_grid_positions_inside_24_columns_and_not_overlapping(each_committed: dict[str, Any]) -> None:
    committed = each_committed
    boxes = [(p["title"], p["gridPos"]) for p in committed["panels"]]
    for title, b in boxes:
        assert b["x"] >= 0 and b["y"] >= 0 and b["w"] > 0 and b["h"] > 0, title
        assert b["x"] + b["w"] <= 24, f"{title} ends at column {b['x'] + b['w']}"
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        assert apart, f"{ta!r} {a} overlaps {tb!r} {b}"


def test_every_variable_referenced_is_declared(each_committed: dict[str, Any]) -> None:
    committed = each_committed
    declared = {v["name"] for v in committed["templating"]["list"]}
    used = queries.variables_used(json.dumps(committed))
    assert used, "the dashboard references no variable at all"
    undeclared = used - declared - set(queries.BUILTINS)
    assert not undeclared, f"referenced but not declared: {sorted(undeclared)}"
    # And the filter variables are actually used by the panels.
    panel_text = json.dumps(committed["panels"])
    assert {"datasource", "instance", "gpu"} <= queries.variables_used(panel_text)


def test_every_panel_and_target_uses_the_datasource_variable(each_committed: dict[str, Any]) -> None:
    committed = each_committed
    for p in _panels(committed):
        assert p["datasource"] == DS, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        for t in p["targets"]:
            assert t["datasource"] == DS, f"{p['title']} target {t['refId']}"
    for a in committed["annotations"]["list"]:
        if "expr" in a:
            assert a["datasource"] == DS


def test_per_gpu_queries_filter_by_instance_and_gpu(each_committed: dict[str, Any]) -> None:
    per_gpu = re.compile(r"\bgpu_\w+|instance_gpu:|DCGM_FI_")
    for q in queries.panel_queries(each_committed):
        if per_gpu.search(q.expr):
            assert 'instance=~"$instance"' in q.expr and 'gpu=~"$gpu"' in q.expr, q.where


def test_both_sources_have_the_same_panels(committed: dict[str, Any], committed_dcgm: dict[str, Any]) -> None:
    def layout(model: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(p["id"], p["type"], p["title"], json.dumps(p["gridPos"])) for p in model["panels"]]

    assert layout(committed) == layout(committed_dcgm)
    assert committed["uid"] != committed_dcgm["uid"]  # both may be provisioned side by side


# Metric names of gpuwarden-exporter's own (the dcgm dashboard must name none of them).
EXPORTER_METRIC = re.compile(r"\bgpu_(?!alert_threshold|state\b|allocation_info|failure_risk|predicted)\w+")


def test_the_dcgm_dashboard_reads_dcgm_fields_where_gpuwarden_reads_its_own(
    committed: dict[str, Any], committed_dcgm: dict[str, Any]
) -> None:
    ours = {q.where: q.expr for q in queries.all_queries(committed)}
    theirs = {q.where: q.expr for q in queries.all_queries(committed_dcgm)}
    assert ours.keys() == theirs.keys()
    translated: set[str] = set()
    for where, expr in ours.items():
        assert not EXPORTER_METRIC.search(theirs[where]), f"{where}: {theirs[where]}"
        for metric in set(EXPORTER_METRIC.findall(expr)) - {"gpu_info"}:
            fields = sources.raw("dcgm-exporter", metric).names
            assert any(f in theirs[where] for f in fields), f"{where}: {metric} -> {fields}: {theirs[where]}"
            translated.add(metric)
        if "gpu_info" in expr:  # GPUs from the series every dcgm-exporter GPU has
            assert all(f in theirs[where] for f in sources.DCGM_PRESENCE), where
        if 'job="gpuwarden-exporter"' in expr:
            assert 'job=~"(nvidia-)?dcgm-exporter"' in theirs[where], where
    assert translated == {
        "gpu_temperature_celsius",
        "gpu_power_watts",
        "gpu_power_limit_watts",
        "gpu_utilization_ratio",
        "gpu_memory_used_bytes",
        "gpu_memory_total_bytes",
        "gpu_ecc_errors_correctable_total",
        "gpu_ecc_errors_uncorrectable_total",
        "gpu_xid_errors_total",
        "gpu_throttle_active",
    }
    # Variables: the nodes and GPU indexes dcgm-exporter reports (its own lowercase labels).
    variables = {v["name"]: v["query"]["query"] for v in committed_dcgm["templating"]["list"] if v["type"] == "query"}
    assert variables["instance"].endswith(", instance)") and variables["gpu"].endswith(", gpu)")
    assert "DCGM_FI_DEV_GPU_TEMP" in variables["instance"] and 'instance=~"$instance"' in variables["gpu"]


def test_dcgm_panels_name_the_fields_they_read(committed_dcgm: dict[str, Any]) -> None:
    panels = _by_title(committed_dcgm)
    assert "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL" in panels["ECC errors"]["description"]
    assert "DCGM_FI_DEV_FB_FREE" in panels["Memory pressure"]["description"]
    assert "last XID" in panels["XID errors"]["description"]


def test_the_seeds_panels_forecasts_and_xid_are_there(committed: dict[str, Any]) -> None:
    """gpuwarden-exporter's names (the dcgm dashboard's are checked against these above)."""
    panels = _by_title(committed)
    fleet_stats = [p for p in _panels(committed) if p["type"] == "stat"]
    cluster = [p for p in fleet_stats if p["targets"][0]["expr"].startswith("sum(cluster_gpus")]
    jobs = [p for p in fleet_stats if "jobs_" in p["targets"][0]["expr"]]
    assert len(cluster) == 4 and len(jobs) == 3
    assert panels["GPU state distribution"]["type"] == "piechart"
    assert "gpu_state" in panels["GPU state distribution"]["targets"][0]["expr"]
    for title, metric in [
        ("Temperature", "gpu_temperature_celsius"),
        ("Power", "gpu_power_watts"),
        ("Utilization", "gpu_utilization_ratio"),
        ("Memory pressure", "gpu_memory_used_bytes"),
        ("Job execution time", "job_duration_seconds_bucket"),
        ("Active alerts", "ALERTS"),
        ("ECC errors", "gpu_ecc_errors_"),
        ("XID errors", "gpu_xid_errors_total"),
        ("Time to threshold", "gpu_predicted_seconds_to_threshold"),
        ("Failure risk", "gpu_failure_risk_score"),
        ("Share of its own critical threshold", "instance_gpu:gpu_alert_threshold:effective"),
    ]:
        exprs = " ".join(t["expr"] for t in panels[title]["targets"])
        assert metric in exprs, f"{title} does not query {metric}"
        assert panels[title]["type"] in ("timeseries", "bargauge", "table")


@pytest.mark.parametrize(
    "title,unit",
    [
        ("Temperature", "celsius"),
        ("Power", "watt"),
        ("Utilization", "percentunit"),
        ("Memory pressure", "percentunit"),
        ("Memory used", "bytes"),
        ("Failure risk", "percentunit"),
        ("Time to threshold", "s"),
        ("Job execution time", "s"),
        ("Temperature in 15 minutes", "celsius"),
        ("Share of its own critical threshold", "percentunit"),
    ],
)
def test_units(each_committed: dict[str, Any], title: str, unit: str) -> None:
    assert _by_title(each_committed)[title]["fieldConfig"]["defaults"]["unit"] == unit


OWN_LINES = {
    "Temperature": ("THERMAL_WARNING", "THERMAL_CRITICAL"),
    "Temperature in 15 minutes": ("THERMAL_WARNING", "THERMAL_CRITICAL"),
    "Power": ("POWER_SPIKE", "POWER_CRITICAL"),
    "Memory pressure": ("MEMORY_PRESSURE",),
}


@pytest.mark.parametrize("title", OWN_LINES)
def test_threshold_lines_are_each_gpus_recorded_threshold(each_committed: dict[str, Any], title: str) -> None:
    from gpuwarden.rules.promql import THRESHOLD_RECORD

    panel = _by_title(each_committed)[title]
    # No fixed line: one profile's number drawn across every GPU is wrong for the others.
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "off"
    [target] = [t for t in panel["targets"] if THRESHOLD_RECORD in t["expr"]]
    rules = OWN_LINES[title]
    assert f'rule=~"{"|".join(rules)}"' in target["expr"]
    assert 'instance=~"$instance"' in target["expr"] and 'gpu=~"$gpu"' in target["expr"]
    # One line per GPU and rule (dcgm-exporter's records repeat per MIG instance).
    assert target["expr"].startswith("max by (instance, gpu, rule) (")
    assert target["legendFormat"].endswith("{{rule}}")
    for rule in rules:  # the rule's series dashed, in its severity's colour
        [override] = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == f".* {rule}$"]
        props = {p["id"]: p["value"] for p in override["properties"]}
        assert props["custom.lineStyle"]["fill"] == "dash"
        assert props["color"]["fixedColor"] == ("red" if "CRITICAL" in rule else "orange")
        assert re.fullmatch(override["matcher"]["options"], f"10.0.0.5:9835 GPU 3 {rule}")


def test_descriptions_quote_the_default_profiles_thresholds_from_the_rules() -> None:
    model = fleet.build(Thresholds.from_rules(_fake_rules(THERMAL_WARNING=75, POWER_CRITICAL=500)))
    panels = _by_title(model)
    assert ">= 75 °C" in panels["Temperature"]["description"]
    assert ">= 500 W" in panels["Power"]["description"]
    assert ">= 90%" in panels["Memory pressure"]["description"]


def test_predictor_panels_follow_the_instance_variable_and_keep_nodes_apart(each_committed: dict[str, Any]) -> None:
    panels = _by_title(each_committed)
    for title, metric in (
        ("Time to threshold", "gpu_predicted_seconds_to_threshold"),
        ("Failure risk", "gpu_failure_risk_score"),
    ):
        [t] = panels[title]["targets"]
        assert f'{metric}{{instance=~"$instance", gpu=~"$gpu"}}' in t["expr"], title
        assert re.search(r"by \(instance, gpu\b", t["expr"]), title  # two nodes' GPU 0: two bars
        assert t["legendFormat"].startswith("{{instance}} GPU {{gpu}}"), title


@pytest.mark.parametrize(
    "title,metric", [("GPU state distribution", "gpu_state"), ("GPU allocations", "gpu_allocation_info")]
)
def test_agent_panels_match_by_instance_or_by_uuid(
    committed: dict[str, Any], committed_dcgm: dict[str, Any], title: str, metric: str
) -> None:
    for model, source in ((committed, "gpuwarden"), (committed_dcgm, "dcgm-exporter")):
        [t] = _by_title(model)[title]["targets"]
        assert f'{metric}{{instance=~"$instance", gpu=~"$gpu"}} or {metric} * on (uuid)' in t["expr"]
        matchers = f'{sources.default_job_selector(source)}, instance=~"$instance", gpu=~"$gpu"'
        assert f"group by (uuid) ({sources.signal(source, 'identity', matchers)})" in t["expr"]


def test_a_missing_rule_names_itself() -> None:
    cfg = _fake_rules()
    del cfg.alerts["POWER_SPIKE"]
    with pytest.raises(DashboardConfigError, match="POWER_SPIKE.*power warning"):
        Thresholds.from_rules(cfg, "custom.yaml")


def test_provisioning_files_point_at_the_dashboard_and_a_prometheus() -> None:
    import yaml

    root = generate.HERE / "provisioning"
    providers = yaml.safe_load((root / "dashboards" / "gpuwarden.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load((root / "datasources" / "prometheus.yaml").read_text())
    (ds,) = sources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http")


def test_grid_wraps_instead_of_overflowing() -> None:
    grid = grafana.Grid()
    a, b, c = grid.place(12, 8), grid.place(12, 4), grid.place(6, 4)
    assert (a["x"], a["y"], b["x"], b["y"]) == (0, 0, 12, 0)
    assert (c["x"], c["y"]) == (0, 8)  # below the taller of the two
    with pytest.raises(ValueError, match="between 1 and 24"):
        grid.place(25, 1)


def test_substitute_and_variables_used() -> None:
    expr = 'rate(x{instance=~"$instance", gpu=~"${gpu}"}[$__rate_interval])'
    assert queries.variables_used(expr) == {"instance", "gpu", "__rate_interval"}
    assert (
        queries.substitute(expr, {"instance": ".*", "gpu": "0", "__rate_interval": "1m"})
        == 'rate(x{instance=~".*", gpu=~"0"}[1m])'
    )
    with pytest.raises(KeyError, match=r"\$gpu"):
        queries.substitute(expr, {"instance": ".*", "__rate_interval": "1m"})
