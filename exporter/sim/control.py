"""The simulator's control endpoint (only with --simulate; loopback by default).

JSON in, JSON out:
  GET    /api/v1/gpus                    every simulated GPU's state
  POST   /api/v1/gpus/{gpu}/power-limit  {"watts": 300}  (same path as nvmlDeviceSetPowerManagementLimit)
  POST   /api/v1/gpus/{gpu}/load         {"utilization": 0.9, "memory_ratio": 0.5}
  POST   /api/v1/gpus/{gpu}/faults       {"kind": "...", ...}  (docs/SIMULATION.md lists the kinds)
  DELETE /api/v1/gpus/{gpu}/faults       clears the GPU's standing faults
  POST   /api/v1/scenario                a scenario document (JSON or YAML), played from now
``{gpu}`` is an index, a UUID, or ``all``. Errors answer 4xx with {"error": "..."} naming the field.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from .faults import FaultError
from .fleet import Fleet, UnknownGpu
from .scenario import ScenarioError, from_doc, parse, play

log = logging.getLogger("gpuwarden.sim.control")
_GPU_ROUTE = re.compile(r"^/api/v1/gpus/([^/]+)/(power-limit|load|faults)$")
MAX_BODY = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("control %s - " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: Any) -> None:
        data = (json.dumps(body, indent=None) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError(f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            raise ValueError("empty body: send a JSON object")
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"body is not JSON: {exc}") from exc

    def _dispatch(self, method: str) -> None:
        fleet = self.server.fleet
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if method == "GET" and path == "/api/v1/gpus":
                return self._send(200, {"gpus": fleet.state()})
            if method == "POST" and path == "/api/v1/scenario":
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(n, MAX_BODY)).decode()
                ctype = self.headers.get("Content-Type", "")
                scenario = (from_doc(json.loads(raw), "POST /api/v1/scenario") if "json" in ctype
                            else parse(raw, "POST /api/v1/scenario"))
                play(fleet, scenario)
                return self._send(202, {"playing": scenario.name, "steps": len(scenario.steps)})
            m = _GPU_ROUTE.match(path)
            if not m:
                return self._send(404, {"error": f"no route {method} {path}; see docs/SIMULATION.md"})
            ref, what = m.group(1), m.group(2)
            if ref != "all":
                fleet.gpu(ref)   # 404 for an unknown GPU before reading the body
            if method == "DELETE" and what == "faults":
                fleet.clear(ref)
            elif method == "POST" and what == "faults":
                fleet.inject(ref, self._body())
            elif method == "POST" and what == "load":
                body = self._body()
                extra = set(body) - {"utilization", "memory_ratio"} if isinstance(body, dict) else {"?"}
                if extra or not body:
                    raise ValueError('load takes {"utilization": 0-1, "memory_ratio": 0-1}')
                fleet.set_load(ref, body.get("utilization"), body.get("memory_ratio"))
            elif method == "POST" and what == "power-limit":
                body = self._body()
                watts = body.get("watts") if isinstance(body, dict) else None
                if isinstance(watts, bool) or not isinstance(watts, (int, float)):
                    raise ValueError('watts: required number, e.g. {"watts": 300}')
                fleet.set_power_limit(ref, float(watts))
            else:
                return self._send(405, {"error": f"{method} not allowed on {path}"})
            targets = fleet.state() if ref == "all" else [fleet.gpu(ref).state()]
            return self._send(200, {"gpus": targets})
        except UnknownGpu as exc:
            return self._send(404, {"error": str(exc)})
        except (ValueError, FaultError, ScenarioError, yaml.YAMLError, json.JSONDecodeError) as exc:
            return self._send(400, {"error": str(exc)})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], fleet: Fleet) -> None:
        self.fleet = fleet
        super().__init__(addr, _Handler)


class ControlServer:
    """Serves the control API for ``fleet`` on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, fleet: Fleet, host: str = "127.0.0.1", port: int = 9788) -> None:
        self._server = _Server((host, port), fleet)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sim-control", daemon=True)

    def start(self) -> "ControlServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
