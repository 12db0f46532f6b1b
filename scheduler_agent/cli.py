"""``gpuwarden-agent``: serve the agent, or talk to a running one.

  gpuwarden-agent serve --config FILE
  gpuwarden-agent jobs submit --name N --gpus 2 [--priority P] [--time-limit S] [-- CMD ...]
  gpuwarden-agent jobs list [--state S] | show ID | cancel ID
  gpuwarden-agent gpus list | quarantine UUID [--reason R] | release UUID
  gpuwarden-agent actions list | breaker show | breaker reset | throttle restore UUID
                                                              (scheduler_agent.remediation.cli)
  gpuwarden-agent predict ...   (dispatched to scheduler_agent.predictor.cli:main when present)

Client verbs take --url (default http://127.0.0.1:9787, or $GPUWARDEN_AGENT_URL) and
--token-file (or $GPUWARDEN_TOKEN_FILE; needed for changes).
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from typing import Any

from gpuwarden import logs

from .client import Client, add_client_args, run_cli


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpuwarden-agent", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the agent")
    s.add_argument("--config", required=True)
    logs.add_flags(s)

    jobs = sub.add_parser("jobs").add_subparsers(dest="verb", required=True)
    p = jobs.add_parser("submit")
    add_client_args(p)
    p.add_argument("--name", required=True)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--time-limit", type=float, dest="time_limit")
    p.add_argument("--idempotency-key")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- argv (omit for tracking only)")
    p = jobs.add_parser("list")
    add_client_args(p)
    p.add_argument("--state")
    for verb in ("show", "cancel"):
        p = jobs.add_parser(verb)
        add_client_args(p)
        p.add_argument("id", type=int)

    gpus = sub.add_parser("gpus").add_subparsers(dest="verb", required=True)
    p = gpus.add_parser("list")
    add_client_args(p)
    p = gpus.add_parser("quarantine")
    add_client_args(p)
    p.add_argument("uuid")
    p.add_argument("--reason", default="manual quarantine")
    p.add_argument("--no-preempt", action="store_true")
    p = gpus.add_parser("release")
    add_client_args(p)
    p.add_argument("uuid")
    return ap


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [
        [
            ("" if r.get(c) is None else (",".join(map(str, r[c])) if isinstance(r.get(c), list) else str(r[c])))
            for c in cols
        ]
        for r in rows
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=False))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load
    from .inventory import InventoryError
    from .server import Agent
    from .store import StoreError

    logs.setup(args.log_level, args.log_format)
    cfg = None
    try:
        cfg = load(args.config)
        agent = Agent(cfg)
        agent.start()
    except (StoreError, sqlite3.Error) as exc:
        # The database (database.path) cannot be used: damaged, read-only, its folder missing
        # or not writable, full. Exit 2 with what to do, no traceback (systemd would restart
        # into the same error forever otherwise).
        msg = (
            str(exc)
            if isinstance(exc, StoreError)
            else f"{exc} ({getattr(exc, 'sqlite_errorname', type(exc).__name__)})"
        )
        where = str(cfg.error("database.path", msg)) if cfg is not None else f"database.path: {msg}"
        print(f"gpuwarden-agent: {where}", file=sys.stderr)
        return 2
    except (ConfigError, InventoryError, ValueError, OSError) as exc:
        print(f"gpuwarden-agent: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    agent.close()
    return 0


def _client_main(args: argparse.Namespace) -> int:
    def request(c: Client) -> Any:
        if args.cmd == "jobs":
            if args.verb == "submit":
                cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
                body: dict[str, Any] = {"name": args.name, "gpus": args.gpus, "priority": args.priority}
                if cmd:
                    body["command"] = cmd
                if args.time_limit:
                    body["time_limit_seconds"] = args.time_limit
                if args.idempotency_key:
                    body["idempotency_key"] = args.idempotency_key
                out = c.call("POST", "/api/v1/jobs", body)
            elif args.verb == "list":
                out = c.call("GET", "/api/v1/jobs" + (f"?state={args.state}" if args.state else ""))
                if not args.json:
                    print(_table(out, ["id", "name", "state", "priority", "gpus", "node", "gpu_indexes", "reason"]))
                    return None
            elif args.verb == "show":
                out = c.call("GET", f"/api/v1/jobs/{args.id}")
            else:
                out = c.call("DELETE", f"/api/v1/jobs/{args.id}")
        else:
            if args.verb == "list":
                out = c.call("GET", "/api/v1/gpus")
                if not args.json:
                    print(_table(out, ["node", "index", "uuid", "state", "job_id", "quarantine_reason"]))
                    return None
            elif args.verb == "quarantine":
                out = c.call(
                    "POST",
                    f"/api/v1/gpus/{args.uuid}/quarantine",
                    {"reason": args.reason, "preempt": not args.no_preempt},
                )
            else:
                out = c.call("POST", f"/api/v1/gpus/{args.uuid}/release", {})
        return out

    return run_cli(args, request)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The components' verbs live in their packages, imported only for their verbs (the
    # predictor's brings numpy).
    if argv[:1] == ["predict"]:
        from .predictor import cli as predictor_cli

        return int(predictor_cli.main(argv[1:]) or 0)
    if argv[:1] in (["actions"], ["breaker"], ["throttle"]):
        from .remediation import cli as remediation_cli

        return int(remediation_cli.main(argv) or 0)
    args = _parser().parse_args(argv)
    if args.cmd == "serve":
        return _serve(args)
    return _client_main(args)


if __name__ == "__main__":
    sys.exit(main())
