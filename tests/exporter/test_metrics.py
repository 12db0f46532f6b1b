"""Values, types and labels of every contract metric, per GPU, on the simulated fleet."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pynvml
import pytest

from tests.helpers import require_binary

GOLDEN = Path(__file__).parent / "golden" / "metrics-8gpu.prom"
UPDATE_ENV = "GPUWARDEN_UPDATE_GOLDEN"  # GPUWARDEN_UPDATE_GOLDEN=1 pytest tests/exporter rewrites it

# name -> (type, extra label or None)
CONTRACT = {
    "gpu_info": ("gauge", None),
    "gpu_up": ("gauge", None),
    "gpu_temperature_celsius": ("gauge", None),
    "gpu_memory_temperature_celsius": ("gauge", None),
    "gpu_power_watts": ("gauge", None),
    "gpu_power_limit_watts": ("gauge", None),
    "gpu_energy_joules": ("counter", None),
    "gpu_utilization_ratio": ("gauge", None),
    "gpu_memory_utilization_ratio": ("gauge", None),
    "gpu_memory_used_bytes": ("gauge", None),
    "gpu_memory_total_bytes": ("gauge", None),
    "gpu_ecc_errors_correctable": ("counter", None),
    "gpu_ecc_errors_uncorrectable": ("counter", None),
    "gpu_remapped_rows": ("gauge", "cause"),
    "gpu_throttle_active": ("gauge", "reason"),
    "gpu_sm_clock_hertz": ("gauge", None),
    "gpu_memory_clock_hertz": ("gauge", None),
    "gpu_fan_speed_ratio": ("gauge", None),
    "gpu_pcie_replays": ("counter", None),
    "gpuwarden_exporter_gpu_stale": ("gauge", None),
}
REASONS = {
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
}


def test_every_contract_metric_for_every_gpu(make_exporter):
    h = make_exporter(8)
    h.clock.advance(30)
    fams = h.scrape()
    uuids = {str(g.index): g.uuid for g in h.fleet.gpus}
    for name, (mtype, extra) in CONTRACT.items():
        assert name in fams, f"{name} missing from /metrics"
        fam = fams[name]
        assert fam.type == mtype, f"{name} is a {fam.type}, want {mtype}"
        expected_labels = {"gpu", "uuid"} | ({extra} if extra else set())
        if name == "gpu_info":
            expected_labels |= {"name", "pci_bus_id", "driver_version"}
        seen = set()
        for s in fam.samples:
            assert set(s.labels) == expected_labels, f"{name} labels {sorted(s.labels)}"
            assert uuids[s.labels["gpu"]] == s.labels["uuid"]
            seen.add(s.labels["gpu"])
        assert seen == set(uuids), f"{name} covers GPUs {sorted(seen)}"
    throttle = fams["gpu_throttle_active"].samples
    assert {s.labels["reason"] for s in throttle} == REASONS
    assert {s.labels["cause"] for s in fams["gpu_remapped_rows"].samples} == {"correctable", "uncorrectable"}
    assert "gpu_retired_pages" not in fams or not fams["gpu_retired_pages"].samples  # H100 remaps rows


def test_values_are_nvml_readings_in_base_units(make_exporter):
    h = make_exporter(4)
    h.fleet.set_load(2, utilization=0.5, memory_ratio=0.5)
    h.clock.advance(60)
    fams = h.scrape()
    g = h.fleet.gpus[2]
    v = lambda name, **kw: h.values(fams, name, **kw)["2"]  # noqa: E731
    assert v("gpu_up") == 1
    assert v("gpu_temperature_celsius") == int(g.temperature)
    assert v("gpu_memory_temperature_celsius") == int(g.memory_temperature)
    assert v("gpu_power_watts") == pytest.approx(g.power_watts, abs=0.001)  # mW -> W
    assert v("gpu_power_limit_watts") == 700.0
    assert v("gpu_energy_joules_total") == pytest.approx(g.energy_mj / 1000, abs=0.001)  # mJ -> J
    assert v("gpu_utilization_ratio") == 0.5
    assert v("gpu_memory_used_bytes") == 40 * 1024**3
    assert v("gpu_memory_total_bytes") == 80 * 1024**3
    assert v("gpu_sm_clock_hertz") == g.sm_clock_mhz * 1e6
    assert v("gpu_memory_clock_hertz") == 2619e6
    assert v("gpu_fan_speed_ratio") == g.fan_percent / 100
    info = [s for s in fams["gpu_info"].samples if s.labels["gpu"] == "2"][0]
    assert info.labels == {
        "gpu": "2",
        "uuid": g.uuid,
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:1A:00.0",
        "driver_version": "550.54.15",
    }
    assert h.values(fams, "gpuwarden_exporter_nvml_up") == {"": 1.0}


def test_counters_and_ecc_follow_the_gpu(make_exporter):
    h = make_exporter(2)
    e0 = h.values(h.scrape(), "gpu_energy_joules_total")["1"]
    h.fleet.inject(1, {"kind": "ecc", "correctable": 16, "uncorrectable": 1})
    h.fleet.inject(1, {"kind": "pcie_replays", "count": 3})
    h.clock.advance(10)
    fams = h.scrape()
    assert h.values(fams, "gpu_energy_joules_total")["1"] > e0
    assert h.values(fams, "gpu_ecc_errors_correctable_total") == {"0": 0, "1": 16}
    assert h.values(fams, "gpu_ecc_errors_uncorrectable_total") == {"0": 0, "1": 1}
    assert h.values(fams, "gpu_remapped_rows", cause="correctable")["1"] == 2
    assert h.values(fams, "gpu_remapped_rows", cause="uncorrectable")["1"] == 1
    assert h.values(fams, "gpu_pcie_replays_total") == {"0": 0, "1": 3}


def test_older_board_reports_retired_pages_instead_of_remapped_rows(make_exporter):
    h = make_exporter(2, model="v100")
    h.fleet.inject(0, {"kind": "ecc", "correctable": 8, "uncorrectable": 2})
    fams = h.scrape()
    assert h.values(fams, "gpu_retired_pages", cause="single_bit") == {"0": 1, "1": 0}
    assert h.values(fams, "gpu_retired_pages", cause="double_bit") == {"0": 2, "1": 0}
    assert not fams["gpu_remapped_rows"].samples
    assert "gpu_fan_speed_ratio" not in fams or not fams["gpu_fan_speed_ratio"].samples


def test_lower_power_limit_through_nvml_caps_power_and_cools_the_gpu(make_exporter):
    h = make_exporter(2)
    h.fleet.set_load("all", utilization=0.9)
    h.clock.advance(300)
    hot = h.scrape()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlDeviceSetPowerManagementLimit(handle, 300_000)  # what the agent's throttle does
    h.clock.advance(300)
    cool = h.scrape()
    assert h.values(cool, "gpu_power_limit_watts")["0"] == 300
    assert h.values(cool, "gpu_power_watts")["0"] == 300
    assert h.values(cool, "gpu_throttle_active", reason="sw_power_cap") == {"0": 1, "1": 0}
    t_hot, t_cool = h.values(hot, "gpu_temperature_celsius")["0"], h.values(cool, "gpu_temperature_celsius")["0"]
    assert t_cool < t_hot - 15, (t_hot, t_cool)
    assert h.values(cool, "gpu_temperature_celsius")["1"] >= t_hot - 1  # the other GPU did not cool


def _normalise(text: str) -> str:
    # The only value that depends on the machine: how long this scrape waited.
    return re.sub(r"^(gpuwarden_exporter_collect_duration_seconds) .*$", r"\1 <duration>", text, flags=re.M)


def test_golden_exposition(make_exporter):
    h = make_exporter(8)
    h.fleet.inject(3, {"kind": "ecc", "correctable": 9})
    h.fleet.set_power_limit(5, 250)
    h.clock.advance(120)
    text = _normalise(h.text())
    if os.environ.get(UPDATE_ENV):
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), f"no golden file; create it with {UPDATE_ENV}=1 pytest {__file__}"
    assert text == GOLDEN.read_text(), f"/metrics changed; if intended, rerun with {UPDATE_ENV}=1 and review the diff"


@pytest.mark.binaries
def test_promtool_check_metrics_is_silent_on_everything_we_export(make_exporter, tmp_path):
    promtool = require_binary("promtool")
    h = make_exporter(8)
    h.fleet.inject(2, {"kind": "xid", "xid": 31})  # so the XID family has a sample
    h.fleet.inject(4, {"kind": "lost"})  # and the error counter too
    from tests.helpers import wait_until

    wait_until(lambda: h.values(h.scrape(), "gpu_xid_errors_total"), what="XID counted")
    text = h.text()
    assert "gpu_xid_errors_total{" in text and "gpuwarden_exporter_nvml_errors_total{" in text
    res = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0 and res.stdout == b"" and res.stderr == b"", res.stdout + res.stderr


def test_fast_renderer_says_what_prometheus_client_says(make_exporter):
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    h = make_exporter(3)
    h.fleet.inject(1, {"kind": "lost"})
    h.fleet.inject(2, {"kind": "xid", "xid": 13, "lose_gpu": False})
    from tests.helpers import wait_until

    wait_until(lambda: "gpu_xid_errors_total{" in h.text(), what="XID 13 counted")
    snap = h.service.snapshot()
    h.service.snapshot = lambda: snap  # both render one collection
    ours = list(text_string_to_metric_families(h.text()))
    theirs = list(text_string_to_metric_families(generate_latest(h.registry).decode()))
    assert ours == theirs
