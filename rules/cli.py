"""gpuwarden-rules: thresholds.yaml -> Prometheus rules, PrometheusRule manifest, promtool tests.

gpuwarden-rules generate [--config F] [--out DIR]   write rules/generated/
gpuwarden-rules check    [--config F] [--out DIR]   exit 1 and print the diff when stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config, generate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuwarden-rules", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("generate", "write the generated files"),
        ("check", "fail (exit 1) with a diff when the generated files are stale"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--config", type=Path, default=None, help=f"thresholds file (default: {config.DEFAULT_PATH})")
        s.add_argument(
            "--out", type=Path, default=None, help="output folder (default: generated/ beside the thresholds file)"
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or generate.default_out(cfg)
    files = generate.render_all(cfg, out)
    if args.command == "generate":
        for path in generate.write(files, out):
            print(path)
        return 0
    delta = generate.diff(files, out)
    if delta:
        sys.stdout.write(delta)
        print(f"\n{out} is stale: run `gpuwarden-rules generate` and commit the result", file=sys.stderr)
        return 1
    print(f"{out}: up to date ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
