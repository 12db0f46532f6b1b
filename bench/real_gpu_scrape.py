"""CPU per scrape, gpuwarden-exporter against nvitop-exporter, on the real driver.

The measurement is bench.exporter_scrape's own (``_one_size``: both exporters in one process,
interleaved round by round), imported unchanged. It builds a simulated fleet, a simulated
library that counts calls, and installs that library; in this child process (never in the
caller's) those three names are pointed at stand-ins for the real driver: the "fleet" lists the
real GPUs, the "library" counts calls where every pynvml wrapper (and the exporter's field read)
looks up its C entry point (``pynvml._nvmlGetFunctionPointer``), and ``install`` does nothing, so
nvmlInit loads libnvidia-ml.so.1 as it does in production.

    python -m bench.real_gpu_scrape --rounds 5 --per-round 40     # prints one JSON line
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pynvml


class _RealFleet:
    """What _one_size reads of its fleet: ``gpus[i].uuid``, here the real GPUs'."""

    def __init__(self, count: int, *args: Any, **kw: Any) -> None:
        pynvml.nvmlInit()
        self.gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            self.gpus.append(SimpleNamespace(uuid=uuid.decode() if isinstance(uuid, bytes) else uuid))


class _CountingLibrary:
    """What _one_size reads of its library: ``calls``, a Counter of NVML calls by entry point."""

    def __init__(self, fleet: Any, latency_s: float = 0.0) -> None:
        if latency_s:
            raise ValueError("added latency is for the simulated library only")
        self.calls: collections.Counter[str] = collections.Counter()
        lookup, calls = pynvml._nvmlGetFunctionPointer, self.calls

        def counted(name: str) -> Any:
            calls[name] += 1
            return lookup(name)

        pynvml._nvmlGetFunctionPointer = counted


def measure_real(rounds: int, per_round: int) -> dict[str, Any]:
    from gpuwarden.exporter.sim import fleet, library

    from . import exporter_scrape

    fleet.Fleet = _RealFleet  # type: ignore[misc,assignment]  # this child process only
    library.SimLibrary = _CountingLibrary  # type: ignore[misc,assignment]
    library.install = lambda lib: None
    pynvml.nvmlInit()
    count = pynvml.nvmlDeviceGetCount()
    result: dict[str, Any] = exporter_scrape._one_size(count, rounds, per_round, 0.0)
    result["gpus"] = count
    return result


def run(simulate: int | None, rounds: int, per_round: int) -> tuple[str, dict[str, Any]]:
    """In a child process: ("ok", {gpus, table, results}) or ("not run: why", {})."""
    try:
        import nvitop_exporter  # type: ignore[import-untyped]  # noqa: F401  (no stubs)
    except ImportError:
        return "not run: nvitop-exporter is not installed (pip install -e '.[bench]')", {}
    if simulate:
        cmd = [sys.executable, "-m", "bench.exporter_scrape", "--one", str(simulate)]
    else:
        cmd = [sys.executable, "-m", "bench.real_gpu_scrape"]
    cmd += ["--rounds", str(rounds), "--per-round", str(per_round)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        return f"failed: python -m {' '.join(cmd[2:])} exited {res.returncode}: {res.stderr.strip()[-500:]}", {}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    gpus = out.pop("gpus", simulate)
    from . import exporter_scrape

    return "ok", {
        "gpus": gpus,
        "command": " ".join(cmd[2:]),
        "results": out,
        "table": exporter_scrape._table({gpus: out}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_gpu_scrape", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=40)
    args = p.parse_args(argv)
    print(json.dumps(measure_real(args.rounds, args.per_round)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
