"""gpuwarden.sources: every signal of every source is valid PromQL, and the throttle bitmask
decoding (floor and modulo over runs of bits) agrees with a bitwise AND on every mask."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gpuwarden import sources
from tests.helpers import require_binary


def test_bit_runs_decode_every_mask_like_a_bitwise_and() -> None:
    reasons = sources.THROTTLING_REASONS
    wanted = sum(sources.THROTTLE_BITS[r] for r in reasons)
    runs = sources.bit_runs(reasons)
    assert len(runs) == 2  # 0x4-0x8 and 0x20-0x80
    for mask in range(0x200):
        decoded = min(sum((mask // low) % span for low, span in runs), 1)
        assert decoded == (1 if mask & wanted else 0), hex(mask)


def test_default_job_selectors_match_both_dcgm_job_names() -> None:
    assert sources.default_job_selector("gpuwarden") == 'job="gpuwarden-exporter"'
    assert sources.default_job_selector("dcgm-exporter") == 'job=~"(nvidia-)?dcgm-exporter"'
    with pytest.raises(ValueError, match="known: gpuwarden, dcgm-exporter"):
        sources.default_job_selector("nvidia-smi")


def test_dcgm_signals_copy_uuid_and_convert_units() -> None:
    used = sources.signal("dcgm-exporter", "memory_used_bytes")
    assert "DCGM_FI_DEV_FB_USED" in used and "* 1048576" in used and '"uuid", "$1", "UUID"' in used
    assert "* 0.01" in sources.signal("dcgm-exporter", "utilization_ratio")
    assert '"model", "$1", "modelName"' in sources.signal("dcgm-exporter", "identity")
    with pytest.raises(ValueError, match="unknown signal"):
        sources.signal("gpuwarden", "fan_speed")


@pytest.mark.binaries
def test_every_signal_parses_in_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = [
        {"record": f"signal:{name}:{source.replace('-', '_')}", "expr": sources.signal(source, name)}
        for source in sources.SOURCES
        for name in sources.SIGNALS
    ]
    path = tmp_path / "signals.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "signals", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.binaries
def test_dcgm_signals_drop_dcgm_blank_values(tmp_path: Path) -> None:
    """dcgm-exporter < 4.5.2 exports DCGM's "no value" sentinels as values: every signal the
    agent, predictor and dashboard read leaves them out (GPU 0: every field blank, each kind's
    sentinel; GPU 1: real values, kept and converted)."""
    promtool = require_binary("promtool")
    job = 'job="dcgm-exporter"'
    numeric = [n for n in sources.SIGNALS if n not in ("identity", "gpu_up")]
    rules = [{"record": f"signal:{n}", "expr": sources.signal("dcgm-exporter", n, job)} for n in numeric]
    (tmp_path / "signals.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "s", "rules": rules}]}))
    fields = {  # field -> (a real value, its blank kind)
        "DCGM_FI_DEV_GPU_TEMP": (70, sources.DCGM_INT32_BLANK),
        "DCGM_FI_DEV_POWER_USAGE": (300.5, sources.DCGM_FP64_BLANK),
        "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": (400, sources.DCGM_FP64_BLANK + 2),  # NOT_SUPPORTED
        "DCGM_FI_DEV_FB_USED": (1024, sources.DCGM_INT64_BLANK),
        "DCGM_FI_DEV_FB_FREE": (1024, sources.DCGM_INT32_BLANK + 2),
        "DCGM_FI_DEV_GPU_UTIL": (50, sources.DCGM_INT64_BLANK + 2),
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": (3, sources.DCGM_INT32_BLANK + 1),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": (0, sources.DCGM_INT32_BLANK + 3),
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": (0x40, sources.DCGM_INT32_BLANK),
    }
    labels = 'job="dcgm-exporter",instance="n1:9400",gpu="{gpu}",UUID="GPU-{gpu}",modelName="NVIDIA A100"'
    inputs = []
    for field, (real, blank) in fields.items():
        inputs.append({"series": f"{field}{{{labels.format(gpu=0)}}}", "values": f"{blank:.0f}x3"})
        inputs.append({"series": f"{field}{{{labels.format(gpu=1)}}}", "values": f"{real}x3"})
    want = {
        "temperature_celsius": 70,
        "power_watts": 300.5,
        "power_limit_watts": 400,
        "memory_used_bytes": 1024 * sources.MIB,
        "memory_total_bytes": 2048 * sources.MIB,
        "utilization_ratio": 0.5,
        "ecc_correctable_total": 3,
        "ecc_uncorrectable_total": 0,
        "throttle_active": 1,
    }
    assert set(want) == set(numeric)
    tests = [
        {
            "expr": f"count by (gpu) (signal:{n})",
            "eval_time": "10s",
            "exp_samples": [{"labels": '{gpu="1"}', "value": 1}],
        }
        for n in numeric
    ] + [
        {"expr": f"sum(signal:{n})", "eval_time": "10s", "exp_samples": [{"labels": "{}", "value": v}]}
        for n, v in want.items()
    ]
    doc = {
        "rule_files": ["signals.rules.yml"],
        "evaluation_interval": "5s",
        "tests": [{"interval": "5s", "input_series": inputs, "promql_expr_test": tests}],
    }
    (tmp_path / "signals.test.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    out = subprocess.run(
        [promtool, "test", "rules", "signals.test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
