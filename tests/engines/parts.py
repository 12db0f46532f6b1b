"""The loop's parts started one by one, for the scale-out engine tests: simulated GPU nodes (one
``gpuwarden-exporter --simulate`` each), the real agent, Alertmanager (alone or as a gossip
cluster), Prometheus (the shipped shard config), VictoriaMetrics with vmagent and vmalert.

Every engine evaluates the SHIPPED rules (rules/generated) unchanged and every Alertmanager
routes with the SHIPPED tree (alertmanager/alertmanager.yml: only the receivers' URLs point
here, as ``gpuwarden up`` does). What differs from a deployment is settings only: free loopback
ports and a 2 s scrape/evaluation interval. Every process is stopped by pid at teardown.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpuwarden.procs import LOOPBACK, Proc, free_port, stop_all, wait_http
from gpuwarden.prom import PrometheusClient
from gpuwarden.scheduler_agent.client import Client
from gpuwarden.stack import configs
from gpuwarden.stack.view import NotificationSink
from tests.helpers import REPO, console_script, http_get, require_binary, wait_until, write_agent_config

SCALE = REPO / "deploy" / "scale"
RULE_FILES = sorted(str(p) for p in configs.RULES_DIR.glob("*.rules.yml"))
INTERVAL = "2s"  # scrape and evaluation interval of every engine here (a setting, not a rule)
TOKEN = "engines-operator-token"

# Faults whose rules have no `for:` (they fire at the first evaluation that sees them), each
# with the action its rule's `action` label asks for (rules/thresholds.yaml).
UNCORRECTABLE = {"kind": "ecc", "uncorrectable": 1}  # ECC_UNCORRECTABLE: quarantine
CORRECTABLE_BURST = {"kind": "ecc", "correctable": 12}  # ECC_ERRORS_SPIKE (>= 10 in 5 min): notify
FAULT_RULE = {"uncorrectable": ("ECC_UNCORRECTABLE", "quarantine"), "correctable": ("ECC_ERRORS_SPIKE", "notify")}


def fault_rule(fault: dict[str, Any]) -> tuple[str, str]:
    """(rule, action) a fault above fires."""
    return FAULT_RULE["uncorrectable" if fault.get("uncorrectable") else "correctable"]


def hashmod(address: str, modulus: int) -> int:
    """Prometheus' ``hashmod`` relabelling: the last 8 bytes of the value's MD5, big-endian,
    modulo ``modulus``."""
    return int.from_bytes(hashlib.md5(address.encode()).digest()[8:], "big") % modulus


@dataclass
class Node:
    """One simulated GPU node: its exporter (``instance``) and the simulator's control API."""

    proc: Proc
    port: int
    sim_port: int

    @property
    def instance(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _sim(self, method: str, path: str, body: Any = None) -> Any:
        return Client(f"http://{LOOPBACK}:{self.sim_port}", None, 10).call(method, path, body)

    def gpus(self) -> list[dict[str, Any]]:
        gpus: list[dict[str, Any]] = self._sim("GET", "/api/v1/gpus")["gpus"]
        return gpus

    def uuid(self, gpu: int) -> str:
        return next(str(g["uuid"]) for g in self.gpus() if g["index"] == gpu)

    def inject(self, gpu: int, fault: dict[str, Any]) -> tuple[str, str, str]:
        """Injects ``fault`` on GPU ``gpu``; the (rule, uuid, action) it is expected to fire."""
        self._sim("POST", f"/api/v1/gpus/{gpu}/faults", fault)
        rule, action = fault_rule(fault)
        return rule, self.uuid(gpu), action


@dataclass
class Agent:
    """The real ``gpuwarden-agent serve`` with a static inventory of the nodes' GPUs."""

    proc: Proc
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def api(self, path: str) -> Any:
        return Client(self.url, TOKEN, 10).call("GET", path)

    def firing(self) -> list[dict[str, Any]]:
        """Every decision on a firing alert in the audit trail (GET /api/v1/actions)."""
        rows: list[dict[str, Any]] = self.api("/api/v1/actions?limit=10000")["actions"]
        return [r for r in rows if r["status"] == "firing"]

    def metric(self, name: str) -> float:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, body
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0


def wait_acted_once(agent: Agent, expected: Iterable[tuple[str, str, str]], timeout: float, settle: float) -> None:
    """Waits until the agent decided on every expected (rule, uuid, action), then ``settle``
    seconds more (so a repeated delivery has time to arrive), and asserts each alert instance
    was decided exactly once, as its action says, and nothing else was."""
    want = sorted(set(expected))

    def decided() -> bool:
        done = {(r["rule"], r["uuid"], r["action"]) for r in agent.firing() if r["outcome"] != "pending"}
        return all(w in done for w in want)

    wait_until(decided, timeout, 0.5, f"the agent to act on {want}")
    time.sleep(settle)
    rows = agent.firing()
    got = sorted((r["rule"], r["uuid"], r["action"]) for r in rows)
    assert got == want, f"one decision per alert instance: {json.dumps(rows, indent=1)}"
    for r in rows:
        assert r["outcome"] == ("recorded" if r["action"] == "notify" else "acted") and r["error"] == "", r


class Parts:
    """Starts the parts under ``workdir``; ``stop()`` stops them all by pid, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.sinks: list[NotificationSink] = []

    def start(self, name: str, argv: Sequence[str], ready_url: str, cwd: Path | None = None) -> Proc:
        (self.workdir / "logs").mkdir(exist_ok=True)
        proc = Proc(argv, self.workdir / "logs" / f"{name}.log", cwd=cwd, name=name, append=True)
        self.procs.append(proc)
        wait_http(ready_url, 60, proc)
        return proc

    def dir(self, name: str) -> Path:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stop(self) -> list[str]:
        """Stops everything; the names of children still alive afterwards (none, normally)."""
        stop_all(self.procs, 10)
        for sink in self.sinks:
            sink.stop()
        return [p.name for p in self.procs if p.alive()]

    # -- nodes and the agent ---------------------------------------------------------------------
    def node(self, name: str, gpus: int = 4, model: str = "sim", port: int | None = None) -> Node:
        """A simulated node. The simulator derives its uuids from the model and index, so two
        nodes in one test need two models to have distinct uuids."""
        port = port or free_port()
        sim_port = free_port()
        argv = [
            console_script("gpuwarden-exporter"),
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--simulate={gpus}",
            f"--sim.model={model}",
            f"--sim.control-address={LOOPBACK}:{sim_port}",
        ]
        proc = self.start(name, argv, f"http://{LOOPBACK}:{port}/metrics")
        return Node(proc, port, sim_port)

    def agent(self, nodes: Sequence[Node], name: str = "agent") -> Agent:
        """The agent, its inventory the nodes' GPUs (node = the exporter's ``instance``, as
        Prometheus labels it), its budget letting half the fleet be quarantined."""
        directory = self.dir(name)
        port = free_port()
        inventory = [
            {"name": n.instance, "gpus": [{"index": g["index"], "uuid": g["uuid"]} for g in n.gpus()]} for n in nodes
        ]
        cfg = write_agent_config(
            directory,
            port,
            TOKEN,
            nodes=json.dumps(inventory),
            extra="remediation:\n  budget: {max_quarantined_ratio: 0.5}\n",
        )
        argv = [console_script("gpuwarden-agent"), "serve", f"--config={cfg}"]
        proc = self.start(name, argv, f"http://{LOOPBACK}:{port}/healthz", cwd=directory)
        return Agent(proc, port, directory)

    def restart(self, agent: Agent) -> Agent:
        """The agent started again, same config, same SQLite file (after a stop by pid)."""
        assert not agent.proc.alive(), "stop the agent first"
        proc = self.start(agent.proc.name, agent.proc.argv, agent.url + "/healthz", cwd=agent.directory)
        return Agent(proc, agent.port, agent.directory)

    def sink(self) -> NotificationSink:
        """Where the shipped tree's on-call and chat receivers deliver (no PagerDuty or Slack)."""
        sink = NotificationSink(0).start()
        self.sinks.append(sink)
        return sink

    # -- Alertmanager --------------------------------------------------------------------------
    def alertmanager(
        self,
        name: str,
        agent: Agent,
        sink: NotificationSink,
        cluster: tuple[int, Sequence[int]] | None = None,
        cluster_flags: Sequence[str] = (),
    ) -> Alertmanager:
        """Alertmanager with the shipped routing tree. ``cluster``: (this peer's gossip port,
        the other peers' gossip ports); without it, clustering is off."""
        d = self.dir(name)
        port = free_port()
        ports = configs.Ports(
            exporter=0, agent=agent.port, prometheus=0, alertmanager=port, sim_control=0, sink=sink.port
        )
        doc = configs.alertmanager_config(ports, agent.directory / "webhook-token")
        (d / "alertmanager.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        argv = [
            require_binary("alertmanager"),
            f"--config.file={d / 'alertmanager.yml'}",
            f"--storage.path={d / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--web.external-url=http://{LOOPBACK}:{port}",
        ]
        if cluster is None:
            argv.append("--cluster.listen-address=")
        else:
            own, peers = cluster
            argv += [f"--cluster.listen-address={LOOPBACK}:{own}", f"--cluster.advertise-address={LOOPBACK}:{own}"]
            argv += [f"--cluster.peer={LOOPBACK}:{p}" for p in peers]
            argv += list(cluster_flags)
        proc = self.start(name, argv, f"http://{LOOPBACK}:{port}/-/ready")
        return Alertmanager(proc, port)

    # -- Prometheus ------------------------------------------------------------------------------
    def prometheus(self, name: str, config: dict[str, Any]) -> str:
        d = self.dir(name)
        port = free_port()
        (d / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            require_binary("prometheus"),
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ]
        url = f"http://{LOOPBACK}:{port}"
        self.start(name, argv, url + "/-/ready")
        return url

    # -- VictoriaMetrics -------------------------------------------------------------------------
    def victoria_metrics(self) -> str:
        d = self.dir("victoria-metrics")
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        argv = [
            require_binary("victoria-metrics"),
            f"-storageDataPath={d / 'data'}",
            f"-httpListenAddr={LOOPBACK}:{port}",
            "-retentionPeriod=1d",
            # Samples are queryable at once instead of 30 s later (the default latency offset
            # would only add 30 s to every alert here; deploy/scale/README.md).
            "-search.latencyOffset=0s",
        ]
        self.start("victoria-metrics", argv, url + "/health")
        return url

    def vmagent(self, scrape: dict[str, Any], vm_url: str) -> str:
        d = self.dir("vmagent")
        port = free_port()
        (d / "scrape.yml").write_text(yaml.safe_dump(scrape, sort_keys=False))
        url = f"http://{LOOPBACK}:{port}"
        argv = [
            require_binary("vmagent"),
            f"-promscrape.config={d / 'scrape.yml'}",
            f"-remoteWrite.url={vm_url}/api/v1/write",
            f"-remoteWrite.tmpDataPath={d / 'buffer'}",
            f"-httpListenAddr={LOOPBACK}:{port}",
        ]
        self.start("vmagent", argv, url + "/health")
        return url

    def vmalert(self, vm_url: str, am_urls: Sequence[str]) -> str:
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        argv = [
            require_binary("vmalert"),
            *(f"-rule={r}" for r in RULE_FILES),
            f"-datasource.url={vm_url}",
            f"-remoteWrite.url={vm_url}",
            f"-remoteRead.url={vm_url}",
            *(f"-notifier.url={u}" for u in am_urls),
            f"-evaluationInterval={INTERVAL}",
            f"-httpListenAddr={LOOPBACK}:{port}",
        ]
        self.start("vmalert", argv, url + "/health")
        return url


@dataclass
class Alertmanager:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        status, body = http_get(self.url + "/metrics")
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                head = line.rsplit(" ", 1)[0]
                if all(f'{k}="{v}"' in head for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def alerts(self) -> list[dict[str, Any]]:
        status, body = http_get(self.url + "/api/v2/alerts?" + urllib.parse.urlencode({"active": "true"}))
        assert status == 200
        alerts: list[dict[str, Any]] = json.loads(body)
        return alerts


def shard_config(
    shard: int,
    shards: int,
    targets: Sequence[str],
    alertmanagers: Sequence[str],
    rule_files: Sequence[str] = RULE_FILES,
) -> dict[str, Any]:
    """The shipped deploy/scale/prometheus-shard.yml for shard ``shard`` of ``shards``: only
    the values its header says to change (and the test's targets, rule paths and intervals)."""
    doc: dict[str, Any] = yaml.safe_load((SCALE / "prometheus-shard.yml").read_text())
    doc["global"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL)
    doc["global"]["external_labels"]["prometheus_shard"] = str(shard)
    doc["rule_files"] = list(rule_files)
    doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [u.split("://")[-1] for u in alertmanagers]
    [job] = doc["scrape_configs"]
    job["static_configs"][0]["targets"] = list(targets)
    hashing, keep = job["relabel_configs"]
    assert (hashing["action"], keep["action"]) == ("hashmod", "keep"), job["relabel_configs"]
    hashing["modulus"] = shards
    keep["regex"] = str(shard)
    return doc


def vmagent_config(targets: Sequence[str]) -> dict[str, Any]:
    """The shipped deploy/scale/vmagent-scrape.yml with the test's targets and interval."""
    doc: dict[str, Any] = yaml.safe_load((SCALE / "vmagent-scrape.yml").read_text())
    doc["global"]["scrape_interval"] = INTERVAL
    [job] = doc["scrape_configs"]
    job["static_configs"][0]["targets"] = list(targets)
    return doc


def firing_alerts(prometheus_url: str) -> set[tuple[str, str]]:
    """(rule, uuid) of every alert firing in a Prometheus (or vmalert: same API)."""
    alerts = PrometheusClient(prometheus_url, timeout=5).alerts()
    return {(a["labels"].get("rule", ""), a["labels"].get("uuid", "")) for a in alerts if a.get("state") == "firing"}


def wait_scraped(query_url: str, nodes: Sequence[Node], timeout: float = 60) -> None:
    """Until a query API (Prometheus, VictoriaMetrics) holds the nodes' GPU series, so a fault
    injected next is a change it sees (a counter first seen already high is no burst)."""

    def seen() -> bool:
        got = {s.labels.get("instance") for s in PrometheusClient(query_url, timeout=5).query("gpu_up")}
        return all(n.instance in got for n in nodes)

    wait_until(seen, timeout, 0.5, f"{query_url} to hold the GPU series of {[n.instance for n in nodes]}")
