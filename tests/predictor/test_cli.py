"""The offline CSV interface and the Prometheus report of `gpuwarden-agent predict`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gpuwarden.scheduler_agent.predictor.cli import main
from tests.helpers import REPO, console_script
from tests.predictor.fakeprom import FakePrometheus

KEYS = {"seconds_to_threshold", "confidence", "slope_per_second", "risk"}


def run(argv: list[str]) -> tuple[int, dict | None, str]:
    out = io.StringIO()
    rc = main(argv, out=out)
    text = out.getvalue()
    return rc, (json.loads(text) if rc == 0 and text.strip().startswith("{") else None), text


def write(path: Path, rows: list[tuple[float, float]], header: bool = True) -> Path:
    lines = ["timestamp,value"] if header else []
    for i, (t, v) in enumerate(rows):
        lines.append(f"{t},{v}")
        if i == 3:
            lines.append("")  # blank lines are tolerated
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ramp_prints_one_json_object_judged_at_last_sample(tmp_path: Path) -> None:
    # 40 minutes of history; only the last 10 (the window) rise: +0.5 °C/min, 75 °C now.
    rows = [(1000 + 15 * i, 70.0 if i < 120 else 70 + 0.5 * (i - 120) * 15 / 60) for i in range(161)]
    rc, d, text = run(["--csv", str(write(tmp_path / "a.csv", rows)), "--threshold", "85"])
    assert rc == 0 and text.count("\n") == 1 and d is not None
    assert KEYS <= d.keys()
    assert d["seconds_to_threshold"] == pytest.approx(1200, rel=0.01)
    assert d["slope_per_second"] == pytest.approx(0.5 / 60, rel=0.01)
    assert 0.9 <= d["confidence"] <= 1 and 0 < d["risk"] <= 1
    assert d["as_of"] == rows[-1][0] and d["warn"] is False  # 20 min > default 10 min horizon
    rc, d, _ = run(["--csv", str(tmp_path / "a.csv"), "--threshold", "85", "--horizon", "1500"])
    assert d is not None and d["warn"] is True


def test_flat_noise_gives_null(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows = [(15.0 * i, 78 + float(rng.normal(0, 0.5))) for i in range(41)]
    rc, d, _ = run(["--csv", str(write(tmp_path / "n.csv", rows, header=False)), "--threshold", "85"])
    assert rc == 0 and d is not None
    assert d["seconds_to_threshold"] is None and d["warn"] is False
    assert 0 <= d["confidence"] < 0.9 and 0 <= d["risk"] < 0.3


def test_bad_line_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("timestamp,value\n0,70\n15,71\n\n30,seventy\n")
    rc, _, _ = run(["--csv", str(p), "--threshold", "85"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{p}:5:" in err and "seventy" in err
    p.write_text("0,70\n15,71,3\n")
    assert run(["--csv", str(p), "--threshold", "85"])[0] == 2
    assert f"{p}:2: expected 2 comma-separated fields" in capsys.readouterr().err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "a.csv", [(15.0 * i, 70.0) for i in range(10)])
    assert run(["--csv", str(p)])[0] == 2
    assert "needs --threshold" in capsys.readouterr().err
    assert run(["--csv", str(tmp_path / "missing.csv"), "--threshold", "85"])[0] == 2
    assert "missing.csv: cannot read" in capsys.readouterr().err
    short = write(tmp_path / "s.csv", [(0, 70), (15, 71)])
    assert run(["--csv", str(short), "--threshold", "85"])[0] == 2
    assert "need at least 5" in capsys.readouterr().err


def test_module_and_console_script(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", [(15.0 * i, 70 + i * 0.25) for i in range(41)])
    for argv in (
        [sys.executable, "-m", "gpuwarden.scheduler_agent.predictor.cli"],
        [console_script("gpuwarden-agent"), "predict"],
    ):
        r = subprocess.run(
            [*argv, "--csv", str(p), "--threshold", "85"], capture_output=True, text=True, cwd=REPO, timeout=60
        )
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["seconds_to_threshold"] == pytest.approx((85 - 80) / (1 / 60), rel=0.01)


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    p = FakePrometheus()
    yield p
    p.close()


def test_report_for_gpus_at_risk(prom: FakePrometheus) -> None:
    import time

    now = time.time()
    prom.add("gpu_temperature_celsius", {"gpu": "0", "uuid": "GPU-a"}, lambda t: 75 + (t - now) / 120)
    prom.add("gpu_temperature_celsius", {"gpu": "1", "uuid": "GPU-b"}, lambda t: 55.0)
    out = io.StringIO()
    assert main(["--prometheus.url", prom.url], out=out) == 0
    text = out.getvalue()
    assert text.startswith("GPU-0 Temperature Trend:\n  Current: 75")
    assert "  Rate: +0.5°C/minute\n  Predicted Critical (85°C): 20 minutes\n  Confidence: 1.00\n" in text
    assert "Recommendation: Monitor closely, plan migration within 15 minutes" in text
    assert "GPU-1" not in text
    assert any('job="gpuwarden-exporter"' in q for q in prom.queries)


def test_report_when_prometheus_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import free_port

    assert main(["--prometheus.url", f"http://127.0.0.1:{free_port()}", "--timeout", "1"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_optional_throttle_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A climb of 2 °C/min (scrape noise 0.3 °C) that the firmware has held at 84 °C for the last
    3 scrapes: with the throttle column (1 while held) it is not extrapolated; the same values
    alone still warn."""
    times = [15.0 * i for i in range(41)]
    clean = [min(65 + t / 60 * 2.0, 84.0) for t in times]
    held = [1 if v >= 84.0 else 0 for v in clean]
    assert sum(held) == 3
    values = list(np.array(clean) + np.random.default_rng(1).normal(0, 0.3, len(times)))
    with_col = tmp_path / "t.csv"
    with_col.write_text(
        "timestamp,value,throttle\n" + "".join(f"{t},{v},{h}\n" for t, v, h in zip(times, values, held, strict=True))
    )
    rc, d, _ = run(["--csv", str(with_col), "--threshold", "85"])
    assert rc == 0 and d is not None and d["throttle_column"] is True
    assert d["model"] == "held" and d["seconds_to_threshold"] is None and d["warn"] is False
    rc, d, _ = run(
        ["--csv", str(write(tmp_path / "v.csv", list(zip(times, values, strict=True)))), "--threshold", "85"]
    )
    assert rc == 0 and d is not None and d["throttle_column"] is False and d["warn"] is True
    bad = tmp_path / "b.csv"
    bad.write_text("0,70,0\n15,71,2\n")
    assert run(["--csv", str(bad), "--threshold", "85"])[0] == 2
    assert f"{bad}:2: throttle '2' is not 0 or 1" in capsys.readouterr().err
    bad.write_text("0,70,0\n15,71\n")
    assert run(["--csv", str(bad), "--threshold", "85"])[0] == 2
    assert f"{bad}:2: expected 3 comma-separated fields" in capsys.readouterr().err


def test_help_documents_the_throttle_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "timestamp,value[,throttle]" in text and "gpu_throttle_active" in text
