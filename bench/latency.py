"""Detection latency of every seed rule, from the fault to the action, against its floor.

    python -m bench.latency [--rounds N] [--json FILE]

Brings up the whole loop on free ports (the same ``Stack`` and harness as tests/e2e,
``gpuwarden.stack.harness``: simulated exporter,
real Prometheus with the SHIPPED rules and ``for:`` durations, real Alertmanager with the
SHIPPED routing, the agent), injects all eight seed faults at once (each on its own GPU, from
the shipped scenarios), and measures for each rule:

- crossed → action: from the moment the simulator's raw value is past the threshold (polled
  every 0.1 s through the control endpoint) to the action: the agent's audit timestamp (the
  shipped routing sends every gpuwarden alert to the agent: throttle/preempt/quarantine carried
  out, ``notify`` recorded); with a routing that does not reach the agent, Alertmanager's
  delivery to the chat/on-call receiver;
- injected → action: the same from the fault's injection (includes heating up, for thermal);
- floor = ``for`` + scrape interval + evaluation interval + the group_wait of the route that
  delivers it (read from alertmanager/alertmanager.yml); target: crossed → action <= floor + 5 s.

Prometheus scrapes and evaluates every 2 s here (``gpuwarden.stack.harness``: a deployment
setting).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpuwarden.stack import harness as L

TARGET_MARGIN = 5.0


def _action_at(run: L.Run, rule: str, receiver: str) -> float | None:
    """When the rule's action happened, or None while it has not: for the agent, its audit entry
    (a throttle/preempt/quarantine carried out, or a notify recorded)."""
    if receiver == L.AGENT_RECEIVER:
        done = [
            a
            for a in run.loop.actions(run.uuid[rule])
            if a["rule"] == rule
            and a["status"] == "firing"
            and a["outcome"] == ("recorded" if a["action"] == "notify" else "acted")
        ]
        return done[0]["at"] if done else None
    notes = [n for n in run.loop.notifications(rule, run.gpu[rule]) if n["receiver"] == receiver]
    return notes[0]["at"] if notes else None


def one_round(workdir: Path, timeout: float = 240.0) -> list[dict[str, Any]]:
    try:
        loop = L.start(workdir)  # Prometheus and Alertmanager from PATH, our console scripts beside Python
    except L.LoopError as exc:
        raise SystemExit(f"the loop did not come up: {exc}") from None
    try:
        run = L.inject_all(loop)
        receivers = {r: L.receiver_for(run.specs[r]) for r in L.SEED_RULES}
        acted: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(acted) < len(L.SEED_RULES) and time.monotonic() < deadline:
            for rule in L.SEED_RULES:
                if rule not in acted:
                    at = _action_at(run, rule, receivers[rule])
                    if at is not None:
                        acted[rule] = at
                        run.clear(rule)  # so that no fault outlives its measurement
            time.sleep(0.2)
        run.stop_watching()
    finally:
        loop.stop()
    rows = []
    for rule in L.SEED_RULES:
        spec = run.specs[rule]  # the version of the rule (profile) judging the rule's GPU
        floor = L.floor_seconds(spec, receivers[rule])
        at, crossed = acted.get(rule), run.crossed_at.get(rule)
        rows.append(
            {
                "rule": rule,
                "for": spec.for_seconds,
                "receiver": receivers[rule],
                "floor": floor,
                "crossed_to_action": None if at is None or crossed is None else round(at - crossed, 2),
                "injected_to_action": None if at is None else round(at - run.injected_at[rule], 2),
            }
        )
    return rows


def table(rounds: list[list[dict[str, Any]]]) -> str:
    lines = [
        "| rule | for | delivered to | floor (s) | crossed → action (s) | margin vs floor (s) "
        "| ratio to floor | injected → action (s) | within floor + 5 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, rule in enumerate(L.SEED_RULES):
        seen = [r[i] for r in rounds]
        lat = [r["crossed_to_action"] for r in seen if r["crossed_to_action"] is not None]
        inj = [r["injected_to_action"] for r in seen if r["injected_to_action"] is not None]
        row = seen[0]
        if not lat:
            lines.append(f"| {rule} | {row['for']:g}s | {row['receiver']} | {row['floor']:g} | no action | | | | no |")
            continue
        worst = max(lat)
        ok = all(x <= row["floor"] + TARGET_MARGIN for x in lat)
        spread = f"{min(lat):.1f}-{worst:.1f}" if len(lat) > 1 else f"{worst:.1f}"
        inj_s = f"{min(inj):.1f}-{max(inj):.1f}" if len(inj) > 1 else f"{inj[0]:.1f}"
        lines.append(
            f"| {rule} | {row['for']:g}s | {row['receiver']} | {row['floor']:g} | {spread} | "
            f"{worst - row['floor']:+.1f} | {worst / row['floor']:.2f} | {inj_s} | {'yes' if ok else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="whole-loop rounds, each on a fresh stack (default 1)")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    args = parser.parse_args(argv)
    rounds = []
    for n in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="gpuwarden-latency-") as tmp:
            print(f"round {n + 1}/{args.rounds}: eight faults at once on a fresh loop...", file=sys.stderr, flush=True)
            rounds.append(one_round(Path(tmp)))
    print(
        f"scrape interval {L.SCRAPE_INTERVAL:g}s, evaluation interval {L.EVALUATION_INTERVAL:g}s, "
        f"{args.rounds} round(s); ranges are min-max over rounds, margin and ratio use the worst"
    )
    print(table(rounds))
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))
    missed = [
        r["rule"]
        for rnd in rounds
        for r in rnd
        if r["crossed_to_action"] is None or r["crossed_to_action"] > r["floor"] + TARGET_MARGIN
    ]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
