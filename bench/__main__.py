"""``python -m bench [NAME ...]``: runs the named benchmarks (default: all), one after another.

Each prints its own side-by-side ratios; docs/BENCHMARKS.md holds the figures and the commands.
Run one alone, with its own flags, as ``python -m bench.<name> --help``.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("exporter_scrape", "placement", "api_submit", "intake", "predictor_eval", "latency", "fleet_view")
# Run only when named: real_gpu needs an NVIDIA driver (python -m bench real_gpu); fleet (128 to
# 1,024 virtual nodes, two storms) takes about half an hour.
ON_REQUEST = ("real_gpu", "fleet")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS + ON_REQUEST]
    if unknown:
        print(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS + ON_REQUEST)}", file=sys.stderr
        )
        return 2
    status = 0
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        status |= importlib.import_module(f"bench.{name}").main([]) or 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
