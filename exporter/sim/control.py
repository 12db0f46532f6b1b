"""The simulator's control endpoint (only with --simulate; loopback by default).

JSON in, JSON out:
  GET    /api/v1/gpus                    every simulated GPU's state
  POST   /api/v1/gpus/{gpu}/power-limit  {"watts": 300}  (same path as nvmlDeviceSetPowerManagementLimit)
  POST   /api/v1/gpus/{gpu}/load         {"utilization": 0.9, "memory_ratio": 0.5}
  POST   /api/v1/gpus/{gpu}/faults       {"kind": "...", ...}  (docs/SIMULATION.md lists the kinds)
  DELETE /api/v1/gpus/{gpu}/faults       clears the GPU's standing faults
  POST   /api/v1/scenario                a scenario document (JSON or YAML), played from now
``{gpu}`` is an index, a UUID, or ``all``. Errors answer 4xx with {"error": "..."} naming the field.

Served by ``gpuwarden.listener.Listener``: the route, the method and the GPU are checked before
any body byte is read (an unknown GPU is a 404, the body unread); POST bodies may be up to 1 MiB
(413 past that), GET and DELETE take none. There is no authentication: anyone who can reach the
endpoint can inject faults and set power limits in the simulation, so it binds loopback unless
told otherwise and warns when it is not.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import yaml

from gpuwarden.listener import Admit, Head, Limits, Listener, Reply

from .faults import FaultError
from .fleet import Fleet, UnknownGpu
from .scenario import ScenarioError, from_doc, parse, play

log = logging.getLogger(__name__)
_GPU_ROUTE = re.compile(r"^/api/v1/gpus/([^/]+)/(power-limit|load|faults)$")
MAX_BODY = 1 << 20


def _json(status: int, body: Any) -> Reply:
    return Reply(status, (json.dumps(body, indent=None) + "\n").encode(), "application/json")


@dataclass(frozen=True)
class _Route:
    name: str  # "gpus", "scenario", or a GPU route's action: power-limit, load, faults
    path: str
    ref: str = ""  # the GPU: index, UUID or "all"


def _json_body(raw: bytes) -> Any:
    if not raw.strip():
        raise ValueError("empty body: send a JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc


class _Endpoint:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def admit(self, head: Head) -> Admit | Reply:
        """Route, method and GPU, before the body: cheap lookups only (runs on the event loop)."""
        method, path = head.method, head.path.rstrip("/")
        if path == "/api/v1/gpus":
            if method != "GET":
                return _json(405, {"error": f"{method} not allowed on {path}"})
            return Admit(0, _Route("gpus", path))
        if path == "/api/v1/scenario":
            if method != "POST":
                return _json(405, {"error": f"{method} not allowed on {path}"})
            return Admit(MAX_BODY, _Route("scenario", path))
        m = _GPU_ROUTE.match(path)
        if not m:
            return _json(404, {"error": f"no route {method} {path}; see docs/SIMULATION.md"})
        ref, what = m.group(1), m.group(2)
        if ref != "all":
            try:
                self.fleet.gpu(ref)  # 404 for an unknown GPU before reading the body
            except UnknownGpu as exc:
                return _json(404, {"error": str(exc)})
        if method == "POST":
            return Admit(MAX_BODY, _Route(what, path, ref))
        if method == "DELETE" and what == "faults":
            return Admit(0, _Route("clear", path, ref))
        return _json(405, {"error": f"{method} not allowed on {path}"})

    def handle(self, head: Head, body: bytes, route: _Route) -> Reply:
        fleet, ref = self.fleet, route.ref
        try:
            if route.name == "gpus":
                return _json(200, {"gpus": fleet.state()})
            if route.name == "scenario":
                raw = body.decode()
                ctype = head.headers.get("content-type", "")
                scenario = (
                    from_doc(json.loads(raw), "POST /api/v1/scenario")
                    if "json" in ctype
                    else parse(raw, "POST /api/v1/scenario")
                )
                play(fleet, scenario)
                return _json(202, {"playing": scenario.name, "steps": len(scenario.steps)})
            if route.name == "clear":
                fleet.clear(ref)
            elif route.name == "faults":
                fleet.inject(ref, _json_body(body))
            elif route.name == "load":
                doc = _json_body(body)
                extra = set(doc) - {"utilization", "memory_ratio"} if isinstance(doc, dict) else {"?"}
                if extra or not doc:
                    raise ValueError('load takes {"utilization": 0-1, "memory_ratio": 0-1}')
                fleet.set_load(ref, doc.get("utilization"), doc.get("memory_ratio"))
            elif route.name == "power-limit":
                doc = _json_body(body)
                watts = doc.get("watts") if isinstance(doc, dict) else None
                if isinstance(watts, bool) or not isinstance(watts, (int, float)):
                    raise ValueError('watts: required number, e.g. {"watts": 300}')
                fleet.set_power_limit(ref, float(watts))
            targets = fleet.state() if ref == "all" else [fleet.gpu(ref).state()]
            return _json(200, {"gpus": targets})
        except UnknownGpu as exc:
            return _json(404, {"error": str(exc)})
        except (ValueError, FaultError, ScenarioError, yaml.YAMLError) as exc:
            return _json(400, {"error": str(exc)})


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


class ControlServer:
    """Serves the control API for ``fleet`` on ``host:port`` (port 0 picks a free one); binds at
    construction."""

    def __init__(self, fleet: Fleet, host: str = "127.0.0.1", port: int = 9788, limits: Limits = Limits()) -> None:
        self._listener = Listener(_Endpoint(fleet), host, port, name="sim-control", limits=limits)
        self.host, self.port = self._listener.host, self._listener.port

    def start(self) -> ControlServer:
        if not _loopback(str(self.host)):
            log.warning(
                "the simulator's control endpoint listens on %s:%s, not loopback: it has no "
                "authentication, so anyone who can reach it can inject faults and set power "
                "limits in the simulation (and so trigger the agent's remediation); bind "
                "127.0.0.1 with --sim.control-address unless that is intended",
                self.host,
                self.port,
            )
        self._listener.start()
        return self

    def stop(self) -> None:
        self._listener.stop()
