"""Writes the fleet dashboard for each metrics source from rules/thresholds.yaml
(``python -m gpuwarden.dashboards.generate``): dashboards/gpu-fleet.json reads gpuwarden-exporter,
dashboards/dcgm-exporter/gpu-fleet.json reads NVIDIA's dcgm-exporter, both from the same panels.

The JSON is committed so reviews show real diffs; ``--check`` exits 1 when a committed file
differs from what generation gives now (``make check`` and tests/dashboards run it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpuwarden import sources

from .fleet import Thresholds, build

HERE = Path(__file__).resolve().parent
# Source -> its dashboard. gpuwarden's stays where the provisioning and the docs expect it.
OUTPUTS = {"gpuwarden": HERE / "gpu-fleet.json", "dcgm-exporter": HERE / "dcgm-exporter" / "gpu-fleet.json"}
DEFAULT_OUT = OUTPUTS["gpuwarden"]


def dashboard(rules_path: Path | None = None, source: str = "gpuwarden") -> dict[str, Any]:
    """The dashboard model of ``source``, its threshold lines and scrape job read through
    ``rules.config.load`` (the job the rules select for that source)."""
    from gpuwarden.rules import config  # imported here so the dashboard module loads without rules/

    where = str(rules_path) if rules_path else "rules/thresholds.yaml"
    cfg = config.load(rules_path).with_source(source)
    return build(Thresholds.from_rules(cfg, where), source, cfg.job_selector)


def to_json(model: dict[str, Any]) -> str:
    """Stable text: insertion order (as built), two-space indent, UTF-8 kept, newline at the end."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpuwarden.dashboards.generate", description=__doc__)
    ap.add_argument(
        "--rules", type=Path, default=None, help="thresholds file (default: the shipped rules/thresholds.yaml)"
    )
    ap.add_argument(
        "--source",
        choices=sources.SOURCES,
        default=None,
        help="generate this source's dashboard only (default: every source's; gpuwarden with --out)",
    )
    ap.add_argument("--out", type=Path, default=None, help="dashboard JSON to write (one source)")
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if an output differs from a fresh generation"
    )
    args = ap.parse_args(argv)

    if args.out is not None:
        outputs = {args.source or "gpuwarden": args.out}
    else:
        outputs = {s: OUTPUTS[s] for s in ([args.source] if args.source else sources.SOURCES)}
    stale = 0
    for source, out in outputs.items():
        text = to_json(dashboard(args.rules, source))
        if args.check:
            current = out.read_text(encoding="utf-8") if out.exists() else ""
            if current != text:
                print(f"{out} is out of date: run `python -m gpuwarden.dashboards.generate`", file=sys.stderr)
                stale += 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
