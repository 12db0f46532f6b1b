"""gpuwarden-rules: thresholds.yaml -> Prometheus rules, PrometheusRule manifest, promtool tests.

gpuwarden-rules generate [--config F] [--source S] [--out DIR]   write rules/generated/
gpuwarden-rules check    [--config F] [--source S] [--out DIR]   exit 1 and print the diff when stale
gpuwarden-rules doctor   --prometheus URL [--config F] [--source S]
                         whether each rule's series exist there; exit 1 when a critical one cannot fire
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gpuwarden import sources
from gpuwarden.prom import PrometheusClient, PrometheusError

from . import config, doctor, generate, promql


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuwarden-rules", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("generate", "write the generated files"),
        ("check", "fail (exit 1) with a diff when the generated files are stale"),
        ("doctor", "say, per rule, whether its series exist in a Prometheus and on how many GPUs"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--config", type=Path, default=None, help=f"thresholds file (default: {config.DEFAULT_PATH})")
        s.add_argument(
            "--source",
            choices=sources.SOURCES,
            default=None,
            help="metrics source (default: settings.source of the thresholds file)",
        )
        if name == "doctor":
            s.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://localhost:9090")
            s.add_argument("--timeout", type=float, default=10.0, help="seconds per query (default 10)")
        else:
            s.add_argument(
                "--out",
                type=Path,
                default=None,
                help="output folder (default: generated/ beside the thresholds file; generated/<source>/ "
                "for a source other than gpuwarden)",
            )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.source:
        cfg = cfg.with_source(args.source)
    if args.command == "doctor":
        try:
            findings, fleet = doctor.diagnose(cfg, PrometheusClient(args.prometheus, args.timeout))
        except PrometheusError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        text, status = doctor.report(cfg, findings, fleet)
        sys.stdout.write(text)
        return status
    out = args.out or generate.default_out(cfg)
    try:
        files = generate.render_all(cfg, out)
    except promql.SourceError as exc:
        print(f"error: {cfg.path}: {exc}", file=sys.stderr)
        return 2
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
