"""Writes dashboards/gpu-fleet.json from rules/thresholds.yaml (``python -m gpuwarden.dashboards.generate``).

The JSON is committed so reviews show real diffs; ``--check`` exits 1 when the committed file
differs from what generation gives now (CI runs it through tests/dashboards).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fleet import Thresholds, build

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "gpu-fleet.json"


def dashboard(rules_path: Path | None = None) -> dict[str, Any]:
    """The dashboard model, its threshold lines read through ``rules.config.load``."""
    from gpuwarden.rules import config  # imported here so the dashboard module loads without rules/

    source = str(rules_path) if rules_path else "rules/thresholds.yaml"
    return build(Thresholds.from_rules(config.load(rules_path), source))


def to_json(model: dict[str, Any]) -> str:
    """Stable text: insertion order (as built), two-space indent, UTF-8 kept, newline at the end."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpuwarden.dashboards.generate", description=__doc__)
    ap.add_argument(
        "--rules", type=Path, default=None, help="thresholds file (default: the shipped rules/thresholds.yaml)"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dashboard JSON to write")
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if --out differs from a fresh generation"
    )
    args = ap.parse_args(argv)

    text = to_json(dashboard(args.rules))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run `python -m gpuwarden.dashboards.generate`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
