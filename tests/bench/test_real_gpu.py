"""python -m bench.real_gpu against the simulator (no GPU here): the report's content, the call
recording checked against the simulated library's own call counter, the power limit restored,
and the comparison able to fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from bench import real_gpu_compare as cmp
from bench import real_gpu_nvml as nv
from gpuwarden.exporter.sim.fleet import Fleet
from gpuwarden.exporter.sim.library import SimLibrary, installed
from tests.helpers import REPO


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_simulated_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "real_gpu.json"
    absent = tmp_path / "bin" / "nvidia-smi"
    res = _run(
        "-m", "bench.real_gpu", "--simulate", "2", "--json", str(out), "--nvidia-smi", str(absent),
        "--reps", "20", "--scrape-rounds", "2", "--scrape-per-round", "5",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    md, report = res.stdout, json.loads(out.read_text())
    assert report["mode"] == "simulated"
    assert "the real-GPU run has not happened yet" in md
    assert f"not run: nvidia-smi not found ({absent})" in md
    assert report["compare"]["nvidia_smi"]["status"].startswith("not run: nvidia-smi not found")
    assert [g["name"] for g in report["system"]["gpus"]] == ["gpuwarden Simulated GPU"] * 2

    # 1. Every series the simulator's state gives a reference for was compared on both GPUs, within tolerance.
    sim = report["compare"]["simulator"]
    rows = {r["key"]: r for r in sim["rows"]}
    for key in (
        "gpu_temperature_celsius",
        "gpu_power_watts",
        "gpu_power_limit_watts",
        "gpu_utilization_ratio",
        "gpu_ecc_errors_correctable_total",
        "gpu_ecc_errors_uncorrectable_total",
        'gpu_throttle_active{reason="sw_power_cap"}',
    ):
        assert rows[key]["gpus"] == 2 and rows[key]["result"] == "ok (2/2 GPUs)", rows[key]
    assert not [r for r in sim["rows"] if r["result"].startswith(("DIFF", "MISSING"))]
    assert rows["gpu_energy_joules_total"]["result"] == "no reference field"  # listed, not silently dropped
    assert sim["identity"] and all(i["ok"] for i in sim["identity"])

    # 2. The recorded per-scrape calls are all the calls a scrape makes: the simulated library
    # counted the same number per GPU in the nvitop comparison (an independent count).
    calls = {r["call"]: r for r in report["nvml_calls"]["rows"]}
    for key in ("nvmlDeviceGetTemperature", "nvmlDeviceGetFieldValues", "nvmlDeviceGetUtilizationRates"):
        assert calls[key]["when"] == "per scrape" and calls[key]["timed"] == "replayed", calls[key]
        assert 0 < calls[key]["median_us"] <= calls[key]["p99_us"]
    # Identity and the board's own limits are read once, not per scrape.
    assert calls["nvmlDeviceGetUUID"]["when"] == "once"
    assert calls["nvmlDeviceGetTemperatureThreshold:slowdown"]["when"] == "once"
    per_gpu = report["nvml_calls"]["summary"]["calls_per_gpu_per_scrape"]
    counted = report["scrape_cpu"]["results"]["gpuwarden"]["calls"] / 2
    assert per_gpu == counted, (per_gpu, counted)

    # 3. Both GPUs registered; the simulated XID raised after registration arrived in the one wait.
    xid = report["xid"]
    assert [g["registered"] for g in xid["gpus"]] == ["registered", "registered"]
    assert xid["wait"]["event"] == "xid" and xid["wait"]["gpu"] == 0 and xid["wait"]["xid"] == 13

    # 4. Power: tests run as root here, so the set ran and the limit was restored.
    power = report["power"]
    if os.geteuid() == 0:
        for g in power["gpus"]:
            assert g["status"] == "set and restored", g
            assert g["readback_w"] == g["enforced_w"] == g["target_w"] == g["original_w"] - 10
            assert g["restored_w"] == g["original_w"]
    else:
        assert power["status"] == "skipped: not root"

    # 5. Both exporters measured side by side.
    scrape = report["scrape_cpu"]
    assert scrape["status"] == "ok"
    assert set(scrape["results"]) >= {"gpuwarden", "nvitop (gpu only)", "nvitop (with host)"}
    assert "| 2 | gpuwarden |" in md


def test_real_driver_scrape_path_runs_exporter_scrapes_measurement() -> None:
    """The real-driver path of the nvitop comparison, with the simulated library standing in for
    libnvidia-ml at pynvml's library handle (loaded before nvmlInit, as a real one would be)."""
    code = (
        "import json\n"
        "from gpuwarden.exporter.sim.fleet import Fleet\n"
        "from gpuwarden.exporter.sim.library import SimLibrary, install\n"
        "install(SimLibrary(Fleet(3)))\n"
        "from bench.real_gpu_scrape import measure_real\n"
        "print(json.dumps(measure_real(2, 3)))\n"
    )
    res = _run("-c", code, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["gpus"] == 3
    for name in ("gpuwarden", "nvitop (gpu only)", "nvitop (with host)"):
        assert out[name]["scrapes"] == 6 and out[name]["calls"] > 0 and out[name]["cpu_ms"] > 0, out[name]


def test_comparison_fails_outside_the_bracket() -> None:
    uuid = "GPU-1"
    before: cmp.RefRows = {
        uuid: {"uuid": uuid, "temperature.gpu": 60.0, "power.draw.instant": 300.0, "memory.used": 1000.0}
    }
    after: cmp.RefRows = {
        uuid: {"uuid": uuid, "temperature.gpu": 62.0, "power.draw.instant": 310.0, "memory.used": 1000.0}
    }
    values = {
        uuid: {
            "gpu_temperature_celsius": 63.0,  # inside [60, 62] + 1
            "gpu_power_watts": 340.0,  # outside [300, 310] + (5 + 5% of 310)
            "gpu_energy_joules_total": 5.0,
        }
    }
    rows, _ = cmp.compare(values, {}, before, after)
    by = {r.key: r for r in rows}
    assert by["gpu_temperature_celsius"].result == "ok (1/1 GPUs)"
    assert by["gpu_power_watts"].result == "DIFF (0/1 GPUs)"
    assert by["gpu_power_watts"].max_excess == pytest.approx(340 - 310 - (5 + 0.05 * 310))
    assert by["gpu_energy_joules_total"].result == "no reference field"
    assert (
        by["gpu_memory_used_bytes"].result == "MISSING: reference has it"
    )  # the reference has it, we did not export it


def test_nvidia_smi_cells() -> None:
    smi = cmp.NvidiaSmi("nvidia-smi", ["temperature.gpu", "fan.speed", "clocks_event_reasons.sw_power_cap"])
    line = "GPU-abc, NVIDIA H200, 00000000:18:00.0, 580.159.03, 34, [N/A], Not Active\n"
    row = smi.parse(line)["GPU-abc"]
    assert row["name"] == "NVIDIA H200" and row["pci.bus_id"] == "00000000:18:00.0"
    assert row["temperature.gpu"] == 34.0 and row["fan.speed"] is None
    assert row["clocks_event_reasons.sw_power_cap"] == 0.0
    assert cmp.parse_smi_value("Active") == 1.0 and cmp.parse_smi_value("[Not Supported]") is None


def test_power_restore_reports_a_refused_set_and_leaves_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(2)
    fleet.inject(1, {"kind": "not_supported", "call": "nvmlDeviceSetPowerManagementLimit"})
    with installed(SimLibrary(fleet)):
        pynvml.nvmlInit()
        try:
            if os.geteuid() == 0:
                out = nv.power_set_restore(25.0)
                g0, g1 = out["gpus"]
                assert g0["status"] == "set and restored" and g0["readback_w"] == g0["original_w"] - 25
                assert g1["status"] == "FAILED" and not g1["set_ok"] and "Not Supported" in g1["error"]
                assert g1["restored_ok"] and fleet.gpus[1].power_limit_watts == g1["original_w"]
                assert [g.power_limit_watts for g in fleet.gpus] == [g0["original_w"], g1["original_w"]]
                # Where the agent's package does not import, the same calls made directly.
                direct = (nv._DirectPower(), nv._Ref, (pynvml.NVMLError,), "pynvml directly")
                monkeypatch.setattr(nv, "_power_backend", lambda: direct)
                out = nv.power_set_restore(30.0)
                assert out["via"] == "pynvml directly"
                assert [g["status"] for g in out["gpus"]] == ["set and restored", "FAILED"]
                assert out["gpus"][0]["readback_w"] == out["gpus"][0]["original_w"] - 30
                assert [g.power_limit_watts for g in fleet.gpus] == [g0["original_w"], g1["original_w"]]
            monkeypatch.setattr(os, "geteuid", lambda: 1000)
            assert nv.power_set_restore() == {"status": "skipped: not root"}
        finally:
            pynvml.nvmlShutdown()
            pynvml._nvmlLib_refcount = 0  # the actuator's own nvmlInit
