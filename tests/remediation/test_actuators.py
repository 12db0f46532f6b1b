"""Actuators: the simulator's control endpoint, NVML (over the simulated library), commands."""

from __future__ import annotations

import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pynvml
import pytest

from gpuwarden.scheduler_agent.remediation.actuators import CommandActuator, GpuRef, NvmlActuator, SimActuator
from gpuwarden.scheduler_agent.remediation.command import render
from gpuwarden.scheduler_agent.remediation.errors import ActuatorError
from tests.remediation.fakes import FakeScheduler, alert, notification


def deliver(rem, *alerts):
    rem.intake.accept(json.dumps(notification(*alerts)).encode())
    rem.worker.run_once()


@pytest.fixture
def sim_fleet():
    """The simulated fleet with its control endpoint on a free loopback port."""
    from gpuwarden.exporter.sim.control import ControlServer
    from gpuwarden.exporter.sim.fleet import Fleet

    fleet = Fleet(2)
    server = ControlServer(fleet, "127.0.0.1", 0).start()
    yield fleet, f"http://127.0.0.1:{server.port}"
    server.stop()


def nvml_limit_watts(fleet, uuid: str) -> float:
    """The GPU's enforced power limit read back through pynvml over the simulated library."""
    from gpuwarden.exporter.sim.library import SimLibrary, installed

    with installed(SimLibrary(fleet)):
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            return pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
        finally:
            pynvml.nvmlShutdown()


def test_throttle_then_restore_on_the_simulated_fleet(make_rem, clock, sim_fleet):
    fleet, url = sim_fleet
    uuid = fleet.gpus[1].uuid
    before = nvml_limit_watts(fleet, uuid)
    rem = make_rem(
        {"throttle": {"fraction": 0.75, "hold_down_seconds": 30}},
        scheduler=FakeScheduler([g.uuid for g in fleet.gpus]),
        actuator=SimActuator(url),
    )
    deliver(rem, alert(uuid))
    assert rem.actions()[0]["outcome"] == "acted", rem.actions()[0]
    assert nvml_limit_watts(fleet, uuid) == pytest.approx(before * 0.75)
    assert nvml_limit_watts(fleet, fleet.gpus[0].uuid) == before  # the other GPU untouched
    deliver(rem, alert(uuid, status="resolved"))
    clock.t += 31
    rem.worker.run_once()
    assert nvml_limit_watts(fleet, uuid) == before
    assert [a["action"] for a in rem.actions()][:1] == ["restore"]


class _StubSim(BaseHTTPRequestHandler):
    """Speaks the simulator's control endpoint (BRIEF.md) for GPU "GPU-s": GET /api/v1/gpus,
    POST /api/v1/gpus/{gpu}/power-limit."""

    limit = 300.0

    def log_message(self, *a):
        pass

    def _send(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"gpus": [{"index": 0, "uuid": "GPU-s", "power_limit_watts": type(self).limit}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/api/v1/gpus/GPU-s/power-limit":
            return self._send(404, {"error": "no such GPU"})
        type(self).limit = body["watts"]
        self._send(200, {"gpus": []})


def test_sim_actuator_against_a_stub_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubSim)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        act = SimActuator(f"http://127.0.0.1:{server.server_address[1]}")
        assert act.read(GpuRef("GPU-s")).current_watts == 300.0
        act.set_limit(GpuRef("GPU-s"), 250.0)
        assert act.read(GpuRef("GPU-s")).current_watts == 250.0
        with pytest.raises(ActuatorError, match="HTTP 404"):
            act.set_limit(GpuRef("GPU-x"), 250.0)
        with pytest.raises(ActuatorError, match="no GPU GPU-x"):
            act.read(GpuRef("GPU-x"))
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ActuatorError, match="unreachable"):
        SimActuator(f"http://127.0.0.1:{server.server_address[1]}", timeout=1).read(GpuRef("x"))


def test_nvml_actuator_reads_constraints_and_sets_the_limit():
    from gpuwarden.exporter.sim.fleet import Fleet
    from gpuwarden.exporter.sim.library import SimLibrary, installed

    fleet = Fleet(1)
    uuid = fleet.gpus[0].uuid
    with installed(SimLibrary(fleet)):
        act = NvmlActuator(pynvml)
        limits = act.read(GpuRef(uuid))
        assert limits.min_watts < limits.current_watts <= limits.max_watts
        act.set_limit(GpuRef(uuid), limits.min_watts + 10)
        assert act.read(GpuRef(uuid)).current_watts == limits.min_watts + 10
        with pytest.raises(ActuatorError, match="not found through NVML on this host"):
            act.read(GpuRef("GPU-elsewhere", instance="node9:9786"))
        pynvml.nvmlShutdown()


def test_nvml_without_privilege_says_what_to_do():
    def denied(handle, mw):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    fake = types.SimpleNamespace(
        NVMLError=pynvml.NVMLError,
        NVMLError_NoPermission=pynvml.NVMLError_NoPermission,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda u: object(),
        nvmlDeviceSetPowerManagementLimit=denied,
    )
    with pytest.raises(ActuatorError, match="needs root"):
        NvmlActuator(fake).set_limit(GpuRef("GPU-1"), 200)  # type: ignore[arg-type]


def test_command_actuator_runs_argv_without_a_shell(tmp_path: Path):
    out = tmp_path / "calls"
    writer = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(repr(sys.argv[2:]) + '\\n')", str(out)]
    act = CommandActuator(
        writer + ["{instance}", "{gpu}", "{watts}"], [sys.executable, "-c", "print('300.00, 100.00, 450.00')"]
    )
    gpu = GpuRef("GPU-1", "3", "node1:9786", {"uuid": "GPU-1"})
    limits = act.read(gpu)
    assert (limits.current_watts, limits.min_watts, limits.max_watts) == (300, 100, 450)
    act.set_limit(gpu, 240)
    assert out.read_text() == "['node1:9786', '3', '240']\n"
    # A value a shell further on could parse (ssh hands its arguments to one) is refused
    # before anything runs (tests/remediation/test_command_injection.py tries many).
    with pytest.raises(ActuatorError, match="label instance='node1; touch pwned' refused"):
        act.set_limit(GpuRef("GPU-1", "3", "node1; touch pwned"), 240)
    assert out.read_text() == "['node1:9786', '3', '240']\n"


def test_command_template_refuses_option_like_label_values():
    with pytest.raises(ActuatorError, match="label instance"):
        render(["ssh", "{instance}", "true"], {"instance": "-oProxyCommand=evil"})
    with pytest.raises(ActuatorError, match="no label 'node'"):
        render(["scontrol", "update", "nodename={node}"], {})
    assert render(["scontrol", "update", "nodename={node}", "state=drain"], {"node": "n1"}) == [
        "scontrol",
        "update",
        "nodename=n1",
        "state=drain",
    ]


def test_command_failure_is_an_actuator_error():
    act = CommandActuator([sys.executable, "-c", "import sys; sys.exit('no such GPU')"], default_watts=300)
    with pytest.raises(ActuatorError, match="exited 1: no such GPU"):
        act.set_limit(GpuRef("GPU-1"), 200)
    assert act.read(GpuRef("GPU-1")).current_watts == 300


def test_command_hook_after_quarantine(make_rem, tmp_path: Path):
    out = tmp_path / "drain"
    rem = make_rem(
        {
            "commands": {
                "quarantine": [
                    sys.executable,
                    "-c",
                    "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                    str(out),
                    "nodename={instance}",
                ]
            },
            "budget": {"max_quarantined_ratio": 0.5},
        }
    )
    deliver(rem, alert("GPU-1", action="quarantine", rule="ECC_UNCORRECTABLE"))
    assert out.read_text() == "nodename=node1:9786"
