"""The dashboard against a real Prometheus 2.42 scraping two exporter nodes and the agent.

Node A simulates the default board, node B H100s (their own thresholds: the H100 profile is
relative to the board's slowdown temperature). The agent's static inventory names the nodes
``node-a`` (with ``instance:`` set to A's target) and ``node-b`` (without: its GPUs are matched
by uuid). Each panel's query is run the way Grafana sends it for ``$instance`` = one node, and
must show that node's GPUs only: the predictor's forecasts, the GPU states, the allocations and
each GPU's own threshold lines.
"""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.dashboards import queries
from gpuwarden.prom import PrometheusClient, Series
from tests.helpers import REPO, console_script, free_port, http_get, require_binary, wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]

TOKEN = "dashboards-two-nodes-token"


def _post(url: str, doc: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


class Stack:
    def __init__(self, spawn: Any, tmp: Path) -> None:
        self.tmp = tmp
        self.node: dict[str, str] = {}  # "a"/"b" -> the exporter's target (Prometheus' instance)
        self.control: dict[str, str] = {}
        for name, model in (("a", "sim"), ("b", "h100")):
            port, control = free_port(), free_port()
            proc = spawn(
                [
                    console_script("gpuwarden-exporter"),
                    "--simulate",
                    "2",
                    f"--sim.model={model}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--sim.control-address=127.0.0.1:{control}",
                ],
                name=f"exporter-{name}",
            )
            wait_until(
                lambda port=port: http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200,
                20,
                what=f"exporter {name}: {proc.output()[-2000:]}",
            )
            self.node[name] = f"127.0.0.1:{port}"
            self.control[name] = f"http://127.0.0.1:{control}"
        agent_port, prom_port = free_port(), free_port()
        self.agent = f"http://127.0.0.1:{agent_port}"
        self.prom_url = f"http://127.0.0.1:{prom_port}"
        rule_files = sorted(str(p) for p in (REPO / "rules" / "generated").glob("*.rules.yml"))
        (tmp / "prometheus.yml").write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                    "rule_files": rule_files,
                    "scrape_configs": [
                        {"job_name": "gpuwarden-exporter", "static_configs": [{"targets": list(self.node.values())}]},
                        # As shipped: the agent's per-GPU series keep their GPU's instance.
                        {
                            "job_name": "gpuwarden-agent",
                            "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}],
                        },
                    ],
                }
            )
        )
        prometheus = spawn(
            [
                require_binary("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            name="prometheus",
        )
        wait_until(
            lambda: http_get(f"{self.prom_url}/-/ready")[0] == 200,
            30,
            what=f"prometheus: {prometheus.output()[-2000:]}",
        )
        self.prom = PrometheusClient(self.prom_url)
        self.uuids: dict[str, list[str]] = {}
        for name, instance in self.node.items():
            found = wait_until(
                lambda instance=instance: self.prom.query(f'gpu_info{{instance="{instance}"}}'),
                30,
                what=f"gpu_info from node {name}",
            )
            self.uuids[name] = sorted(s.labels["uuid"] for s in found)
        assert not set(self.uuids["a"]) & set(self.uuids["b"]), self.uuids

        def gpus(name: str) -> str:
            return ", ".join(f"{{index: {i}, uuid: {u}}}" for i, u in enumerate(self.uuids[name]))

        (tmp / "token").write_text(TOKEN + "\n")
        (tmp / "webhook-token").write_text(TOKEN + "-webhook\n")
        (tmp / "agent.yaml").write_text(f"""
remediation:
  auth: {{bearer_token_file: webhook-token}}
web: {{listen_address: "127.0.0.1:{agent_port}", token_file: token}}
database: {{path: agent.db}}
inventory:
  nodes:
    - {{name: node-a, instance: "{self.node["a"]}", gpus: [{gpus("a")}]}}
    - {{name: node-b, gpus: [{gpus("b")}]}}
executor: {{kind: tracking}}
scheduler: {{tick_seconds: 0.1}}
predictor:
  prometheus_url: "{self.prom_url}"
  period_seconds: 2
  window_seconds: 60
  step_seconds: 1
  migrate: false
""")
        agent = spawn([console_script("gpuwarden-agent"), "serve", "--config", str(tmp / "agent.yaml")], name="agent")
        wait_until(lambda: http_get(f"{self.agent}/healthz")[0] == 200, 20, what=f"agent: {agent.output()[-2000:]}")

    def api(self, path: str, doc: dict[str, Any]) -> Any:
        return _post(f"{self.agent}{path}", doc, TOKEN)

    def panel(self, dashboard: dict[str, Any], title: str, node: str | None, ref: str = "A") -> list[Series]:
        """The panel's target as Grafana sends it with ``$instance`` = that node (None: All)."""
        [q] = [
            q
            for q in queries.panel_queries(dashboard)
            if q.panel and q.panel["title"] == title and q.target and q.target["refId"] == ref
        ]
        values = {"instance": self.node[node] if node else ".*", "gpu": ".*", "__rate_interval": "10s", "__range": "5m"}
        return self.prom.query(queries.substitute(q.expr, values))


def _by(series: list[Series], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.get(k, "") for k in labels): s.values[-1] for s in series}


def test_panels_follow_the_instance_variable_across_two_nodes(
    spawn: Any, tmp_path: Path, committed: dict[str, Any]
) -> None:
    st = Stack(spawn, tmp_path)
    a, b = st.node["a"], st.node["b"]
    for name in ("a", "b"):  # GPU 0 of each node heats: both get a forecast
        _post(f"{st.control[name]}/api/v1/gpus/0/faults", {"kind": "cooling", "factor": 3.0})
        _post(f"{st.control[name]}/api/v1/gpus/0/load", {"utilization": 0.9})

    # GPU state: node A's GPUs by instance (set in the inventory), node B's by uuid.
    def states(node: str | None) -> dict[tuple[str, ...], float]:
        return _by(st.panel(committed, "GPU state distribution", node), "state")

    wait_until(lambda: states(None).get(("healthy",)) == 4, 30, what=f"4 healthy GPUs: {states(None)}")
    assert states("a") == {("healthy",): 2, **{(s,): 0 for s in ("alerting", "lost", "quarantined", "throttled")}}
    st.api(f"/api/v1/gpus/{st.uuids['b'][1]}/quarantine", {"reason": "test"})
    wait_until(lambda: states("b").get(("quarantined",)) == 1, 15, what=f"node B's quarantine: {states('b')}")
    assert states("b")[("healthy",)] == 1
    assert states("a")[("healthy",)] == 2 and states("a")[("quarantined",)] == 0

    # Allocations: a 2-GPU job fits node A only now; a 1-GPU job then takes B's healthy GPU.
    big = st.api("/api/v1/jobs", {"name": "train-big", "gpus": 2})
    small = st.api("/api/v1/jobs", {"name": "eval-small", "gpus": 1})

    def allocations(node: str | None) -> dict[tuple[str, ...], float]:
        return _by(st.panel(committed, "GPU allocations", node), "instance", "gpu", "uuid", "job_id", "job_name")

    wait_until(lambda: len(allocations(None)) == 3, 15, what=f"three allocated GPUs: {allocations(None)}")
    # instance is node A's target (honor_labels kept it), not the agent's.
    assert allocations("a") == {(a, str(i), u, str(big["id"]), "train-big"): 1 for i, u in enumerate(st.uuids["a"])}
    assert allocations("b") == {("node-b", "0", st.uuids["b"][0], str(small["id"]), "eval-small"): 1}

    # Each GPU's own threshold lines: node B's H100 profile, not the default's fixed 80/85.
    temp_lines = _by(st.panel(committed, "Temperature", "b", "B"), "instance", "gpu", "rule")
    assert {k[0] for k in temp_lines} == {b} and len(temp_lines) == 4
    slowdown = _by(st.prom.query(f'gpu_temperature_threshold_celsius{{instance="{b}", threshold="slowdown"}}'), "gpu")
    for (_, gpu, rule), value in temp_lines.items():
        assert value == slowdown[(gpu,)] - {"THERMAL_WARNING": 8, "THERMAL_CRITICAL": 3}[rule], (gpu, rule, value)
    assert set(_by(st.panel(committed, "Temperature", "a", "B"), "rule").values()) == {80.0, 85.0}
    assert {k[0] for k in _by(st.panel(committed, "Power", "a", "C"), "instance", "gpu", "rule")} == {a}

    # The predictor's panels: two nodes' GPU 0 are two bars, and each node shows its own.
    risk = _by(st.panel(committed, "Failure risk", None), "instance", "gpu")
    assert set(risk) == {(n, g) for n in (a, b) for g in ("0", "1")}, risk
    assert set(_by(st.panel(committed, "Failure risk", "b"), "instance", "gpu")) == {(b, "0"), (b, "1")}

    def forecasts(node: str | None) -> dict[tuple[str, ...], float]:
        return _by(st.panel(committed, "Time to threshold", node), "instance", "gpu", "metric")

    wait_until(
        lambda: {k[:2] for k in forecasts(None)} >= {(a, "0"), (b, "0")},
        90,
        2,
        "a forecast for GPU 0 of both nodes",
    )
    assert {k[0] for k in forecasts("a")} == {a} and {k[0] for k in forecasts("b")} == {b}
    assert all(not math.isnan(v) and v >= 0 for v in forecasts(None).values())
    assert set(st.prom.label_values("instance", ["gpu_info"])) == {a, b}  # the $instance choices
