"""The loop at fleet scale: what the generated rules, the inventory and the predictor cost as the
fleet grows, and how an alert storm is acted on.

    python -m bench.fleet [--nodes 1024] [--sizes 128,256,512,1024] [--storm 0.05] [--json FILE]

For each size: a virtual fleet (``exporter/sim/virtual.py``: N nodes of 8 GPUs, each node its own
scrape target with its own ``instance`` and ``up``), real Prometheus 2.42 with the SHIPPED rules
(rules/generated, unchanged) scraping and evaluating every ``--interval`` (15 s), real
Alertmanager with the SHIPPED routing, and the real agent (inventory from Prometheus, predictor
on, the simulator actuator pointed at the virtual fleet), each started fresh. After the fleet is
scraped and the agent knows it, ``--cycles`` evaluation cycles are sampled: GPUs, head series,
scrape duration, every gpuwarden rule group's ``prometheus_rule_group_last_duration_seconds``
(summed per cycle), Prometheus' resident memory, the agent's
``gpuwarden_inventory_refresh_duration_seconds`` and ``gpuwarden_predictor_run_duration_seconds``.

At the largest size, two storms on ``--storm`` of the GPUs (mixed: a 500 W power spike on a
third: POWER_CRITICAL preempt, THROTTLING, then THERMAL_WARNING and THERMAL_CRITICAL throttle as
the board heats; an uncorrectable ECC error on a third: quarantine; 20 correctable errors on a
third: ECC_ERRORS_SPIKE notify): first with a budget sized for the storm, then (a fresh agent,
other GPUs) with the default budget. Per storm: alerts fired (Prometheus' ALERTS for the storm's
GPUs), received by the agent (its audit trail), acted / skipped by budget per policy, lost (fired,
not suppressed by Alertmanager's inhibition, and absent from the audit), and fault-to-action
p50/p99 per rule against the rule's floor (``for`` + scrape + evaluation + the agent route's
group_wait), counted from the moment the raw value crossed the threshold (the fault itself for
power and ECC; the virtual fleet's recorded crossing for temperature).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.procs import LOOPBACK, Proc, ProcError, console_script, free_ports, stop_all, wait_http
from gpuwarden.prom import PrometheusClient
from gpuwarden.rules import config as rules_config
from gpuwarden.scheduler_agent.client import ApiError, Client
from gpuwarden.stack import configs, harness
from gpuwarden.stack.launcher import ALERTMANAGER_NAMES, PROMETHEUS_NAMES, find_binary
from gpuwarden.stack.view import NotificationSink

DEFAULT_NODES = 1024
INVENTORY_REFRESH_SECONDS = 30.0  # the agent's defaults for both (config.schema.json, predictor plugin)
STORM_FAULTS = (
    {"kind": "power_spike", "watts": 500},
    {"kind": "ecc", "uncorrectable": 1},
    {"kind": "ecc", "correctable": 20},
)
GROUP_FILES = ("gpuwarden-alerts.rules.yml", "gpuwarden-recording.rules.yml")


def _get(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def _samples(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] of a /metrics page."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(_get(url + "/metrics")):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


class FleetStack:
    """Virtual fleet, agent, Alertmanager, Prometheus (in that order), stopped by pid."""

    def __init__(
        self,
        workdir: Path,
        nodes: int,
        interval: float,
        budget: dict[str, Any] | None,
        agent_period: float = INVENTORY_REFRESH_SECONDS,
    ) -> None:
        self.workdir, self.nodes, self.interval, self.budget = workdir, nodes, interval, budget
        self.agent_period = agent_period  # inventory refresh and predictor period
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        p = free_ports(6)
        self.ports = configs.Ports(
            exporter=p[0], agent=p[1], prometheus=p[2], alertmanager=p[3], sim_control=p[4], sink=p[5]
        )
        self.procs: list[Proc] = []
        self.sink = NotificationSink(self.ports.sink)
        self.agent_generation = 0

    def url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{port}"

    def _run(self, name: str, argv: list[str], ready: str, cwd: Path | None = None, timeout: float = 120.0) -> Proc:
        proc = Proc(argv, self.workdir / "logs" / f"{name}.log", cwd=cwd, name=name, append=True)
        self.procs.append(proc)
        wait_http(ready, timeout, proc)
        return proc

    def start(self) -> FleetStack:
        w, ports = self.workdir, self.ports
        self.sink.start()
        targets = w / "targets.json"
        self._run(
            "virtual-fleet",
            [
                sys.executable,
                "-m",
                "gpuwarden.exporter.sim.virtual_server",
                f"--nodes={self.nodes}",
                f"--web.listen-address={LOOPBACK}:{ports.exporter}",
                f"--sim.control-address={LOOPBACK}:{ports.sim_control}",
                f"--targets-file={targets}",
            ],
            self.url(ports.sim_control) + "/api/v1/gpus?node=node-0000",
        )
        token, webhook = configs.write_token(w, "operator"), configs.write_token(w, "webhook")
        self.token = token.read_text().strip()
        self.start_agent(self.budget)
        am = w / "alertmanager.yml"
        am.write_text(yaml.safe_dump(configs.alertmanager_config(ports, webhook), sort_keys=False))
        self._run(
            "alertmanager",
            [
                find_binary(ALERTMANAGER_NAMES, "Alertmanager"),
                f"--config.file={am}",
                f"--storage.path={w / 'am-data'}",
                f"--web.listen-address={LOOPBACK}:{ports.alertmanager}",
                "--cluster.listen-address=",
            ],
            self.url(ports.alertmanager) + "/-/ready",
        )
        iv = f"{self.interval:g}s"
        prom = {
            "global": {"scrape_interval": iv, "evaluation_interval": iv, "scrape_timeout": iv},
            "rule_files": sorted(str(p) for p in configs.RULES_DIR.glob("*.rules.yml")),
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{LOOPBACK}:{ports.alertmanager}"]}]}]},
            "scrape_configs": [
                {"job_name": "gpuwarden-exporter", "file_sd_configs": [{"files": [str(targets)]}]},
                # The agent's per-GPU series carry the GPU's instance: keep it (honor_labels).
                {
                    "job_name": "gpuwarden-agent",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"{LOOPBACK}:{ports.agent}"]}],
                },
            ],
        }
        (w / "prometheus.yml").write_text(yaml.safe_dump(prom, sort_keys=False))
        self._run(
            "prometheus",
            [
                find_binary(PROMETHEUS_NAMES, "Prometheus"),
                f"--config.file={w / 'prometheus.yml'}",
                f"--storage.tsdb.path={w / 'prom-data'}",
                f"--web.listen-address={LOOPBACK}:{ports.prometheus}",
            ],
            self.url(ports.prometheus) + "/-/ready",
        )
        return self

    def start_agent(self, budget: dict[str, Any] | None) -> None:
        """A fresh agent (its own database) with ``budget`` (None: the default budget)."""
        for p in [p for p in self.procs if p.name == "agent"]:
            stop_all([p])
            self.procs.remove(p)
        self.agent_generation += 1
        w = self.workdir / f"agent-{self.agent_generation}"
        w.mkdir(exist_ok=True)
        settings = configs.Settings(simulated=True, throttle_hold_down_seconds=30.0)
        doc = configs.agent_config(
            w, self.ports, self.workdir / "agent-operator.token", self.workdir / "agent-webhook.token", settings
        )
        doc["database"]["path"] = str(w / "agent.db")
        doc["executor"] = {"kind": "tracking"}
        doc["inventory"]["prometheus"]["refresh_seconds"] = self.agent_period
        doc["predictor"]["period_seconds"] = self.agent_period
        if budget is not None:
            doc["remediation"]["budget"] = budget
        (w / "agent.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        self._run(
            "agent",
            [console_script("gpuwarden-agent"), "serve", f"--config={w / 'agent.yaml'}"],
            self.url(self.ports.agent) + "/healthz",
            cwd=w,
        )

    def wait_agent_gpus(self) -> None:
        _wait(
            lambda: len(self.agent("/api/v1/gpus")) >= self.nodes * 8,
            self.agent_period * 3 + 60,
            f"the agent to discover {self.nodes * 8} GPUs",
        )

    def stop(self) -> None:
        stop_all(self.procs)
        self.sink.stop()

    # -- reading -----------------------------------------------------------------------------
    @property
    def prom(self) -> PrometheusClient:
        return PrometheusClient(self.url(self.ports.prometheus), timeout=60)

    def agent(self, path: str) -> Any:
        return Client(self.url(self.ports.agent), self.token, 60).call("GET", path)

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        return Client(self.url(self.ports.sim_control), None, 60).call(method, path, body)

    def scalar(self, expr: str) -> float:
        r = self.prom.query(expr)
        return float(r[0].values[-1]) if r else float("nan")

    def actions(self, since_id: int = 0) -> list[dict[str, Any]]:
        """The agent's whole audit trail (newest first, paged)."""
        out: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            q = {"limit": 10000, **({"before_id": before} if before else {})}
            page = self.agent("/api/v1/actions?" + urllib.parse.urlencode(q))["actions"]
            out += [a for a in page if a["id"] > since_id]
            if len(page) < 10000 or page[-1]["id"] <= since_id:
                return out
            before = page[-1]["id"]


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 2.0) -> Any:
    """``predicate()``'s first truthy value; LoopError naming ``what`` after ``timeout`` s."""

    def guarded() -> Any:
        try:
            return predicate()
        except ApiError:  # the agent not ready yet
            return None

    return harness.poll(guarded, timeout, what, interval)


def measure(stack: FleetStack, cycles: int) -> dict[str, Any]:
    """Samples ``cycles`` evaluation cycles once the fleet is scraped and the agent knows it."""
    _wait(
        lambda: stack.scalar('count(up{job="gpuwarden-exporter"} == 1)') == stack.nodes,
        10 * stack.interval + 60,
        f"Prometheus to scrape all {stack.nodes} nodes",
    )
    stack.wait_agent_gpus()
    # The predictor needs a few scrapes of history; its duration counts once it ran over a full fleet.
    _wait(
        lambda: _value(_samples(stack.url(stack.ports.agent)), "gpuwarden_predictor_run_duration_seconds") > 0,
        stack.agent_period * 3 + 60,
        "a predictor run",
    )
    samples: list[dict[str, float]] = []
    group_costs: dict[str, list[float]] = {}
    last_eval = 0.0
    while len(samples) < cycles:
        time.sleep(stack.interval)
        pm = _samples(stack.url(stack.ports.prometheus))
        groups = {
            lab["rule_group"]: v
            for lab, v in pm.get("prometheus_rule_group_last_duration_seconds", [])
            if any(f in lab["rule_group"] for f in GROUP_FILES)
        }
        evals = [v for lab, v in pm.get("prometheus_rule_group_last_evaluation_timestamp_seconds", [])]
        if not groups or max(evals, default=0) == last_eval:
            continue  # no new evaluation since the last sample
        last_eval = max(evals)
        for g, v in groups.items():
            group_costs.setdefault(g.split(";")[-1], []).append(v)
        am = _samples(stack.url(stack.ports.agent))
        samples.append(
            {
                "rule_eval_seconds": sum(groups.values()),
                "series": _value(pm, "prometheus_tsdb_head_series"),
                "prometheus_rss_bytes": _value(pm, "process_resident_memory_bytes"),
                "inventory_refresh_seconds": _value(am, "gpuwarden_inventory_refresh_duration_seconds"),
                "predictor_cycle_seconds": _value(am, "gpuwarden_predictor_run_duration_seconds"),
                "scrape_seconds_avg": stack.scalar('avg(scrape_duration_seconds{job="gpuwarden-exporter"})'),
                "scrape_seconds_max": stack.scalar('max(scrape_duration_seconds{job="gpuwarden-exporter"})'),
            }
        )
    return {
        "nodes": stack.nodes,
        "gpus": int(stack.scalar('count(gpu_info{job="gpuwarden-exporter"})')),
        "series": int(max(s["series"] for s in samples)),
        "eval_interval_seconds": stack.interval,
        "rule_eval_seconds": float(np.median([s["rule_eval_seconds"] for s in samples])),
        "rule_eval_seconds_max": max(s["rule_eval_seconds"] for s in samples),
        "rule_groups_seconds": {g: float(np.median(v)) for g, v in sorted(group_costs.items())},
        "scrape_duration_seconds_avg": float(np.median([s["scrape_seconds_avg"] for s in samples])),
        "scrape_duration_seconds_max": max(s["scrape_seconds_max"] for s in samples),
        "prometheus_rss_bytes": int(max(s["prometheus_rss_bytes"] for s in samples)),
        "inventory_refresh_seconds": max(s["inventory_refresh_seconds"] for s in samples),
        "inventory_refresh_period_seconds": stack.agent_period,
        "predictor_cycle_seconds": max(s["predictor_cycle_seconds"] for s in samples),
        "predictor_period_seconds": stack.agent_period,
    }


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    values = samples.get(name, [])
    return float(values[0][1]) if values else 0.0


def _floors(interval: float) -> dict[str, float]:
    cfg = rules_config.load()
    out = {}
    for rule in harness.SEED_RULES:
        spec = cfg.rule_for(rule, None)
        waits = dict(harness.routes_for({"rule": rule, "severity": spec.severity, "action": spec.action}))
        out[rule] = spec.for_seconds + 2 * interval + waits[harness.AGENT_RECEIVER]
    return out


def storm(
    stack: FleetStack,
    fraction: float,
    seed: int,
    exclude: set[str],
    timeout: float,
    faults: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One storm on the running stack; waits until every fired alert is in the audit (or timeout)."""
    cfg = rules_config.load()
    model = stack.sim("GET", "/api/v1/gpus?node=node-0000")["gpus"][0]["name"]
    thermal = {r: cfg.rule_for(r, model).threshold for r in ("THERMAL_WARNING", "THERMAL_CRITICAL")}
    first_id = max((a["id"] for a in stack.actions()), default=0)
    doc = {
        "fraction": fraction,
        "faults": faults or list(STORM_FAULTS),
        "seed": seed,
        "exclude": sorted(exclude),
        "watch": [{"metric": "temperature_celsius", "above": v} for v in thermal.values()]
        + [{"metric": "throttle_active", "above": 0.5}],
    }
    started = time.time()
    injected = stack.sim("POST", "/api/v1/storm", doc)
    gpus = injected["gpus"]
    uuids = {g["uuid"] for g in gpus}
    floors = _floors(stack.interval)
    for_seconds = {rule: cfg.rule_for(rule, model).for_seconds for rule in floors}
    heats = any(f["kind"] in ("power_spike", "cooling") for f in doc["faults"])
    # A board heats for ~70 s before the thermal rules can see it; ECC faults show at once.
    expected_by = started + (max(floors.values()) + 120 if heats else 4 * stack.interval + 10)

    def fired() -> set[tuple[str, str]]:
        rng = f"{int(time.time() - started) + 60}s"
        out = set()
        for s in stack.prom.query(f'max_over_time(ALERTS{{alertstate="firing"}}[{rng}])'):
            if s.labels.get("uuid") in uuids and s.labels.get("rule") in harness.SEED_RULES:
                out.add((s.labels["uuid"], s.labels["rule"]))
        return out

    def suppressed() -> set[tuple[str, str]]:
        am = Client(stack.url(stack.ports.alertmanager), None, 60).call("GET", "/api/v2/alerts")
        return {
            (a["labels"].get("uuid", ""), a["labels"].get("rule", ""))
            for a in am
            if a.get("status", {}).get("state") == "suppressed"
        }

    def audit() -> dict[tuple[str, str], dict[str, Any]]:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for a in sorted(stack.actions(first_id), key=lambda a: a["id"]):
            if a["uuid"] in uuids and a["status"] == "firing":
                out.setdefault((a["uuid"], a["rule"]), a)
        return out

    while True:
        time.sleep(stack.interval)
        f, got = fired(), audit()
        missing = f - set(got) - suppressed()
        if time.time() > expected_by and not missing:
            break
        if time.time() > started + timeout:
            break
    f, got, quiet = fired(), audit(), suppressed()
    lost = sorted(f - set(got) - quiet)
    crossings = stack.sim("GET", "/api/v1/storm/crossings")["crossings"]
    crossed_key = {
        "THERMAL_WARNING": f"temperature_celsius>{thermal['THERMAL_WARNING']:g}",
        "THERMAL_CRITICAL": f"temperature_celsius>{thermal['THERMAL_CRITICAL']:g}",
        "THROTTLING": "throttle_active>0.5",
    }
    latency: dict[str, list[float]] = {}
    by_policy: dict[str, dict[str, int]] = {}
    for (uuid, rule), a in got.items():
        policy = by_policy.setdefault(a["action"], {"received": 0, "acted": 0, "skipped_budget": 0, "other": 0})
        policy["received"] += 1
        if a["outcome"] in ("acted", "recorded", "noop"):
            policy["acted"] += 1
        elif a["outcome"] in ("skipped_budget", "skipped_breaker"):
            policy["skipped_budget"] += 1
        else:
            policy["other"] += 1
        if a["outcome"] in ("skipped_budget", "skipped_breaker"):
            continue
        # From the start of the episode that fired the alert: the last rise above the threshold
        # at least `for` before the action (a throttle that cleared and came back starts anew).
        t0 = injected["at"]
        if rule in crossed_key:
            edges = crossings.get(uuid, {}).get(crossed_key[rule], [])
            t0 = max((e for e in edges if e <= a["at"] - for_seconds[rule]), default=edges[0] if edges else t0)
        latency.setdefault(rule, []).append(a["at"] - t0)
    per_rule = {
        rule: {
            "count": len(v),
            "p50_seconds": float(np.percentile(v, 50)),
            "p99_seconds": float(np.percentile(v, 99)),
            "floor_seconds": floors[rule],
        }
        for rule, v in sorted(latency.items())
    }
    all_lat = [x for v in latency.values() for x in v]
    breaker = stack.agent("/api/v1/remediation/breaker")
    return {
        "storm_gpus": len(gpus),
        "storm_alerts": len(f),
        "received": len(got),
        "acted": sum(p["acted"] for p in by_policy.values()),
        "skipped_budget": sum(p["skipped_budget"] for p in by_policy.values()),
        "lost": len(lost),
        "lost_alerts": [list(x) for x in lost[:20]],
        "suppressed_by_inhibition": len(f & quiet),
        "by_policy": by_policy,
        "fault_to_action_p50_seconds": float(np.percentile(all_lat, 50)) if all_lat else None,
        "fault_to_action_p99_seconds": float(np.percentile(all_lat, 99)) if all_lat else None,
        "floor_seconds": {r: per_rule[r]["floor_seconds"] for r in per_rule},
        "per_rule": per_rule,
        "breaker": breaker,
        "uuids": sorted(uuids),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-fleet-"))
    sizes = args.sizes or sorted({max(1, args.nodes >> k) for k in (3, 2, 1, 0)})
    out: dict[str, Any] = {"sizes": [], "command": " ".join(sys.argv), "workdir": str(workdir)}
    for n in sizes:
        largest = n == sizes[-1] and args.storm > 0
        storm_gpus = max(1, round(args.storm * n * 8))
        sized = {
            "max_actions_per_minute": max(30, storm_gpus * 6),
            "max_quarantined_ratio": 1.0,
            "max_throttled_ratio": 1.0,
        }
        stack = FleetStack(workdir / f"nodes-{n}", n, args.interval, sized if largest else None, args.agent_period)
        try:
            stack.start()
            row = measure(stack, args.cycles)
            print(_row_line(row), flush=True)
            out["sizes"].append(row)
            if largest:
                s1 = storm(stack, args.storm, 1, set(), args.storm_timeout, args.storm_faults)
                s1["budget"] = sized
                print(_storm_line("sized budget", s1), flush=True)
                stack.start_agent(None)
                stack.wait_agent_gpus()
                s2 = storm(stack, args.storm, 2, set(s1["uuids"]), args.storm_timeout, args.storm_faults)
                s2["budget"] = "default"
                print(_storm_line("default budget", s2), flush=True)
                out["storm"] = {"nodes": n, "fraction": args.storm, "sized_budget": s1, "default_budget": s2}
        except (harness.LoopError, ProcError) as exc:
            raise SystemExit(f"bench.fleet at {n} nodes: {exc} (logs under {stack.workdir / 'logs'})") from None
        finally:
            stack.stop()
    return out


def _row_line(r: dict[str, Any]) -> str:
    return (
        f"nodes={r['nodes']:5d} gpus={r['gpus']:6d} series={r['series']:8d} "
        f"scrape_avg={r['scrape_duration_seconds_avg'] * 1000:.1f}ms "
        f"rule_eval={r['rule_eval_seconds'] * 1000:.0f}ms ({100 * r['rule_eval_seconds'] / r['eval_interval_seconds']:.1f}% "
        f"of {r['eval_interval_seconds']:g}s) prom_rss={r['prometheus_rss_bytes'] / 2**20:.0f}MiB "
        f"inventory={r['inventory_refresh_seconds']:.2f}s/{r['inventory_refresh_period_seconds']:g}s "
        f"predictor={r['predictor_cycle_seconds']:.2f}s/{r['predictor_period_seconds']:g}s"
    )


def _storm_line(name: str, s: dict[str, Any]) -> str:
    p50, p99 = s["fault_to_action_p50_seconds"], s["fault_to_action_p99_seconds"]
    lat = f"p50={p50:.1f}s p99={p99:.1f}s" if p50 is not None else "no action"
    return (
        f"storm ({name}): gpus={s['storm_gpus']} alerts={s['storm_alerts']} received={s['received']} "
        f"acted={s['acted']} skipped_budget={s['skipped_budget']} lost={s['lost']} {lat} "
        f"breaker={s['breaker'].get('state')} per_rule="
        + ", ".join(
            f"{r}: p99 {v['p99_seconds']:.1f}s / floor {v['floor_seconds']:g}s" for r, v in s["per_rule"].items()
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="largest fleet (default 1024)")
    p.add_argument(
        "--sizes",
        type=lambda s: sorted(int(x) for x in s.split(",")),
        help="fleet sizes to run (default: nodes/8, /4, /2, nodes)",
    )
    p.add_argument("--storm", type=float, default=0.05, help="share of GPUs in the storm (0: no storm)")
    p.add_argument("--interval", type=float, default=15.0, help="scrape and evaluation interval, seconds")
    p.add_argument(
        "--agent-period", type=float, default=INVENTORY_REFRESH_SECONDS, help="inventory refresh and predictor period"
    )
    p.add_argument("--cycles", type=int, default=4, help="evaluation cycles sampled per size")
    p.add_argument("--storm-timeout", type=float, default=420.0)
    p.add_argument(
        "--storm-faults", type=json.loads, help="the storm's fault documents, a JSON list (default: the mixed three)"
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--workdir", type=Path, help="keep every process' files and logs here")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
