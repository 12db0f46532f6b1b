"""A real Prometheus, Alertmanager and agent over dcgm-exporter output (no GPU, no DCGM).

dcgm-exporter's published ``/metrics`` text (tests/fixtures/dcgm-exporter/) is served, as a
modified copy the test edits, by tiny HTTP servers that Prometheus scrapes as dcgm-exporter
targets; Prometheus evaluates the generated dcgm-exporter rules and sends to Alertmanager with
the shipped routing tree, which delivers to the agent (its inventory discovered from the same
DCGM series). Every process binds 127.0.0.1 on a free port and is stopped by pid.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from gpuwarden.prom import PrometheusClient
from gpuwarden.stack import configs
from gpuwarden.stack.harness import _request
from tests.helpers import REPO, Proc, console_script, free_port, require_binary, wait_until

FIXTURES = REPO / "tests" / "fixtures" / "dcgm-exporter"
DCGM_RULES = REPO / "rules" / "generated" / "dcgm-exporter"
OPERATOR_TOKEN = "operator-token-for-dcgm-tests"
INTERVAL = "1s"


class MetricsServer:
    """Serves ``text`` (editable) at /metrics as the exposition format."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner.lock:
                    body = owner.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def edit(self, change: Callable[[str], str]) -> None:
        with self.lock:
            self.text = change(self.text)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def set_value(metric: str, uuid: str, value: float) -> Callable[[str], str]:
    """An edit giving every ``metric`` line of GPU ``uuid`` the value ``value``."""
    pattern = re.compile(rf'^({metric}{{[^}}]*UUID="{re.escape(uuid)}"[^}}]*}}) \S+$', re.M)

    def change(text: str) -> str:
        new, n = pattern.subn(lambda m: f"{m.group(1)} {value:g}", text)
        assert n, f"no {metric} line of {uuid} to change"
        return new

    return change


def add_family(
    metric: str, kind: str, uuid: str, value: float, like: str = "DCGM_FI_DEV_GPU_TEMP"
) -> Callable[[str], str]:
    """An edit adding ``metric`` for GPU ``uuid`` with the labels of its ``like`` lines, as
    dcgm-exporter writes a field once the counters CSV enables it."""

    def change(text: str) -> str:
        labels = re.findall(rf'^{like}({{[^}}]*UUID="{re.escape(uuid)}"[^}}]*}}) \S+$', text, re.M)
        assert labels, f"no {like} line of {uuid}"
        lines = [f"# TYPE {metric} {kind}", *(f"{metric}{ls} {value:g}" for ls in labels)]
        return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"

    return change


class DcgmStack:
    """Prometheus (generated dcgm-exporter rules), Alertmanager (the shipped routes) and the
    agent (GPUs discovered from the DCGM series), over ``targets``: job name -> servers."""

    def __init__(self, workdir: Path, targets: dict[str, list[MetricsServer]]) -> None:
        self.workdir = workdir
        self.targets = targets
        self.procs: dict[str, Proc] = {}
        p = [free_port() for _ in range(4)]
        self.ports = configs.Ports(
            exporter=free_port(), agent=p[0], prometheus=p[1], alertmanager=p[2], sim_control=free_port(), sink=p[3]
        )
        for sub in ("prometheus/data", "alertmanager/data", "agent", "logs"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.agent}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.alertmanager}"

    def _write(self) -> dict[str, Path]:
        w = self.workdir
        webhook = w / "agent" / "webhook-token"
        webhook.write_text("dcgm-webhook-token\n")
        (w / "agent" / "token").write_text(OPERATOR_TOKEN + "\n")
        scrape = [
            {"job_name": job, "static_configs": [{"targets": [s.target for s in servers]}]}
            for job, servers in self.targets.items()
        ]
        scrape.append(
            {
                "job_name": "gpuwarden-agent",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{self.ports.agent}"]}],
            }
        )
        prom = {
            "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
            "rule_files": sorted(str(p) for p in DCGM_RULES.glob("*.rules.yml")),
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.ports.alertmanager}"]}]}]
            },
            "scrape_configs": scrape,
        }
        agent = {
            "web": {"listen_address": f"127.0.0.1:{self.ports.agent}", "token_file": "token"},
            "database": {"path": "agent.db"},
            "inventory": {"prometheus": {"url": self.prometheus_url, "refresh_seconds": 1, "source": "dcgm-exporter"}},
            "executor": {"kind": "tracking"},
            "scheduler": {"tick_seconds": 0.05},
            # Two of five GPUs quarantined is past the default budget (25 %); these tests want both.
            "remediation": {"auth": {"bearer_token_file": "webhook-token"}, "budget": {"max_quarantined_ratio": 0.5}},
        }
        paths = {
            "prometheus": w / "prometheus" / "prometheus.yml",
            "alertmanager": w / "alertmanager" / "alertmanager.yml",
            "agent": w / "agent" / "agent.yaml",
        }
        paths["prometheus"].write_text(yaml.safe_dump(prom, sort_keys=False))
        paths["alertmanager"].write_text(
            yaml.safe_dump(configs.alertmanager_config(self.ports, webhook), sort_keys=False)
        )
        paths["agent"].write_text(yaml.safe_dump(agent, sort_keys=False))
        return paths

    def start(self) -> DcgmStack:
        paths = self._write()
        w = self.workdir
        self.start_agent()
        self._run(
            "alertmanager",
            [
                require_binary("alertmanager"),
                f"--config.file={paths['alertmanager']}",
                f"--storage.path={w / 'alertmanager/data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.alertmanager}",
                "--cluster.listen-address=",
            ],
            self.alertmanager_url + "/-/ready",
        )
        self._run(
            "prometheus",
            [
                require_binary("prometheus"),
                f"--config.file={paths['prometheus']}",
                f"--storage.tsdb.path={w / 'prometheus/data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.prometheus}",
            ],
            self.prometheus_url + "/-/ready",
        )
        return self

    def start_agent(self) -> None:
        argv = [console_script("gpuwarden-agent"), "serve", f"--config={self.workdir / 'agent' / 'agent.yaml'}"]
        self._run("agent", argv, self.agent_url + "/healthz", cwd=self.workdir / "agent")

    def stop_agent(self) -> None:
        self.procs.pop("agent").stop()

    def _run(self, name: str, argv: list[str], ready: str, cwd: Path | None = None) -> None:
        proc = Proc(argv, self.workdir / "logs" / f"{name}.log", cwd=cwd, name=name, append=True)
        self.procs[name] = proc
        proc.wait_ready(ready, timeout=30)

    def stop(self) -> None:
        for name in ("prometheus", "alertmanager", "agent"):
            if name in self.procs:
                self.procs.pop(name).stop()

    # -- reading ------------------------------------------------------------------------------
    def prom(self) -> PrometheusClient:
        return PrometheusClient(self.prometheus_url)

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [a for a in self.prom().alerts() if a["labels"].get("alertname") == alertname and a["state"] == "firing"]

    def agent(self, path: str, body: Any = None) -> Any:
        return _request("GET" if body is None else "POST", self.agent_url + path, body, OPERATOR_TOKEN)

    def actions(self, uuid: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"uuid": uuid, "limit": 1000})
        actions: list[dict[str, Any]] = self.agent(f"/api/v1/actions?{q}")["actions"]
        return actions

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = _request("GET", self.alertmanager_url + "/api/v2/alerts")
        return alerts

    def wait_gpus(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        def known() -> list[dict[str, Any]] | None:
            gpus: list[dict[str, Any]] = self.agent("/api/v1/gpus")
            return gpus if len(gpus) >= count else None

        return wait_until(known, timeout=timeout, interval=0.5, what=f"the agent to discover {count} GPUs")
