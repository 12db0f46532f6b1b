"""One forecast from a real Prometheus 2.42 holding dcgm-exporter's names (no gpuwarden series).

The TSDB is backfilled with ``promtool tsdb create-blocks-from openmetrics``: one GPU as
dcgm-exporter exposes it (``DCGM_FI_DEV_GPU_TEMP`` rising 1 °C/min, power, framebuffer in MiB,
the clock-event bitmask with only ``gpu_idle`` set, ``UUID`` and ``modelName`` labels). The
predictor, reading source dcgm-exporter, must forecast the climb for the GPU's lowercase uuid,
read the memory ratio in one unit, and not take the idle bit for a throttle.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gpuwarden.scheduler_agent.predictor.service import PredictorService
from tests.helpers import free_port, http_get, require_binary, wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]

STEP = 15
UUID = "GPU-5fb2a3c1-0d6e-4b7a-9c1e-2f3a4b5c6d7e"
LABELS = (
    f'gpu="0",UUID="{UUID}",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",'
    'Hostname="node1",instance="node1:9400",job="dcgm-exporter"'
)


def _openmetrics(base: int, minutes: int) -> str:
    lines = []
    series = {
        "DCGM_FI_DEV_GPU_TEMP": lambda k: 60 + k * STEP / 60,  # +1 °C/min
        "DCGM_FI_DEV_POWER_USAGE": lambda k: 300.0,
        "DCGM_FI_DEV_FB_USED": lambda k: 40000.0,  # MiB
        "DCGM_FI_DEV_FB_FREE": lambda k: 40000.0,
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": lambda k: 1.0,  # gpu_idle: not a throttle
    }
    for name, fn in series.items():
        lines.append(f"# TYPE {name} gauge")
        lines += [f"{name}{{{LABELS}}} {fn(k)} {base + k * STEP}" for k in range(minutes * 60 // STEP + 1)]
    return "\n".join(lines) + "\n# EOF\n"


def test_forecast_from_dcgm_exporter_series(tmp_path: Path, spawn) -> None:
    promtool, prometheus = require_binary("promtool"), require_binary("prometheus")
    base = (int(time.time()) - 3 * 3600) // 7200 * 7200  # inside the default retention
    minutes = 20  # 60 -> 80 °C
    (tmp_path / "dcgm.om").write_text(_openmetrics(base, minutes))
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "dcgm.om"), str(tmp_path / "data")],
        check=True,
        capture_output=True,
    )
    (tmp_path / "prometheus.yml").write_text("global: {}\n")
    port = free_port()
    proc = spawn(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
        ],
        name="prometheus",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(f"{url}/-/ready")[0] == 200, 30, what=f"prometheus: {proc.output()[-2000:]}")

    now = float(base + minutes * 60)
    svc = PredictorService(url, None, step=STEP, timeout=10, clock=lambda: now, source="dcgm-exporter")
    snap = svc.run_once()
    assert snap.ok, snap.error
    assert set(snap.gpus) == {UUID}
    h = snap.gpus[UUID]
    assert (h.instance, h.gpu) == ("node1:9400", "0")
    temp = h.forecasts["temperature"]
    assert temp.current == pytest.approx(80.0, abs=0.2)
    assert temp.model != "held"  # the gpu_idle bit is not a throttling reason
    assert temp.seconds_to_threshold == pytest.approx(300.0, rel=0.1)  # 5 °C at 1 °C/min
    assert h.forecasts["memory"].current == pytest.approx(0.5)  # used / (used + free), both MiB
    assert h.forecasts["power"].current == pytest.approx(300.0)
