"""The rules over dcgm-exporter's metrics: the same alerts as gpuwarden-exporter's (names,
labels, durations, profiles, forecasts), generated under rules/generated/dcgm-exporter/ with
promtool tests that pass and follow an edited threshold, and a counters CSV naming what each
rule needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gpuwarden.rules import cli, config, generate, needs, promql, render
from tests.helpers import REPO, require_binary

DCGM = REPO / "rules" / "generated" / "dcgm-exporter"


def _dcgm() -> config.RulesConfig:
    return config.load().with_source("dcgm-exporter")


def test_committed_dcgm_output_is_up_to_date() -> None:
    assert cli.main(["check", "--source", "dcgm-exporter"]) == 0
    assert generate.default_out(_dcgm()) == DCGM


def test_same_alerts_as_gpuwarden_over_dcgm_names() -> None:
    """Every alert of the gpuwarden version exists for dcgm-exporter with the same labels and
    `for`, except the two whose series dcgm-exporter does not have (NVML health, per-GPU up)."""

    def alerts(cfg: config.RulesConfig) -> dict[tuple[str, str | None], tuple[str, dict[str, str]]]:
        out = {}
        for group in render.alert_groups(cfg):
            for r in group["rules"]:
                out[(r["alert"], r["labels"].get("profile"))] = (r["for"], r["labels"])
        return out

    ours, theirs = alerts(config.load()), alerts(_dcgm())
    missing = {name for name, _ in set(ours) - set(theirs)}
    assert missing == {"GPUExporterNVMLDown", "GPULost"}
    for key, value in theirs.items():
        assert ours[key] == value, key
    text = (DCGM / render.ALERTS_FILE).read_text()
    for name in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_XID_ERRORS", "modelName=~"):
        assert name in text
    assert "gpu_temperature_celsius{" not in text and "gpu_info" not in text


def test_every_dcgm_alert_copies_uuid_and_keeps_gpu_labels() -> None:
    cfg = _dcgm()
    for group in render.alert_groups(cfg):
        for r in group["rules"]:
            if r["alert"] in ("GPUExporterDown", "GPUMetricsAbsent"):
                continue
            assert r["expr"].startswith("label_replace(") and r["expr"].endswith('"uuid", "$1", "UUID", "(.+)")'), r
            assert " by (" not in r["expr"].replace("max by (instance, gpu, profile)", "").replace(
                "max by (instance, gpu)", ""
            ).replace("group by (job, instance, gpu, UUID, modelName)", ""), r["alert"]


@pytest.mark.binaries
def test_dcgm_rules_pass_promtool_lint_and_their_generated_tests() -> None:
    promtool = require_binary("promtool")
    files = sorted(str(p) for p in DCGM.glob("*.rules.yml"))
    lint = subprocess.run([promtool, "check", "rules", "--lint-fatal", *files], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    test_file = DCGM / "gpuwarden-alerts.test.yml"
    assert "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS{" in test_file.read_text()  # both field names tested
    assert "DCGM_FI_DEV_CLOCKS_EVENT_REASONS{" in test_file.read_text()
    res = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.binaries
def test_dcgm_tests_follow_an_edited_threshold(tmp_path: Path) -> None:
    """THERMAL_CRITICAL at 84 °C: the regenerated dcgm tests pass on the regenerated rules, and
    fail on the committed ones."""
    promtool = require_binary("promtool")
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text(
        config.DEFAULT_PATH.read_text().replace('    op: ">"\n    threshold: 85 ', '    op: ">"\n    threshold: 84 ', 1)
    )
    assert "threshold: 84" in thresholds.read_text()
    out = tmp_path / "generated" / "dcgm-exporter"
    assert cli.main(["generate", "--config", str(thresholds), "--source", "dcgm-exporter"]) == 0
    test_file = str(out / "gpuwarden-alerts.test.yml")
    assert subprocess.run([promtool, "test", "rules", test_file], capture_output=True, timeout=180).returncode == 0
    (out / render.ALERTS_FILE).write_text((DCGM / render.ALERTS_FILE).read_text())
    (out / render.RECORDING_FILE).write_text((DCGM / render.RECORDING_FILE).read_text())
    assert subprocess.run([promtool, "test", "rules", test_file], capture_output=True, timeout=180).returncode == 1


def test_counters_csv_enables_every_field_the_rules_read() -> None:
    csv = (DCGM / needs.CSV_FILE).read_text()
    fields = {line.split(",")[0] for line in csv.splitlines() if line and not line.startswith("#")}
    cfg = _dcgm()
    for a in needs.alerts(cfg):
        for need in needs.needs(cfg, a):
            if need.names != ("up",):
                assert set(need.names) & fields, (a.rule, need)
    assert "# needed by: ECC_UNCORRECTABLE\nDCGM_FI_DEV_ECC_DBE_VOL_TOTAL, counter," in csv
    assert "# needed by: THROTTLING\nDCGM_FI_DEV_CLOCKS_EVENT_REASONS, gauge," in csv


def test_a_rule_dcgm_cannot_express_fails_generation_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text(
        config.DEFAULT_PATH.read_text().replace("metric: gpu_power_watts\n", "metric: gpu_power_average_watts\n", 1)
    )
    assert cli.main(["generate", "--config", str(thresholds), "--source", "dcgm-exporter"]) == 2
    assert "gpu_power_average_watts: no dcgm-exporter series for it" in capsys.readouterr().err
    assert not (tmp_path / "generated").exists()


def test_source_and_job_selector_settings() -> None:
    cfg = config.load()
    assert (cfg.source, cfg.job_selector) == ("gpuwarden", 'job="gpuwarden-exporter"')
    assert _dcgm().job_selector == 'job=~"(nvidia-)?dcgm-exporter"'
    doc = yaml.safe_load(config.DEFAULT_PATH.read_text())
    assert doc["settings"]["source"] == "gpuwarden"
    with pytest.raises(ValueError, match="unknown metrics source"):
        cfg.with_source("nvidia-smi")
    assert promql.selector(_dcgm(), gpu="0") == '{job=~"(nvidia-)?dcgm-exporter", gpu="0"}'


def test_bad_source_or_job_selector_is_a_config_error(tmp_path: Path) -> None:
    base = config.DEFAULT_PATH.read_text()
    for old, new, field in (
        ("  source: gpuwarden\n", "  source: nvml\n", "settings.source"),
        ("  source: gpuwarden\n", "  source: gpuwarden\n  job_selector: dcgm\n", "settings.job_selector"),
        # A quote ending the matcher early would splice PromQL into every rule.
        (
            "  source: gpuwarden\n",
            '  source: gpuwarden\n  job_selector: \'job="a"} or vector(1) or x{y="b"\'\n',
            "settings.job_selector",
        ),
    ):
        path = tmp_path / "t.yaml"
        path.write_text(base.replace(old, new, 1))
        with pytest.raises(config.ConfigError) as exc:
            config.load(path)
        assert field in str(exc.value)
