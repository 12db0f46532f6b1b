"""rules.config: the shipped thresholds match DESIGN.md's alert contract; bad files name file,
line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwarden.rules import config

SHIPPED = config.DEFAULT_PATH.read_text(encoding="utf-8")

# DESIGN.md, "Alert contract": rule, op, threshold, for (s), severity, action.
CONTRACT = {
    "THERMAL_WARNING": (">=", 80, 60, "warning", "notify"),
    "THERMAL_CRITICAL": (">", 85, 30, "critical", "throttle"),
    "POWER_SPIKE": (">", 400, 45, "warning", "notify"),
    "POWER_CRITICAL": (">=", 450, 20, "critical", "preempt"),
    "ECC_ERRORS_SPIKE": (">=", 10, 0, "warning", "notify"),
    "ECC_UNCORRECTABLE": (">=", 1, 0, "critical", "quarantine"),
    "THROTTLING": (">", 0, 30, "warning", "notify"),
    "MEMORY_PRESSURE": (">=", 0.90, 60, "warning", "notify"),
}


def test_shipped_file_holds_the_seed_contract() -> None:
    cfg = config.load()
    assert set(CONTRACT) <= set(cfg.alerts)
    for rule_id, (op, threshold, for_s, severity, action) in CONTRACT.items():
        a = cfg.alerts[rule_id]
        assert (a.rule, a.op, a.threshold, a.for_seconds, a.severity, a.action) == (
            rule_id,
            op,
            threshold,
            for_s,
            severity,
            action,
        )
    assert cfg.alerts["ECC_ERRORS_SPIKE"].window_seconds == 300
    assert cfg.alerts["MEMORY_PRESSURE"].metric == "gpu_memory_used_bytes"
    assert cfg.alerts["MEMORY_PRESSURE"].denominator == "gpu_memory_total_bytes"
    assert set(cfg.alerts["THROTTLING"].values) == {
        "sw_power_cap",
        "hw_slowdown",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
    }


def test_boundaries_are_exact() -> None:
    a = config.load().alerts
    assert a["THERMAL_WARNING"].breached(80) and not a["THERMAL_WARNING"].breached(79.99)
    assert not a["THERMAL_CRITICAL"].breached(85) and a["THERMAL_CRITICAL"].breached(85.01)
    assert not a["POWER_SPIKE"].breached(400) and a["POWER_SPIKE"].breached(400.01)
    assert a["POWER_CRITICAL"].breached(450) and not a["POWER_CRITICAL"].breached(449.99)
    assert a["MEMORY_PRESSURE"].breached(0.90)


def test_file_starts_with_schema_reference() -> None:
    assert SHIPPED.splitlines()[0] == "# yaml-language-server: $schema=./schema.json"


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    assert old in SHIPPED, old
    p = tmp_path / "thresholds.yaml"
    p.write_text(SHIPPED.replace(old, new, 1), encoding="utf-8")
    return p


def _line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


@pytest.mark.parametrize(
    "old,new,field,needle,words",
    [
        ("threshold: 80 ", "threshold: hot", "alerts.THERMAL_WARNING.threshold", "threshold: hot", "not of type"),
        (
            "    unit: W\n    for: 45s",
            "    unit: W\n    colour: red\n    for: 45s",
            "alerts.POWER_SPIKE.colour",
            "colour: red",
            "unknown field",
        ),
        (
            '    op: ">="\n    threshold: 450',
            '    op: ">="',
            "alerts.POWER_CRITICAL.threshold",
            "POWER_CRITICAL:",
            "missing",
        ),
        (
            "severity: critical\n    action: throttle",
            "severity: urgent\n    action: throttle",
            "alerts.THERMAL_CRITICAL.severity",
            "severity: urgent",
            "urgent",
        ),
        ("for: 45s", "for: 45 seconds", "alerts.POWER_SPIKE.for", "for: 45 seconds", "does not match"),
        ("guard: 75 ", "guard: 86 ", "forecasts.THERMAL_FORECAST.guard", "guard: 86", "safe side"),
        (
            "target: MEMORY_PRESSURE",
            "target: ECC_ERRORS_SPIKE",
            "forecasts.MEMORY_FORECAST.target",
            "target: ECC_ERRORS_SPIKE",
            "applies to gauges",
        ),
    ],
)
def test_bad_file_names_file_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, needle: str, words: str
) -> None:
    p = _broken(tmp_path, old, new)
    with pytest.raises(config.ConfigError) as info:
        config.load(p)
    err = info.value
    assert err.file == str(p)
    assert err.field == field
    assert err.line == _line_of(p, needle)
    assert f"{p}:{err.line}: {field}: " in str(err)
    assert words in str(err)


def test_duplicate_keys_and_bad_yaml_are_reported(tmp_path: Path) -> None:
    p = _broken(tmp_path, "    for: 60s\n", "    for: 60s\n    for: 90s\n")
    with pytest.raises(config.ConfigError, match="duplicate key") as info:
        config.load(p)
    assert info.value.field == "alerts.THERMAL_WARNING.for"
    p.write_text("alerts: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML") as info:
        config.load(p)
    assert info.value.line == 2


def test_parse_duration() -> None:
    assert config.parse_duration("0s") == 0
    assert config.parse_duration("1h30m") == 5400
    with pytest.raises(ValueError):
        config.parse_duration("5 minutes")
