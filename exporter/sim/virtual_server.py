"""Serving a ``VirtualFleet``: every node's ``/metrics`` on one listener, the control API on another.

``python -m gpuwarden.exporter.sim.virtual_server --nodes 1024 --targets-file targets.json``

Metrics listener (``--web.listen-address``):
  GET /nodes/<node>/metrics     that node's exposition (503 while the node is down)
  GET /targets                  the file_sd document (same as ``--targets-file``)

Control listener (``--sim.control-address``, loopback by default; no authentication, like
``--simulate``'s), the control API of docs/SIMULATION.md with ``{gpu}`` a UUID, ``<node>:<index>``
or ``all``, plus the fleet's own:
  GET    /api/v1/gpus                      every GPU's state (``?node=<node>`` for one node's)
  POST   /api/v1/gpus/{gpu}/power-limit    {"watts": 300}
  POST   /api/v1/gpus/{gpu}/load           {"utilization": 0.9, "memory_ratio": 0.5}
  POST   /api/v1/gpus/{gpu}/faults         a fault document; answers {"at": epoch seconds}
  DELETE /api/v1/gpus/{gpu}/faults
  POST   /api/v1/nodes/{node}/down         {"down": true|false}: the node's scrape fails (up 0)
  POST   /api/v1/storm                     {"fraction": 0.05, "faults": [...], "seed": 1,
                                            "watch": [{"metric": "temperature_celsius", "above": 85}],
                                            "exclude": [uuid, ...]}
  GET    /api/v1/storm/crossings           uuid -> watch -> rising edges (epoch seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from gpuwarden import logs
from gpuwarden.listener import Admit, Head, Limits, Listener, Reply

from ..server import parse_listen_address
from .faults import FaultError
from .virtual import WATCHED, UnknownTarget, VirtualFleet, Watch

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
_NODE_METRICS = re.compile(r"^/nodes/([^/]+)/metrics$")
_GPU_ROUTE = re.compile(r"^/api/v1/gpus/([^/]+)/(power-limit|load|faults)$")
_NODE_ROUTE = re.compile(r"^/api/v1/nodes/([^/]+)/down$")
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def _json(status: int, body: Any) -> Reply:
    return Reply(status, (json.dumps(body) + "\n").encode(), "application/json")


def file_sd(
    fleet: VirtualFleet, host: str, port: int, job_labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Prometheus file_sd targets: one per node, each with its own instance and metrics path."""
    return [
        {
            "targets": [f"{host}:{port}"],
            "labels": {
                "instance": f"{name}:9400",
                "__metrics_path__": f"/nodes/{name}/metrics",
                **(job_labels or {}),
            },
        }
        for name in fleet.node_names
    ]


class _Metrics:
    def __init__(self, fleet: VirtualFleet, targets: list[dict[str, Any]]) -> None:
        self.fleet, self.targets = fleet, targets

    def admit(self, head: Head) -> Admit | Reply:
        if head.method not in ("GET", "HEAD"):
            return _json(405, {"error": f"{head.method} not allowed"})
        m = _NODE_METRICS.match(head.path)
        if m:
            try:
                return Admit(0, self.fleet.node(m.group(1)))
            except UnknownTarget as exc:
                return _json(404, {"error": str(exc)})
        if head.path == "/targets":
            return Admit(0, -1)
        return _json(404, {"error": f"no route {head.path}: GET /nodes/<node>/metrics or /targets"})

    def handle(self, head: Head, body: bytes, node: int) -> Reply:
        if node < 0:
            return _json(200, self.targets)
        if self.fleet.node_down[node]:
            return Reply(503, b"node down (virtual fleet)\n", "text/plain; charset=utf-8")
        return Reply(200, self.fleet.render(node), TEXT_FORMAT)


class _Control:
    def __init__(self, fleet: VirtualFleet) -> None:
        self.fleet = fleet

    def admit(self, head: Head) -> Admit | Reply:
        method, path = head.method, head.path.rstrip("/")
        get_routes = {"/api/v1/gpus", "/api/v1/storm/crossings"}
        if path in get_routes:
            return Admit(0, ("get", path)) if method == "GET" else _json(405, {"error": f"{method} not allowed"})
        if path == "/api/v1/storm" or _NODE_ROUTE.match(path):
            return (
                Admit(MAX_BODY, ("post", path)) if method == "POST" else _json(405, {"error": f"{method} not allowed"})
            )
        m = _GPU_ROUTE.match(path)
        if not m:
            return _json(404, {"error": f"no route {method} {path}; see exporter/sim/virtual_server.py"})
        ref = urllib.parse.unquote(m.group(1))
        try:
            ids = self.fleet.targets(ref)
        except UnknownTarget as exc:
            return _json(404, {"error": str(exc)})
        if method == "POST":
            return Admit(MAX_BODY, (m.group(2), ids))
        if method == "DELETE" and m.group(2) == "faults":
            return Admit(0, ("clear", ids))
        return _json(405, {"error": f"{method} not allowed on {path}"})

    def handle(self, head: Head, body: bytes, route: tuple[str, Any]) -> Reply:
        fleet = self.fleet
        what, arg = route
        try:
            if what == "get" and arg == "/api/v1/gpus":
                q = urllib.parse.parse_qs(head.query)
                node = q.get("node", [None])[-1]
                ids = fleet.targets("all", node) if node else None
                return _json(200, {"gpus": fleet.state(ids)})
            if what == "get":
                return _json(200, {"crossings": fleet.crossings()})
            doc = _body(body)
            if what == "post" and arg == "/api/v1/storm":
                watch = [Watch(str(w["metric"]), float(w["above"])) for w in doc.get("watch", [])]
                for w in watch:
                    if w.metric not in WATCHED:
                        raise ValueError(f"watch.metric: one of {', '.join(WATCHED)}, got {w.metric!r}")
                return _json(
                    200,
                    fleet.storm(
                        float(doc["fraction"]),
                        list(doc["faults"]),
                        int(doc.get("seed", 0)),
                        watch,
                        [fleet.gpu(str(u)) for u in doc.get("exclude", [])],
                    ),
                )
            if what == "post":
                found = _NODE_ROUTE.match(arg)
                assert found is not None  # admit() routed it here
                name, down = urllib.parse.unquote(found.group(1)), bool(doc.get("down", True))
                fleet.set_node_down(name, down)
                return _json(200, {"node": name, "down": down})
            if what == "clear":
                fleet.clear(arg)
                return _json(200, {"gpus": len(arg)})
            if what == "faults":
                at = fleet.inject(arg, doc)
                return _json(200, {"gpus": len(arg), "at": fleet.wall(at)})
            if what == "load":
                extra = set(doc) - {"utilization", "memory_ratio"}
                if extra or not doc:
                    raise ValueError('load takes {"utilization": 0-1, "memory_ratio": 0-1}')
                fleet.set_load(arg, doc.get("utilization"), doc.get("memory_ratio"))
            elif what == "power-limit":
                watts = doc.get("watts")
                if isinstance(watts, bool) or not isinstance(watts, (int, float)):
                    raise ValueError('watts: required number, e.g. {"watts": 300}')
                fleet.set_power_limit(arg, float(watts))
            return _json(200, {"gpus": fleet.state(arg[:64])})
        except UnknownTarget as exc:
            return _json(404, {"error": str(exc)})
        except (KeyError, TypeError) as exc:
            return _json(400, {"error": f"missing or malformed field: {exc}"})
        except (ValueError, FaultError) as exc:
            return _json(400, {"error": str(exc)})


def _body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise ValueError("empty body: send a JSON object")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("body: expected a JSON object")
    return doc


class VirtualFleetServer:
    """Both listeners of one ``VirtualFleet``; binds at construction (port 0 picks a free one)."""

    def __init__(
        self,
        fleet: VirtualFleet,
        metrics: tuple[str, int] = ("127.0.0.1", 0),
        control: tuple[str, int] = ("127.0.0.1", 0),
        threads: int = 8,
    ) -> None:
        self.fleet = fleet
        # Prometheus keeps one connection per target: a thousand nodes are a thousand connections.
        limits = Limits(threads=threads, max_connections=max(512, fleet.nodes + 128), idle_timeout=60.0)
        self._metrics_ep = _Metrics(fleet, [])
        self._metrics = Listener(self._metrics_ep, metrics[0], metrics[1], name="virtual-fleet", limits=limits)
        self._control = Listener(_Control(fleet), control[0], control[1], name="virtual-fleet-control")
        self.host, self.port = str(self._metrics.host), int(self._metrics.port)
        self.control_port = int(self._control.port)
        self.targets = file_sd(fleet, self.host, self.port)
        self._metrics_ep.targets = self.targets

    def start(self) -> VirtualFleetServer:
        self._metrics.start()
        self._control.start()
        return self

    def stop(self) -> None:
        self._control.stop()
        self._metrics.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpuwarden.exporter.sim.virtual_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=64, help="simulated nodes (default 64)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--sim.model", dest="model", default="sim", help="board model (exporter/sim/models.py)")
    p.add_argument("--web.listen-address", dest="listen", default="127.0.0.1:9400")
    p.add_argument("--sim.control-address", dest="control", default="127.0.0.1:9788")
    p.add_argument("--targets-file", type=Path, help="write the Prometheus file_sd targets here")
    p.add_argument("--threads", type=int, default=8, help="request handler threads")
    logs.add_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        fleet = VirtualFleet(args.nodes, args.gpus_per_node, args.model)
        server = VirtualFleetServer(
            fleet, parse_listen_address(args.listen), parse_listen_address(args.control), args.threads
        )
    except (ValueError, OSError) as exc:
        print(f"virtual fleet: {exc}", file=sys.stderr)
        return 2
    if args.targets_file:
        tmp = args.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(server.targets))
        tmp.replace(args.targets_file)  # Prometheus must never read a half-written file
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server.start()
    log.info(
        "virtual fleet serving",
        extra={
            "nodes": fleet.nodes,
            "gpus": fleet.count,
            "metrics_port": server.port,
            "control_port": server.control_port,
        },
    )
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
