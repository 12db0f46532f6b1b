"""Webhook intake throughput: alerts accepted per second with durable storage, p50/p99 latency.

    python -m bench.intake [--seconds 3] [--clients 4] [--rounds 3] [--out FILE]

Each POST goes over HTTP (keep-alive) to the agent's router with remediation's routes, and is
answered 202 only after its alerts are committed to SQLite in WAL with synchronous=FULL (an
fsync per commit), on a database file in a temporary folder on disk. Every alert is a new
instance (its own fingerprint), so every one is an insert, never a dedupe hit. The worker runs
during the measurement (notify alerts: it records each), as it does in the agent.

Measured side by side, interleaved round by round:
  durable   the real intake (auth, v4 validation, fsync'd commit), worker running
  durable-paused-worker  the same with the worker not started (the intake's own cost)
  baseline  the same server and validation, answering 202 without storing anything
and reported as alerts/s and the ratio durable/baseline, at 1 and at 100 alerts per POST.
Target (issue 5): >= 2,000 alerts/s at 100 per POST with p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gpuwarden.scheduler_agent.remediation.config import parse
from gpuwarden.scheduler_agent.remediation.intake import Credentials
from gpuwarden.scheduler_agent.remediation.payload import parse_notification
from gpuwarden.scheduler_agent.remediation.service import Remediation
from gpuwarden.scheduler_agent.web import App, BearerAuth, Response

TOKEN = "bench-token"
MODES = ("durable", "durable-paused-worker", "baseline")


class _NoScheduler:
    def quarantine(self, uuid: str, reason: str, actor: str, context: Any = None) -> None: ...
    def preempt_gpu(self, uuid: str, reason: str, context: Any = None) -> list[int]:
        return []

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> None: ...
    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> None: ...
    def fleet(self) -> dict[str, str]:
        return {}


_seq = itertools.count()


def _body(n: int) -> bytes:
    alerts = []
    for _ in range(n):
        i = next(_seq)
        alerts.append(
            {
                "status": "firing",
                "labels": {
                    "alertname": "THERMAL_WARNING",
                    "rule": "THERMAL_WARNING",
                    "severity": "warning",
                    "action": "notify",
                    "uuid": f"GPU-{i % 4096}",
                    "gpu": str(i % 8),
                    "instance": f"node{i % 512}:9786",
                },
                "annotations": {
                    "summary": "GPU temperature at or above 80 C",
                    "runbook_url": "https://example.org/runbooks/thermal",
                },
                "startsAt": "2024-05-01T10:00:00.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": f"{i:016x}",
            }
        )
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="THERMAL_WARNING"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "gpuwarden",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://am:9093",
            "alerts": alerts,
        }
    ).encode()


def _server(mode: str, folder: Path) -> tuple[App, int, Remediation | None]:
    app = App(BearerAuth(token="bench-operator-token"))
    rem = None
    if mode.startswith("durable"):
        rem = Remediation.create(
            str(folder / f"agent-{next(_seq)}.db"), parse(None), _NoScheduler(), credentials=Credentials(TOKEN.encode())
        )
        rem.register_routes(app)
        if mode == "durable":
            rem.start()
    else:

        def webhook(req: Any) -> Response:
            n = parse_notification(req.body)
            return Response(202, {"status": "accepted", "alerts": len(n.alerts)})

        app.add_route("POST", "/webhook/alertmanager", webhook, auth=Credentials(TOKEN.encode()), max_body=1 << 24)
    server = app.serve("127.0.0.1", 0)
    return app, server.port, rem


def _run(port: int, per_post: int, seconds: float, clients: int) -> tuple[float, list[float]]:
    bodies = [_body(per_post) for _ in range(200)]  # built up front: not part of the timing
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    counts = [0] * clients

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        j = k
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            conn.request(
                "POST",
                "/webhook/alertmanager",
                bodies[j % len(bodies)],
                {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise SystemExit(f"intake answered {resp.status}")
            mine.append(time.perf_counter() - t0)
            j += clients
        conn.close()
        counts[k] = len(mine)
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return sum(counts) * per_post / elapsed, latencies


def _big_notification(folder: Path, alerts: int = 25_000) -> str:
    """One notification of ``alerts`` alerts (about 10 MB, an alert storm in one group) through
    the real intake with ``max_body_bytes`` raised to 16 MiB: accepted, and how long it took."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        rem = Remediation.create(
            str(Path(tmp) / "big.db"),
            parse({"max_body_bytes": 16 << 20}),
            _NoScheduler(),
            credentials=Credentials(TOKEN.encode()),
        )
        app = App(BearerAuth(token="bench-operator-token"))
        rem.register_routes(app)
        port = app.serve("127.0.0.1", 0).port
        body = _body(alerts)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            t0 = time.perf_counter()
            conn.request(
                "POST",
                "/webhook/alertmanager",
                body,
                {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            took = time.perf_counter() - t0
        finally:
            app.shutdown()
            rem.stop()
    return (
        f"One notification of {alerts:,} alerts ({len(body) / 1e6:.1f} MB) with max_body_bytes: "
        f"16777216: HTTP {resp.status}, {answer.get('alerts', 0):,} alerts stored in {took:.2f} s."
    )


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    results: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-intake-", dir=None) as tmp:
        for _ in range(args.rounds):
            for per_post in (1, 100):
                for mode in MODES:
                    app, port, rem = _server(mode, Path(tmp))
                    try:
                        results.setdefault((mode, per_post), []).append(
                            _run(port, per_post, args.seconds, args.clients)
                        )
                    finally:
                        app.shutdown()
                        if rem is not None:
                            rem.stop()
    lines = [
        f"`python -m bench.intake --seconds {args.seconds:g} --clients {args.clients} "
        f"--rounds {args.rounds}` ({args.clients} keep-alive clients, median of "
        f"{args.rounds} interleaved rounds; p50/p99 over all POSTs of the mode)",
        "",
        "| alerts/POST | mode | alerts/s | POSTs/s | p50 ms | p99 ms | durable/baseline |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for per_post in (1, 100):
        base = statistics.median(r[0] for r in results[("baseline", per_post)])
        for mode in MODES:
            runs = results[(mode, per_post)]
            rate = statistics.median(r[0] for r in runs)
            lat = [x for r in runs for x in r[1]]
            ratio = f"{rate / base:.2f}" if mode != "baseline" else ""
            lines.append(
                f"| {per_post} | {mode} | {rate:,.0f} | {rate / per_post:,.0f} | "
                f"{_pct(lat, 0.5):.1f} | {_pct(lat, 0.99):.1f} | {ratio} |"
            )
    lines += ["", _big_notification(Path(tempfile.gettempdir()))]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text("## Webhook intake (issue 5)\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
