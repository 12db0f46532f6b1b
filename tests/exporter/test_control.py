"""The simulator's control endpoint, seen through the exporter's NVML readings."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from gpuwarden.exporter.sim.control import ControlServer


def _call(
    port: int, method: str, path: str, body: Any = None, raw: bytes | None = None, ctype: str = "application/json"
) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={"Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def controlled(make_exporter):
    h = make_exporter(4)
    server = ControlServer(h.fleet, "127.0.0.1", 0).start()
    yield h, server.port
    server.stop()


def test_state_of_every_gpu(controlled):
    h, port = controlled
    status, body = _call(port, "GET", "/api/v1/gpus")
    assert status == 200
    assert [g["index"] for g in body["gpus"]] == [0, 1, 2, 3]
    assert body["gpus"][2]["uuid"] == h.fleet.gpus[2].uuid
    assert body["gpus"][0]["power_limit_watts"] == 700.0


def test_power_limit_by_index_or_uuid_reaches_nvml(controlled):
    h, port = controlled
    status, body = _call(port, "POST", "/api/v1/gpus/1/power-limit", {"watts": 300})
    assert status == 200 and body["gpus"][0]["power_limit_watts"] == 300
    status, _ = _call(port, "POST", f"/api/v1/gpus/{h.fleet.gpus[2].uuid}/power-limit", {"watts": 350})
    assert status == 200
    assert h.values(h.scrape(), "gpu_power_limit_watts") == {"0": 700, "1": 300, "2": 350, "3": 700}
    status, body = _call(port, "POST", "/api/v1/gpus/1/power-limit", {"watts": 5000})
    assert status == 400 and "outside" in body["error"]
    status, body = _call(port, "POST", "/api/v1/gpus/1/power-limit", {"volts": 3})
    assert status == 400 and "watts" in body["error"]


def test_load_and_faults(controlled):
    h, port = controlled
    assert _call(port, "POST", "/api/v1/gpus/3/load", {"utilization": 0.9, "memory_ratio": 0.95})[0] == 200
    assert _call(port, "POST", "/api/v1/gpus/0/faults", {"kind": "lost"})[0] == 200
    fams = h.scrape()
    assert h.values(fams, "gpu_utilization_ratio")["3"] == 0.9
    assert h.values(fams, "gpu_memory_used_bytes")["3"] / h.values(fams, "gpu_memory_total_bytes")["3"] >= 0.9
    assert h.values(fams, "gpu_up") == {"0": 0, "1": 1, "2": 1, "3": 1}
    assert _call(port, "DELETE", "/api/v1/gpus/0/faults")[0] == 200
    assert h.values(h.scrape(), "gpu_up")["0"] == 1


def test_bad_requests_say_what_is_wrong(controlled):
    _, port = controlled
    status, body = _call(port, "POST", "/api/v1/gpus/0/faults", {"kind": "meltdown"})
    assert status == 400 and "meltdown" in body["error"] and "known kinds" in body["error"]
    status, body = _call(port, "POST", "/api/v1/gpus/0/faults", {"kind": "cooling", "factr": 2})
    assert status == 400 and "factor" in body["error"]
    status, body = _call(port, "POST", "/api/v1/gpus/9/load", {"utilization": 0.5})
    assert status == 404 and "no simulated GPU" in body["error"]
    status, body = _call(port, "POST", "/api/v1/gpus/0/load", {"utilization": 1.5})
    assert status == 400 and "utilization" in body["error"]
    status, body = _call(port, "POST", "/api/v1/gpus/0/faults", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    assert _call(port, "GET", "/api/v1/nothing")[0] == 404


def test_scenario_played_from_now(controlled):
    h, port = controlled
    doc = (
        "name: live\nsteps:\n  - {at: 0, gpu: 2, fault: {kind: ecc, uncorrectable: 1}}\n"
        "  - {at: 30s, gpu: 2, fault: {kind: lost}}\n"
    )
    status, body = _call(port, "POST", "/api/v1/scenario", raw=doc.encode(), ctype="application/yaml")
    assert status == 202 and body == {"playing": "live", "steps": 2}
    fams = h.scrape()
    assert h.values(fams, "gpu_ecc_errors_uncorrectable_total")["2"] == 1
    assert h.values(fams, "gpu_up")["2"] == 1
    h.clock.advance(31)
    assert h.values(h.scrape(), "gpu_up")["2"] == 0
    status, body = _call(port, "POST", "/api/v1/scenario", raw=b"name: bad\nsteps: []\n", ctype="application/yaml")
    assert status == 400 and "steps" in body["error"]
