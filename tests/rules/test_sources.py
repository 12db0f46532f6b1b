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
