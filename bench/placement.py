"""Placements per second: the free-count index against a scan-everything placement, same run.

    python -m bench.placement [--nodes 1024] [--gpus-per-node 8] [--queued 10000] [--rounds 3]

1. Steady state on N nodes x 8 GPUs with a queue of 10,000 jobs (1-8 GPUs each): each placement
   takes the next queued job; whenever fewer than 10 % of the GPUs are free, a random running
   job ends. Indexed (``FreeIndex.place``) and naive (``naive_place``: scan every GPU) blocks are
   interleaved, ``--rounds`` times, and the median of each is reported.
2. Scaling: the same on 128, 256, 512 and 1,024 nodes; cost per placement for both.
3. End to end: ``Scheduler.schedule_once`` with 10,000 queued jobs on SQLite (tracking executor,
   no-op tracer), i.e. placement plus commit, spans and bookkeeping.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from opentelemetry.trace import NoOpTracerProvider

from gpuwarden.scheduler_agent.placement import FreeIndex, NaiveGpu, naive_place
from gpuwarden.scheduler_agent.scheduler import Scheduler, SchedulerOptions
from gpuwarden.scheduler_agent.store import Database

SIZES = (1, 1, 1, 1, 2, 2, 2, 4, 4, 8)


def _jobs(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice(SIZES) for _ in range(n)]


def run_indexed(nodes: int, per_node: int, jobs: list[int], placements: int, seed: int, risky: bool = False) -> float:
    """Seconds per placement with the index."""
    idx = FreeIndex()
    total = nodes * per_node
    for n in range(nodes):
        for k in range(per_node):
            idx.add(f"n{n}", f"u{n}-{k}", k)
    risk_table = {f"u{n}-{k}": ((n * 7 + k) % 10) / 10 for n in range(nodes) for k in range(per_node)}
    risk = risk_table.__getitem__ if risky else (lambda u: 0.0)
    rng = random.Random(seed)
    running: list = []
    done, q = 0, 0
    t0 = time.perf_counter()
    while done < placements:
        p = idx.place(jobs[q % len(jobs)], risk)
        q += 1
        if p is not None:
            idx.take(p)
            running.append(p)
            done += 1
        while idx.free_count() < total // 10 or (p is None and running):
            gone = running.pop(rng.randrange(len(running)))
            for u, i in zip(gone.uuids, gone.indexes, strict=False):
                idx.add(gone.node, u, i)
            p = gone if p is None else p
    return (time.perf_counter() - t0) / placements


def run_naive(nodes: int, per_node: int, jobs: list[int], placements: int, seed: int) -> float:
    gpus = [NaiveGpu(f"n{n}", k, f"u{n}-{k}") for n in range(nodes) for k in range(per_node)]
    by_uuid = {g.uuid: g for g in gpus}
    total = len(gpus)
    free = total
    rng = random.Random(seed)
    running: list = []
    done, q = 0, 0
    t0 = time.perf_counter()
    while done < placements:
        p = naive_place(gpus, jobs[q % len(jobs)])
        q += 1
        if p is not None:
            for u in p.uuids:
                by_uuid[u].allocated = True
            free -= len(p.uuids)
            running.append(p)
            done += 1
        while free < total // 10 or (p is None and running):
            gone = running.pop(rng.randrange(len(running)))
            for u in gone.uuids:
                by_uuid[u].allocated = False
            free += len(gone.uuids)
            p = gone if p is None else p
    return (time.perf_counter() - t0) / placements


def run_scheduler(nodes: int, per_node: int, queued: int) -> tuple[int, float]:
    """(placements, seconds) of one schedule_once pass over `queued` jobs, committed to SQLite."""
    with tempfile.TemporaryDirectory() as d:
        db = Database(Path(d) / "bench.db")
        s = Scheduler(db, options=SchedulerOptions(), tracer_provider=NoOpTracerProvider())
        with db.transaction():
            for n in range(nodes):
                for k in range(per_node):
                    s.register_gpu(f"n{n}", k, f"u{n}-{k}")
        with db.transaction():
            for i, size in enumerate(_jobs(queued, 3)):
                s.submit(f"j{i}", size)
        t0 = time.perf_counter()
        placed = s.schedule_once()
        elapsed = time.perf_counter() - t0
        s.close()
        db.close()
    return len(placed), elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1024)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--queued", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--indexed-placements", type=int, default=20000)
    ap.add_argument("--naive-placements", type=int, default=300)
    a = ap.parse_args(argv)
    jobs = _jobs(a.queued, 1)

    print(
        f"## 1. steady state: {a.nodes} nodes x {a.gpus_per_node} GPUs, {a.queued} queued jobs, "
        f"{a.rounds} interleaved rounds"
    )
    fast, slow, risky = [], [], []
    for r in range(a.rounds):
        fast.append(run_indexed(a.nodes, a.gpus_per_node, jobs, a.indexed_placements, r))
        slow.append(run_naive(a.nodes, a.gpus_per_node, jobs, a.naive_placements, r))
        risky.append(run_indexed(a.nodes, a.gpus_per_node, jobs, a.indexed_placements, r, risky=True))
    f, s, k = statistics.median(fast), statistics.median(slow), statistics.median(risky)
    print("| placement | µs / placement | placements / s | vs naive |")
    print("|---|---:|---:|---:|")
    print(f"| naive scan | {s * 1e6:,.1f} | {1 / s:,.0f} | 1.0x |")
    print(f"| free-count index | {f * 1e6:,.1f} | {1 / f:,.0f} | {s / f:,.1f}x |")
    print(f"| free-count index + risk hook | {k * 1e6:,.1f} | {1 / k:,.0f} | {s / k:,.1f}x |")

    print("\n## 2. scaling with the number of nodes (median of rounds)")
    print("| nodes | index µs | naive µs | index cost vs 128 nodes | naive cost vs 128 nodes |")
    print("|---:|---:|---:|---:|---:|")
    base = None
    for nodes in (128, 256, 512, 1024):
        fi = statistics.median(
            run_indexed(nodes, a.gpus_per_node, jobs, a.indexed_placements // 2, r) for r in range(a.rounds)
        )
        ni = statistics.median(run_naive(nodes, a.gpus_per_node, jobs, a.naive_placements, r) for r in range(a.rounds))
        base = base or (fi, ni)
        print(f"| {nodes} | {fi * 1e6:,.1f} | {ni * 1e6:,.1f} | {fi / base[0]:.2f}x | {ni / base[1]:.2f}x |")

    print(f"\n## 3. end to end: Scheduler.schedule_once, {a.queued} queued, SQLite WAL")
    placed, secs = run_scheduler(a.nodes, a.gpus_per_node, a.queued)
    print(
        f"| placements in one pass | seconds | placements / s |\n|---:|---:|---:|\n"
        f"| {placed} | {secs:.3f} | {placed / secs:,.0f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
