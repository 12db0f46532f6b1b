"""``gpuwarden-agent actions|breaker|throttle ...`` (talk to a running agent).

gpuwarden-agent actions list [--uuid U] [--outcome O] [--action A] [--limit N] [--json]
gpuwarden-agent breaker show
gpuwarden-agent breaker reset [--actor NAME]     (needs --token-file: it changes state)
gpuwarden-agent throttle restore UUID [--actor NAME]
    restore a throttled GPU's power limit now; the alerts holding it stop holding it (an alert
    that never resolves, a throttle judged wrong). Needs --token-file.
"""

from __future__ import annotations

import argparse
import getpass
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ..client import Client, add_client_args, run_cli


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpuwarden-agent", description="remediation audit and breaker")
    sub = ap.add_subparsers(dest="cmd", required=True)
    actions = sub.add_parser("actions").add_subparsers(dest="verb", required=True)
    p = actions.add_parser("list", help="the remediation audit trail, newest first")
    add_client_args(p)
    p.add_argument("--uuid")
    p.add_argument("--outcome")
    p.add_argument("--action")
    p.add_argument("--limit", type=int, default=50)
    breaker = sub.add_parser("breaker").add_subparsers(dest="verb", required=True)
    p = breaker.add_parser("show")
    add_client_args(p)
    p = breaker.add_parser("reset", help="close the breaker: remediation acts again")
    add_client_args(p)
    p.add_argument("--actor", default=None, help="who resets it (default: your user name)")
    throttle = sub.add_parser("throttle").add_subparsers(dest="verb", required=True)
    p = throttle.add_parser("restore", help="restore a throttled GPU's power limit now")
    add_client_args(p)
    p.add_argument("uuid")
    p.add_argument("--actor", default=None, help="who restores it (default: your user name)")
    return ap


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def request(c: Client) -> Any:
        if args.cmd == "actions":
            q = {
                k: v
                for k, v in (
                    ("uuid", args.uuid),
                    ("outcome", args.outcome),
                    ("action", args.action),
                    ("limit", args.limit),
                )
                if v
            }
            out = c.call("GET", "/api/v1/actions?" + urllib.parse.urlencode(q))
            if not args.json:
                b = out["breaker"]
                print(
                    f"breaker: {b['state']}"
                    + (f" since {_when(b['opened_at'])}: {b['reason']}" if b["state"] == "open" else "")
                )
                for a in out["actions"]:
                    why = a["error"] or a["detail"].get("reason", "")
                    print(
                        f"{a['id']:>6}  {_when(a['at'])}  {a['action']:<10} {a['outcome']:<15} "
                        f"{a['rule'] or '-':<18} {a['uuid'] or '-'}  {why}".rstrip()
                    )
                return None
        elif args.verb == "show":
            out = c.call("GET", "/api/v1/remediation/breaker")
        elif args.cmd == "throttle":
            uuid = urllib.parse.quote(args.uuid, safe="")
            actor = args.actor or getpass.getuser()
            out = c.call("POST", f"/api/v1/remediation/throttles/{uuid}/restore", {"actor": actor})
        else:
            actor = args.actor or getpass.getuser()
            out = c.call("POST", "/api/v1/remediation/breaker/reset", {"actor": actor})
        return out

    return run_cli(args, request)
