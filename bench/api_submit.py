"""Submit throughput through the agent's HTTP API, against calling the scheduler in-process.

    python -m bench.api_submit [--jobs 2000] [--clients 4] [--rounds 3]

Same run, interleaved rounds, each on a fresh database (WAL, synchronous=NORMAL; tracking
executor, no-op tracer): ``Scheduler.submit`` called directly (the floor: validation + one
SQLite commit), then POST /api/v1/jobs from ``--clients`` threads on keep-alive connections
(bearer auth, JSON Schema validation, HTTP parsing on top). The agent's dispatcher runs during
the HTTP rounds, so placement competes with intake as it does in production.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from gpuwarden.scheduler_agent.config import load
from gpuwarden.scheduler_agent.scheduler import Scheduler
from gpuwarden.scheduler_agent.server import Agent
from gpuwarden.scheduler_agent.store import Database

TOKEN = "bench-token"


def _config(d: Path) -> Path:
    (d / "token").write_text(TOKEN)
    cfg = d / "agent.yaml"
    cfg.write_text(
        "web: {listen_address: '127.0.0.1:0', token_file: token}\n"
        "database: {path: agent.db}\n"
        "inventory: {nodes: [" + ", ".join(f"{{name: n{i}, count: 8}}" for i in range(64)) + "]}\n"
        "executor: {kind: tracking}\n"
    )
    return cfg


def direct(jobs: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        db = Database(Path(d) / "a.db")
        s = Scheduler(db, tracer_provider=TracerProvider())
        t0 = time.perf_counter()
        for i in range(jobs):
            s.submit(f"j{i}", 1 + i % 4)
        rate = jobs / (time.perf_counter() - t0)
        s.close()
        db.close()
    return rate


def over_http(jobs: int, clients: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        agent = Agent(load(_config(Path(d))), tracer_provider=TracerProvider())
        host, port = agent.start()
        errors: list[str] = []

        def worker(n: int, offset: int) -> None:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            for i in range(n):
                conn.request("POST", "/api/v1/jobs", json.dumps({"name": f"j{offset + i}", "gpus": 1 + i % 4}), headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 201:
                    errors.append(str(resp.status))
            conn.close()

        per = jobs // clients
        threads = [threading.Thread(target=worker, args=(per, k * per)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = per * clients / (time.perf_counter() - t0)
        agent.close()
        if errors:
            raise SystemExit(f"{len(errors)} submits failed: {errors[:5]}")
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    d, h = [], []
    for _ in range(a.rounds):
        d.append(direct(a.jobs))
        h.append(over_http(a.jobs, a.clients))
    md, mh = statistics.median(d), statistics.median(h)
    print(f"## submit throughput: {a.jobs} jobs per round, {a.clients} HTTP clients, {a.rounds} interleaved rounds")
    print("| path | submits / s (median) | rounds | vs in-process |")
    print("|---|---:|---|---:|")
    print(f"| Scheduler.submit in-process | {md:,.0f} | {', '.join(f'{x:,.0f}' for x in d)} | 1.00x |")
    print(f"| POST /api/v1/jobs | {mh:,.0f} | {', '.join(f'{x:,.0f}' for x in h)} | {mh / md:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
