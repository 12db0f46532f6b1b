"""The live view at fleet scale: one redraw of 8,192 GPUs during a 5 % storm, before and after.

    python -m bench.fleet_view [--gpus 8192] [--storm 0.05] [--baseline REV]

``LiveView.render`` as it is now, side by side (interleaved rounds) with the same method from
``gpuwarden/stack/view.py`` at git revision ``--baseline`` (the view before it summarised a
fleet), on one synthetic snapshot: GPUs in the agent's shape, three alerts per storm GPU in
Prometheus' shape. Reports the time per redraw and the lines a redraw writes (a terminal shows
about 50).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpuwarden.stack import view

REPO = Path(__file__).resolve().parent.parent
BASELINE = "f5546a4"  # the last commit before the view summarised a fleet


def _baseline_module(rev: str) -> Any:
    src = subprocess.run(
        ["git", "show", f"{rev}:gpuwarden/stack/view.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="view-baseline-")) / "view_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("view_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def snapshot(gpus: int, storm: float) -> dict[str, Any]:
    hit = set(range(0, gpus, max(1, round(1 / storm)))) if storm > 0 else set()
    rules = ("POWER_CRITICAL", "THROTTLING", "ECC_UNCORRECTABLE")
    out_gpus, alerts = [], []
    for i in range(gpus):
        node, index, uuid = f"node-{i // 8:04d}", i % 8, f"GPU-{i:08d}-0000-0000-0000-000000000000"
        firing = [{"rule": r, "severity": "critical"} for r in rules] if i in hit else []
        state = "quarantined" if i in hit and i % 3 == 0 else "healthy"
        out_gpus.append({"uuid": uuid, "node": node, "index": index, "state": state, "alerts": firing})
        for r in rules if i in hit else ():
            labels = {"alertname": r, "rule": r, "instance": f"{node}:9400", "gpu": str(index), "uuid": uuid}
            alerts.append({"state": "firing", "labels": {**labels, "severity": "critical", "action": "notify"}})
    return {"gpus": out_gpus, "jobs": [], "alerts": alerts, "actions": [], "breaker": {"state": "open"}, "errors": []}


def _view(mod: Any) -> Any:
    sink = mod.NotificationSink(0)  # bound, never started: the view only reads its deque
    return mod.LiveView("http://127.0.0.1:1", "http://127.0.0.1:1", "t", sink, ["bench"], redraw=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_view", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=8192)
    p.add_argument("--storm", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--baseline", default=BASELINE, help="git revision of the view to compare with")
    args = p.parse_args(argv)
    snap = snapshot(args.gpus, args.storm)
    views = {"baseline": _view(_baseline_module(args.baseline)), "now": _view(view)}
    times: dict[str, list[float]] = {k: [] for k in views}
    lines = {}
    for _ in range(args.rounds):
        for name, v in views.items():  # interleaved: both see the same machine
            t0 = time.perf_counter()
            text = v.render(snap)
            times[name].append(time.perf_counter() - t0)
            lines[name] = text.count("\n")
    for v in views.values():
        v.sink.stop()
    for name in views:
        print(f"{name:>8}: {statistics.median(times[name]) * 1000:8.2f} ms per redraw, {lines[name]:6d} lines")
    ratio = statistics.median(times["baseline"]) / statistics.median(times["now"])
    print(f"redraw at {args.gpus} GPUs, {len(snap['alerts'])} alerts: {ratio:.1f}x faster, "
          f"{lines['baseline'] / lines['now']:.0f}x fewer lines")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
