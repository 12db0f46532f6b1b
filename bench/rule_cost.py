"""What the generated rules cost to evaluate at fleet size, before and after a change to them.

    python -m bench.rule_cost [--sizes 128,256,512,1024] [--repeats 5] [--baseline COMMIT] [--json FILE]

For each size, a TSDB of N nodes x 8 GPUs is built once and shared by both rule sets:

- the samples are the virtual fleet's (``exporter/sim/virtual.py``, its own renderer of each node's
  ``/metrics``) on a manual clock, so the data is the same every run: nodes take turns among the
  boards in ``MIX`` (H100, A100, H200 profiles; V100 and the simulator's own board judged by the
  default), and ``FAULTS`` (XIDs, failing cooling, power spikes, ECC bursts) strike a few GPUs,
  so that alerts fire, XID series exist and the profile joins have GPUs on every side;
- ``promtool tsdb create-blocks-from openmetrics`` writes it (every 15 s: the families the rules
  read for the last ``WINDOW``, and ``gpu_up``/``up`` for the hour ``GPUMetricsVanished`` looks
  back over). Backfilling instead of scraping: no scraper, renderer or wall clock competes with
  the timed queries, and both rule sets read exactly the same samples;
- each rule set's recording rules are backfilled on top by ``promtool tsdb create-blocks-from
  rules`` against a Prometheus serving that TSDB, in dependency order (a record read by another
  record is written before it is read; one read through a range, the ratio that ``predict_linear``
  fits, over ``WINDOW``; the rest over the last minute), each set in its own copy of the data.

Then both copies are served by real Prometheus 2.42 (no scraping, no rule evaluation; started
first and their block compaction waited out) and every rule's ``expr`` is evaluated through
``/api/v1/query?time=T&stats=all``, the server's own ``evalTotalTime`` taken, ``--repeats`` times,
the two sets interleaved (ABBA...) so that their ratio is measured side by side. A rule's cost is
its median; a group's the sum of its rules'; a cycle's the sum of the groups'. Alerting rules are
timed as their expression (the rule manager adds the ALERTS series and ``for`` bookkeeping, the
same for both sets). The baseline is the generated rules of ``--baseline`` (``git show``), the
other set the working tree's rules/generated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpuwarden.exporter.sim.clock import ManualClock
from gpuwarden.exporter.sim.virtual import EXPORTER_PORT, VirtualFleet
from gpuwarden.procs import LOOPBACK, Proc, free_ports, stop_all, wait_http
from gpuwarden.prom import PrometheusClient
from gpuwarden.stack.launcher import PROMETHEUS_NAMES, find_binary

REPO = Path(__file__).resolve().parent.parent
GENERATED = "rules/generated"
RULE_FILES = ("gpuwarden-recording.rules.yml", "gpuwarden-alerts.rules.yml")
# The generated rules before the evaluation-cost change (one alert and record per rule x profile).
BASELINE = "07dce35"
JOB = "gpuwarden-exporter"
MIX = ("h100", "a100", "h200", "v100", "sim")
STEP = 15  # scrape and evaluation interval, seconds
WINDOW = 11 * 60  # every read family: the longest range the rules take over them is 10m
UP_WINDOW = 61 * 60  # gpu_up and up: GPUMetricsVanished looks back 1h
T_END = 1_700_012_400  # evaluation time: 100 min into a 2 h block, so the data fills one block
# (share of GPUs, fault), injected 10 minutes before T_END: in every window the rules look at.
FAULTS = (
    (0.005, {"kind": "xid", "xid": 79, "lose_gpu": False}),
    (0.02, {"kind": "cooling", "factor": 1.6}),
    (0.01, {"kind": "power_spike", "watts": 400}),
    (0.005, {"kind": "ecc", "correctable": 20}),
)
FAULT_AT = T_END - 600
# The families the generated rules read (the exporter's others would only lengthen the file).
READ = {
    "gpu_info",
    "gpu_up",
    "gpu_temperature_celsius",
    "gpu_temperature_threshold_celsius",
    "gpu_power_watts",
    "gpu_power_limit_watts",
    "gpu_memory_used_bytes",
    "gpu_memory_total_bytes",
    "gpu_ecc_errors_correctable_total",
    "gpu_ecc_errors_uncorrectable_total",
    "gpu_throttle_active",
    "gpu_xid_errors_total",
    "gpuwarden_exporter_nvml_up",
}


@dataclass(frozen=True)
class Rule:
    group: str
    name: str  # record or alert name, with its rule/profile labels
    expr: str
    record: str | None  # the recorded metric name, None for an alert
    labels: dict[str, str]


def load_rules(texts: list[str]) -> list[Rule]:
    out = []
    for text in texts:
        for g in yaml.safe_load(text)["groups"]:
            for r in g["rules"]:
                labels = {k: str(v) for k, v in (r.get("labels") or {}).items()}
                tag = ",".join(f"{k}={labels[k]}" for k in ("rule", "profile") if k in labels)
                name = (r.get("record") or r["alert"]) + (f"{{{tag}}}" if tag else "")
                out.append(Rule(g["name"], name, r["expr"], r.get("record"), labels))
    return out


def rule_sets(baseline: str) -> dict[str, list[Rule]]:
    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{baseline}:{path}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    before = [show(f"{GENERATED}/{f}") for f in RULE_FILES]
    after = [(REPO / GENERATED / f).read_text() for f in RULE_FILES]
    return {"before": load_rules(before), "after": load_rules(after)}


# --- the data ----------------------------------------------------------------------------------


def write_openmetrics(path: Path, nodes: int) -> int:
    """The fleet's samples, step by step (every series in time order, as promtool needs)."""
    clock = ManualClock(T_END - UP_WINDOW)
    per_model = {m: len(range(i, nodes, len(MIX))) for i, m in enumerate(MIX)}
    fleets = [VirtualFleet(n, model=m, clock=clock, node_prefix=f"{m}-node") for m, n in per_model.items() if n]
    targets = [
        (f, k, f'instance="{f.node_names[k]}:{EXPORTER_PORT}",job="{JOB}"') for f in fleets for k in range(f.nodes)
    ]
    faulted = False
    lines = 0
    with path.open("w") as out:
        t = T_END - UP_WINDOW
        while t <= T_END:
            if not faulted and t >= FAULT_AT:
                for f in fleets:
                    start = 0
                    for share, fault in FAULTS:
                        n = max(1, round(share * f.count))
                        f.inject(range(start, start + n), fault)
                        start += n
                faulted = True
            full = t > T_END - WINDOW
            buf: list[str] = []
            for f, k, extra in targets:
                buf.append(f"up{{{extra}}} 1 {t}\n")
                if not full:
                    # No fault before the window: every GPU is up (the fleet would say so).
                    buf.extend(
                        f"gpu_up{{{extra},{f._labels(i)}}} 1 {t}\n" for i in range(k * f.per_node, (k + 1) * f.per_node)
                    )
                    continue
                for line in f.render(k).decode().splitlines():
                    if not line or line[0] == "#":
                        continue
                    brace = line.find("{")
                    space = line.find(" ")
                    if brace != -1 and brace < space:
                        name = line[:brace]
                        if name in READ:
                            buf.append(f"{name}{{{extra},{line[brace + 1 :]} {t}\n")
                    elif line[:space] in READ:
                        buf.append(f"{line[:space]}{{{extra}}}{line[space:]} {t}\n")
            out.writelines(buf)
            lines += len(buf)
            t += STEP
            clock.advance(STEP)
        out.write("# EOF\n")
    return lines


def backfill_openmetrics(promtool: str, source: Path, data: Path) -> None:
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data)], check=True)


# --- serving it --------------------------------------------------------------------------------


class Server:
    """A Prometheus on ``data`` that scrapes and evaluates nothing."""

    def __init__(self, prometheus: str, data: Path, logs: Path) -> None:
        self.prometheus, self.data, self.logs = prometheus, data, logs
        self.proc: Proc | None = None
        self.port = 0

    def start(self) -> PrometheusClient:
        (self.port,) = free_ports(1)
        cfg = self.data.parent / f"{self.data.name}.yml"
        cfg.write_text("global: {scrape_interval: 15s, evaluation_interval: 15s}\n")
        self.proc = Proc(
            [
                self.prometheus,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.data}",
                "--storage.tsdb.retention.time=100y",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--query.timeout=5m",
            ],
            self.logs / f"{self.data.name}.log",
            name=self.data.name,
            append=True,
        )
        wait_http(f"http://{LOOPBACK}:{self.port}/-/ready", 300, self.proc)
        return PrometheusClient(f"http://{LOOPBACK}:{self.port}", timeout=600)

    def stop(self) -> None:
        if self.proc is not None:
            stop_all([self.proc])
            self.proc = None

    def settle(self, timeout: float = 600) -> None:
        """Waits until the TSDB holds no overlapping blocks (the backfilled records overlap the
        samples; Prometheus merges them within a minute or two), so no compaction runs while the
        queries are timed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = sorted(
                (m["minTime"], m["maxTime"]) for m in (json.loads(p.read_text()) for p in self.data.glob("*/meta.json"))
            )
            if spans and all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)):
                time.sleep(2)  # the reload that follows a compaction
                return
            time.sleep(5)
        raise RuntimeError(f"{self.data}: blocks still overlapping after {timeout:g}s")


def record_stages(rules: list[Rule]) -> list[list[Rule]]:
    """The recording rules in dependency order: each stage reads only earlier stages' records."""
    records = [r for r in rules if r.record]
    names = {str(r.record) for r in records}
    done: set[str] = set()
    stages = []
    while records:
        ready = [r for r in records if not ({n for n in names if re.search(rf"\b{re.escape(n)}\b", r.expr)} - done)]
        if not ready:
            raise RuntimeError("recording rules that read each other in a cycle")
        stages.append(ready)
        done |= {str(r.record) for r in ready}
        records = [r for r in records if r not in ready]
    return stages


def backfill_records(promtool: str, server: Server, rules: list[Rule], work: Path) -> None:
    """Each stage of the set's recording rules, written into the set's data by promtool. The
    rule file's path and group name are the same for every stage and set: promtool offsets its
    evaluations by their hash, so both sets record at the same timestamps."""
    ranged = {
        str(r.record)
        for r in rules
        if r.record and any(re.search(rf"\b{re.escape(str(r.record))}\b[^\[\s]*\[", o.expr) for o in rules)
    }
    file, out = work / "records.rules.yml", work / "record-blocks"
    for stage in record_stages(rules):
        server.start()
        shutil.rmtree(out, ignore_errors=True)
        for span, part in (
            (WINDOW, [r for r in stage if r.record in ranged]),
            (60, [r for r in stage if r.record not in ranged]),
        ):
            if not part:
                continue
            records = [{"record": r.record, "expr": r.expr, "labels": r.labels} for r in part]
            file.write_text(yaml.safe_dump({"groups": [{"name": "records", "rules": records}]}, sort_keys=False))
            subprocess.run(
                [
                    promtool, "tsdb", "create-blocks-from", "rules", "-q",
                    f"--url=http://{LOOPBACK}:{server.port}",
                    f"--start={T_END - span + STEP}", f"--end={T_END}", f"--eval-interval={STEP}s",
                    f"--output-dir={out}", str(file),
                ],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        server.stop()
        for block in out.iterdir():
            block.rename(server.data / block.name)


# --- timing ------------------------------------------------------------------------------------


def evaluate(client: PrometheusClient, expr: str) -> tuple[float, list[dict[str, Any]]]:
    """(the server's evalTotalTime, the result) of ``expr`` at T_END."""
    data = client.get("/api/v1/query", {"query": expr, "time": str(T_END), "stats": "all"}, what=expr)
    return float(data["stats"]["timings"]["evalTotalTime"]), data["result"]


Output = set[tuple[str, str, str, str, str]]


def outputs(r: Rule, result: list[dict[str, Any]]) -> Output:
    """What a rule says per GPU: (rule, instance, gpu, profile, value); ``profile`` the series'
    own or the rule's static one (a baseline profile version's)."""
    rule = r.labels.get("rule", "")
    return {
        (
            rule,
            m["metric"].get("instance", ""),
            m["metric"].get("gpu", ""),
            m["metric"].get("profile", r.labels.get("profile", "")),
            f"{float(m['value'][1]):.6g}",
        )
        for m in result
    }


def measure(
    sets: dict[str, list[Rule]], clients: dict[str, PrometheusClient], repeats: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Output]]]:
    """({set: {rule: median seconds}}, {set: {alert or record name: what its rules say}}), the
    sets taking turns (ABBA) round by round."""
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in sets}
    said: dict[str, dict[str, Output]] = {s: {} for s in sets}
    order = list(sets)
    for rep in range(repeats):
        for s in order if rep % 2 == 0 else order[::-1]:
            for r in sets[s]:
                seconds, result = evaluate(clients[s], r.expr)
                samples[s].setdefault(f"{r.group}/{r.name}", []).append(seconds)
                if rep == 0:
                    said[s].setdefault(str(r.record or r.name.split("{")[0]), set()).update(outputs(r, result))
    return {s: {k: statistics.median(v) for k, v in per.items()} for s, per in samples.items()}, said


def disagreements(said: dict[str, dict[str, Output]]) -> list[str]:
    """Alerts and records both sets have whose per-GPU outputs differ (should be none)."""
    before, after = said["before"], said["after"]
    return sorted(n for n in before.keys() & after.keys() if before[n] != after[n])


def summarize(costs: dict[str, float]) -> dict[str, Any]:
    groups: dict[str, float] = {}
    for key, v in costs.items():
        groups[key.split("/", 1)[0]] = groups.get(key.split("/", 1)[0], 0.0) + v
    top = sorted(costs.items(), key=lambda kv: -kv[1])[:6]
    return {"groups": groups, "total": sum(groups.values()), "rules": len(costs), "top": top, "costs": costs}


def run_size(nodes: int, sets: dict[str, list[Rule]], repeats: int, work: Path, keep: bool) -> dict[str, Any]:
    promtool, prometheus = shutil.which("promtool"), find_binary(PROMETHEUS_NAMES, "Prometheus")
    if promtool is None:
        raise SystemExit("promtool not found: apt-get install prometheus")
    w = work / f"n{nodes}"
    w.mkdir(parents=True)
    t0 = time.monotonic()
    om = w / "fleet.om"
    lines = write_openmetrics(om, nodes)
    raw = w / "raw"
    backfill_openmetrics(promtool, om, raw)
    if not keep:
        om.unlink()
    built = time.monotonic() - t0
    servers = {}
    for s, rules in sets.items():
        data = w / s
        shutil.copytree(raw, data, copy_function=os.link)  # blocks are immutable: share them
        servers[s] = Server(prometheus, data, w)
        backfill_records(promtool, servers[s], rules, w)
    try:
        clients = {s: srv.start() for s, srv in servers.items()}
        for srv in servers.values():
            srv.settle()
        [count] = clients["after"].query(f'count(gpu_up{{job="{JOB}"}})', at=T_END)
        medians, said = measure(sets, clients, repeats)
    finally:
        for srv in servers.values():
            srv.stop()
    if not keep:
        shutil.rmtree(w)
    return {
        "nodes": nodes,
        "gpus": int(count.values[-1]),
        "compared": {n: len(said["after"][n]) for n in sorted(said["before"].keys() & said["after"].keys())},
        "disagree": disagreements(said),
        "samples": lines,
        "build_seconds": round(built, 1),
        **{s: summarize(m) for s, m in medians.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rule_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="128,256,512,1024", help="node counts (8 GPUs each)")
    p.add_argument("--repeats", type=int, default=5, help="timings per rule and set (median)")
    p.add_argument("--baseline", default=BASELINE, help="commit whose rules/generated is the baseline")
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--workdir", type=Path, help="build the TSDBs here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the TSDBs and their inputs")
    args = p.parse_args(argv)
    sets = rule_sets(args.baseline)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rule-cost-"))
    rows = []
    for nodes in (int(x) for x in args.sizes.split(",")):
        row = run_size(nodes, sets, args.repeats, work, args.keep)
        rows.append(row)
        print(_line(row), flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        for s in sets:
            growth = (b[s]["total"] / b["gpus"]) / (a[s]["total"] / a["gpus"])
            print(f"{s}: per-GPU cost {b['nodes']} vs {a['nodes']} nodes: x{growth:.2f} (1.00 = linear in GPUs)")
    last = rows[-1]
    for s in sets:
        print(f"costliest at {last['nodes']} nodes ({s}):")
        for name, v in last[s]["top"]:
            print(f"  {v * 1000:8.1f} ms  {name}")
    if args.json:
        args.json.write_text(json.dumps({"baseline": args.baseline, "repeats": args.repeats, "rows": rows}, indent=2))
    if not args.workdir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _line(r: dict[str, Any]) -> str:
    def one(s: str) -> str:
        g = " ".join(f"{k.split('.')[-1]}={v * 1000:.0f}" for k, v in r[s]["groups"].items())
        return f"{s}: {r[s]['total'] * 1000:.0f} ms ({r[s]['rules']} rules: {g})"

    ratio = r["before"]["total"] / r["after"]["total"]
    same = f"same output per GPU: {len(r['compared']) - len(r['disagree'])}/{len(r['compared'])} alerts and records"
    differ = f" (differ: {', '.join(r['disagree'])})" if r["disagree"] else ""
    return (
        f"{r['nodes']} nodes / {r['gpus']} GPUs: {one('before')} | {one('after')} | before/after x{ratio:.1f}"
        f"\n  {same}{differ}"
    )


if __name__ == "__main__":
    sys.exit(main())
