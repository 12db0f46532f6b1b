"""Per-GPU-model profiles in rules/thresholds.yaml: shipped models, first-match judging, and
profile mistakes named by file, line and field."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gpuwarden.rules import config, promql, render
from tests.helpers import console_script, require_binary

SHIPPED = config.DEFAULT_PATH.read_text(encoding="utf-8")


def test_shipped_profiles_cover_the_common_data_centre_gpus_with_sources() -> None:
    cfg = config.load()
    assert {"A100", "H100", "H200", "L40S", "L4"} <= set(cfg.profiles)
    for profile in cfg.profiles.values():
        assert profile.examples, profile.name
        for rule in profile.alerts.values():
            assert rule.source, f"{profile.name}.{rule.rule}: every figure needs its source"
            # Only thresholds and `for` change: routing labels stay the default's.
            base = cfg.alerts[rule.rule]
            assert (rule.severity, rule.action, rule.family, rule.op, rule.alert) == (
                base.severity,
                base.action,
                base.family,
                base.op,
                base.alert,
            )


@pytest.mark.parametrize(
    "name,profile",
    [
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 NVL", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("Tesla V100-SXM2-32GB", None),
        (None, None),
    ],
)
def test_each_gpu_model_is_judged_by_one_profile(name: str | None, profile: str | None) -> None:
    cfg = config.load()
    found = cfg.profile_for(name)
    assert (found.name if found else None) == profile
    rule = cfg.rule_for("POWER_CRITICAL", name)
    assert rule.profile == profile
    if profile is None:
        assert rule is cfg.alerts["POWER_CRITICAL"]  # the default: the seed's 450 W
    # Rules no profile overrides are the default's for everyone.
    assert cfg.rule_for("ECC_UNCORRECTABLE", name) is cfg.alerts["ECC_UNCORRECTABLE"]


def test_alerts_keep_the_default_values_for_the_api() -> None:
    """The predictor and dashboards read `.alerts`: the default profile, unchanged."""
    cfg = config.load()
    assert cfg.alerts["POWER_CRITICAL"].threshold == 450 and cfg.alerts["POWER_CRITICAL"].profile is None
    h100 = cfg.profiles["H100"].alerts["POWER_CRITICAL"]
    assert h100.relative == config.Relative("power_limit", 1.125, 0.0)
    assert h100.relative.threshold(700) == 787.5 and h100.threshold == 787.5


def test_default_excludes_exactly_the_overriding_profiles_in_first_match_order(tmp_path: Path) -> None:
    """A GPU matching a non-overriding profile first stays with the default for that rule."""
    text = (
        SHIPPED
        + """
  AnyNvidia:
    match: "NVIDIA .*"
    examples: ["NVIDIA RTX 6000 Ada Generation"]
    alerts:
      MEMORY_PRESSURE: {threshold: 0.95, source: "test"}
"""
    )
    path = tmp_path / "thresholds.yaml"
    path.write_text(text)
    cfg = config.load(path)
    assert cfg.profile_for("NVIDIA H100 PCIe").name == "H100"  # earlier profile wins
    records = {(r["record"], *r["labels"].values()): r["expr"] for r in render.threshold_records(cfg)}
    anyn = records[("instance_gpu:gpu_profile:info", "AnyNvidia")]
    assert 'name=~"NVIDIA .*", name!~"NVIDIA A100.*|NVIDIA H100.*|NVIDIA H200.*|NVIDIA L40S.*|NVIDIA L4"' in anyn
    # Only AnyNvidia has a number for MEMORY_PRESSURE: an H100 (profile H100) matches no
    # constant and keeps the default's 90 %.
    numbers = records[("profile:gpu_alert_threshold:configured", "MEMORY_PRESSURE")]
    assert numbers == 'label_replace(vector(0.95), "profile", "AnyNvidia", "", "")'
    effective = records[("instance_gpu:gpu_alert_threshold:effective", "MEMORY_PRESSURE")]
    assert effective.endswith(' or on (instance, gpu) 0 * gpu_memory_used_bytes{job="gpuwarden-exporter"} + 0.9')


def test_a_regex_with_backslashes_survives_into_promql() -> None:
    assert promql.promql_string(r'NVIDIA A100\b.*"x') == r'"NVIDIA A100\\b.*\"x"'


@pytest.mark.parametrize(
    "block,field,message",
    [
        (
            '  X:\n    match: "NVIDIA (X"\n    alerts: {POWER_SPIKE: {threshold: 1}}\n',
            "profiles.X.match",
            "not a regular expression",
        ),
        (
            '  X:\n    match: "X.*"\n    alerts: {NO_SUCH_RULE: {threshold: 1}}\n',
            "profiles.X.alerts.NO_SUCH_RULE",
            "no alert 'NO_SUCH_RULE'",
        ),
        (
            '  X:\n    match: "X.*"\n    alerts: {MEMORY_PRESSURE: {relative: {to: power_limit}}}\n',
            "profiles.X.alerts.MEMORY_PRESSURE.relative",
            "only a level",
        ),
        (
            '  X:\n    match: "X.*"\n    alerts: {POWER_SPIKE: {relative: {to: temperature_slowdown}}}\n',
            "profiles.X.alerts.POWER_SPIKE.relative.to",
            "pick a limit in the metric's unit",
        ),
        (
            '  X:\n    match: "NVIDIA H.*"\n    examples: ["NVIDIA H100 PCIe"]\n    alerts: {POWER_SPIKE: {threshold: 1}}\n',
            "profiles.X.examples[0]",
            "earlier profile 'H100'",
        ),
        (
            '  X:\n    match: "X.*"\n    examples: ["Y"]\n    alerts: {POWER_SPIKE: {threshold: 1}}\n',
            "profiles.X.examples[0]",
            "does not fully match",
        ),
        (
            '  X:\n    match: "X.*"\n    alerts: {POWER_SPIKE: {threshold: 1, colour: red}}\n',
            "profiles.X.alerts.POWER_SPIKE.colour",
            "unknown field",
        ),
        (
            '  X:\n    match: "X.*"\n    alerts: {POWER_SPIKE: {relative: {to: power_limit, factor: 0}}}\n',
            "profiles.X.alerts.POWER_SPIKE.relative.factor",
            "",
        ),
    ],
)
def test_profile_mistakes_name_file_line_and_field(tmp_path: Path, block: str, field: str, message: str) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text(SHIPPED + block)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert re.search(rf"{re.escape(str(path))}:\d+: {re.escape(field)}: .*{re.escape(message)}", str(err.value)), str(
        err.value
    )


@pytest.mark.binaries
def test_a_profile_that_changes_for_gets_its_own_alert_rule(tmp_path: Path) -> None:
    """A100 holds THERMAL_CRITICAL 10s instead of 30s; AnyNvidia judges MEMORY_PRESSURE at 95 %
    for 20s and THROTTLING (a set of reasons: one rule per version) for 10s. Each such version
    is its own rule labelled with its profile (promtool's duplicate lint passes), the rest share
    the default's rule, and the generated tests of every version pass on the real promtool."""
    promtool = require_binary("promtool")
    text = SHIPPED.replace(
        '        relative: {to: temperature_slowdown, offset: -3}\n        source: "NVML nvmlDeviceGetTemperatureThreshold(SLOWDOWN) of each GPU; fallback 85 °C (default)"\n\n  H100:',
        '        relative: {to: temperature_slowdown, offset: -3}\n        for: 10s\n        source: "NVML nvmlDeviceGetTemperatureThreshold(SLOWDOWN) of each GPU; fallback 85 °C (default)"\n\n  H100:',
        1,
    )
    assert "for: 10s" in text
    text += """
  AnyNvidia:
    match: "NVIDIA .*"
    examples: ["NVIDIA RTX 6000 Ada Generation"]
    alerts:
      MEMORY_PRESSURE: {threshold: 0.95, for: 20s, source: "test"}
      THROTTLING: {for: 10s, source: "test"}
"""
    path = tmp_path / "thresholds.yaml"
    path.write_text(text)
    cfg = config.load(path)
    rules = [(r["alert"], r["for"], r["labels"].get("profile")) for r in render.threshold_alert_rules(cfg)]
    assert ("GPUThermalCritical", "30s", None) in rules and ("GPUThermalCritical", "10s", "A100") in rules
    assert ("GPUMemoryPressure", "1m", None) in rules and ("GPUMemoryPressure", "20s", "AnyNvidia") in rules
    assert ("GPUThrottling", "10s", "AnyNvidia") in rules
    out = tmp_path / "generated"
    res = subprocess.run(
        [console_script("gpuwarden-rules"), "generate", "--config", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    files = [str(p) for p in sorted(out.glob("*.rules.yml"))]
    lint = subprocess.run(
        [promtool, "check", "rules", "--lint-fatal", *files], capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    tests = subprocess.run(
        [promtool, "test", "rules", str(out / "gpuwarden-alerts.test.yml")], capture_output=True, text=True, timeout=120
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
