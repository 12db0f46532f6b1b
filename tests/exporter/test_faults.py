"""Every failure path: lost GPU, NOT_SUPPORTED, missing entry points, NVML absent, hung call, XID,
and the efficiency promises (one field call per GPU, calls not repeated, single flight)."""

from __future__ import annotations

import threading
import time

import pynvml

from gpuwarden.exporter.sim.library import install
from tests.helpers import wait_until


def test_lost_gpu_is_down_and_the_others_report_in_full(make_exporter):
    h = make_exporter(4)
    full = h.scrape()
    h.fleet.inject(1, {"kind": "lost"})
    fams = h.scrape()
    assert h.values(fams, "gpu_up") == {"0": 1, "1": 0, "2": 1, "3": 1}
    for name in (
        "gpu_temperature_celsius",
        "gpu_power_watts",
        "gpu_memory_used_bytes",
        "gpu_ecc_errors_correctable_total",
    ):
        assert set(h.values(fams, name)) == {"0", "2", "3"}, name
    # The lost GPU keeps its identity; the rest of its series go away rather than lie.
    assert set(h.values(fams, "gpu_info")) == {"0", "1", "2", "3"}
    assert len([s for f in fams.values() for s in f.samples if s.labels.get("gpu") in ("0", "2", "3")]) == len(
        [s for f in full.values() for s in f.samples if s.labels.get("gpu") in ("0", "2", "3")]
    )
    assert h.values(
        fams, "gpuwarden_exporter_nvml_errors_total", call="nvmlDeviceGetFieldValues", code="gpu_is_lost"
    ) == {"": 1}
    h.fleet.inject(1, {"kind": "driver_reload"})
    assert h.values(h.scrape(), "gpu_up") == {"0": 1, "1": 1, "2": 1, "3": 1}


def test_not_supported_is_asked_once_per_gpu_and_call(make_exporter):
    h = make_exporter(4)
    h.fleet.inject(2, {"kind": "not_supported", "call": "nvmlDeviceGetFanSpeed"})
    fams = h.scrape()
    assert set(h.values(fams, "gpu_fan_speed_ratio")) == {"0", "1", "3"}
    assert h.values(fams, "gpu_up")["2"] == 1  # an unsupported reading is not an error
    before = h.lib.calls["nvmlDeviceGetFanSpeed"]
    for _ in range(3):
        h.scrape()
    assert h.lib.calls["nvmlDeviceGetFanSpeed"] - before == 3 * 3  # GPU 2 never asked again
    assert h.values(
        h.scrape(), "gpuwarden_exporter_nvml_errors_total", call="nvmlDeviceGetFanSpeed", code="not_supported"
    ) == {"": 1}


def test_one_field_values_call_per_gpu_and_few_calls_per_scrape(make_exporter):
    h = make_exporter(8)
    h.scrape()  # first scrape learns what is unsupported
    h.lib.calls.clear()
    h.scrape()
    assert h.lib.calls["nvmlDeviceGetFieldValues"] == 8
    for fallback in (
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetPcieReplayCounter",
    ):
        assert h.lib.calls[fallback] == 0, fallback
    # 10 a GPU on the simulated Hopper with the default collectors: the field-values call,
    # temperature, utilization, memory, clock-event reasons, SM and memory clocks, fan, encoder,
    # decoder (docs/BENCHMARKS.md, exporter section). GPM (two more) is off by default.
    per_gpu = dict(h.lib.calls)
    assert sum(per_gpu.values()) == 10 * 8, per_gpu


def test_power_limits_ride_in_the_field_values_call_and_follow_a_throttle(make_exporter):
    h = make_exporter(2)
    h.scrape()
    h.lib.calls.clear()
    h.fleet.set_power_limit(1, 300)
    fams = h.scrape()
    assert h.values(fams, "gpu_power_limit_watts") == {"0": 700.0, "1": 300.0}
    assert h.values(fams, "gpu_power_limit_min_watts") == {"0": 200.0, "1": 200.0}
    assert h.values(fams, "gpu_power_limit_max_watts") == {"0": 700.0, "1": 700.0}
    assert h.values(fams, "gpu_power_limit_default_watts") == {"0": 700.0, "1": 700.0}
    assert h.lib.calls["nvmlDeviceGetFieldValues"] == 2
    assert not [c for c in h.lib.calls if "PowerLimit" in c or "PowerManagement" in c], dict(h.lib.calls)


def test_without_the_field_api_limits_come_from_their_calls_and_fixed_ones_once(make_exporter):
    h = make_exporter(2, missing=frozenset({"nvmlDeviceGetFieldValues"}))
    h.fleet.set_power_limit(0, 250)
    fams = h.scrape()
    assert h.values(fams, "gpu_power_limit_watts") == {"0": 250.0, "1": 700.0}
    assert h.values(fams, "gpu_power_limit_min_watts") == {"0": 200.0, "1": 200.0}
    assert h.values(fams, "gpu_power_limit_default_watts") == {"0": 700.0, "1": 700.0}
    h.lib.calls.clear()
    fams = h.scrape()
    assert h.values(fams, "gpu_power_limit_max_watts") == {"0": 700.0, "1": 700.0}  # still served
    assert h.lib.calls["nvmlDeviceGetEnforcedPowerLimit"] == 2  # it can change: every scrape
    assert h.lib.calls["nvmlDeviceGetPowerManagementDefaultLimit"] == 0
    assert h.lib.calls["nvmlDeviceGetPowerManagementLimitConstraints"] == 0


def test_library_without_field_api_falls_back_to_individual_calls(make_exporter):
    h = make_exporter(2, missing=frozenset({"nvmlDeviceGetFieldValues"}))
    fams = h.scrape()
    for name in (
        "gpu_power_watts",
        "gpu_energy_joules_total",
        "gpu_ecc_errors_correctable_total",
        "gpu_pcie_replays_total",
        "gpu_temperature_celsius",
    ):
        assert set(h.values(fams, name)) == {"0", "1"}, name
    assert set(h.values(fams, "gpu_remapped_rows", cause="uncorrectable")) == {"0", "1"}
    assert h.values(fams, "gpu_up") == {"0": 1, "1": 1}
    assert h.values(
        fams, "gpuwarden_exporter_nvml_errors_total", call="nvmlDeviceGetFieldValues", code="function_not_found"
    ) == {"": 2}
    h.scrape()
    assert h.values(
        h.scrape(), "gpuwarden_exporter_nvml_errors_total", call="nvmlDeviceGetFieldValues", code="function_not_found"
    ) == {"": 2}  # not asked again


def test_older_library_entry_points_are_used_when_new_ones_are_missing(make_exporter):
    h = make_exporter(2, missing=frozenset({"nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetMemoryInfo_v2"}))
    h.fleet.set_power_limit(0, 200)
    h.fleet.set_load(0, utilization=0.9)
    fams = h.scrape()
    assert h.values(fams, "gpu_throttle_active", reason="sw_power_cap") == {"0": 1, "1": 0}
    assert set(h.values(fams, "gpu_memory_used_bytes")) == {"0", "1"}


def test_nvml_absent_keeps_serving_and_retries_with_backoff(make_exporter):
    attempts = []
    lib_holder = {}

    def loader() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            install(None)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        install(lib_holder["lib"])

    h = make_exporter(2, loader=loader, retry_initial=0.1, retry_max=0.2)
    lib_holder["lib"] = h.lib
    fams = h.scrape()
    assert h.values(fams, "gpuwarden_exporter_nvml_up") == {"": 0}
    assert "gpu_up" not in fams
    assert h.values(fams, "gpuwarden_exporter_nvml_errors_total", call="nvmlInit", code="library_not_found") == {"": 1}
    wait_until(lambda: h.values(h.scrape(), "gpuwarden_exporter_nvml_up") == {"": 1}, timeout=5, what="NVML up")
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= attempts[1] - attempts[0] - 0.01  # the delay does not shrink
    assert h.values(h.scrape(), "gpu_up") == {"0": 1, "1": 1}


def test_hung_call_never_holds_the_scrape_past_the_deadline(make_exporter):
    h = make_exporter(4, timeout=0.3)
    before = h.values(h.scrape(), "gpu_temperature_celsius")
    h.fleet.inject(1, {"kind": "hang", "call": "nvmlDeviceGetTemperature", "seconds": 30})
    h.fleet.set_load("all", utilization=0.9)
    h.clock.advance(120)
    for _ in range(2):  # the second scrape finds the reader still stuck
        t0 = time.monotonic()
        fams = h.scrape()
        assert time.monotonic() - t0 < 1.0
        assert h.values(fams, "gpuwarden_exporter_gpu_stale") == {"0": 0, "1": 1, "2": 0, "3": 0}
        assert h.values(fams, "gpu_up") == {"0": 1, "1": 0, "2": 1, "3": 1}
        temps = h.values(fams, "gpu_temperature_celsius")
        assert temps["1"] == before["1"]  # last good value, flagged stale
        assert temps["0"] > before["0"] + 10  # the others are fresh
    h.fleet.clear(1)
    wait_until(
        lambda: h.values(h.scrape(), "gpuwarden_exporter_gpu_stale")["1"] == 0, timeout=5, what="GPU 1 fresh again"
    )
    assert h.values(h.scrape(), "gpu_temperature_celsius")["1"] > before["1"] + 10


def test_xid_events_are_counted_by_gpu_and_xid(make_exporter):
    h = make_exporter(4)
    h.fleet.inject(3, {"kind": "xid", "xid": 31})
    h.fleet.inject(3, {"kind": "xid", "xid": 31})
    h.fleet.inject(0, {"kind": "xid", "xid": 79})
    wait_until(
        lambda: h.values(h.scrape(), "gpu_xid_errors_total", xid="31") == {"3": 2},
        timeout=5,
        what="two XID 31 on GPU 3",
    )
    fams = h.scrape()
    assert h.values(fams, "gpu_xid_errors_total", xid="79") == {"0": 1}
    assert h.values(fams, "gpu_up") == {"0": 0, "1": 1, "2": 1, "3": 1}  # XID 79: off the bus
    assert h.service.xid is not None and sorted(h.service.xid.registered) == [0, 1, 2, 3]


def test_concurrent_scrapes_share_one_collection(make_exporter):
    h = make_exporter(8, latency_s=0.01)  # each collection takes ~0.1 s
    h.scrape()
    h.lib.calls.clear()
    barrier = threading.Barrier(8)
    results = []

    def scrape() -> None:
        barrier.wait()
        results.append(h.text())

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    assert h.lib.calls["nvmlDeviceGetFieldValues"] == 8  # one per GPU, not one per GPU per scrape


def test_slow_nvml_is_read_in_parallel_fast_nvml_by_one_reader(make_exporter):
    h = make_exporter(8, latency_s=0.005)  # ~45 ms a GPU: 360 ms one after another
    for _ in range(3):
        h.scrape()  # learns how slow a GPU is
    t0 = time.monotonic()
    h.scrape()
    assert time.monotonic() - t0 < 0.2
    h.lib.latency_s = 0.0
    for _ in range(60):
        h.scrape()  # fast again: the estimate comes down
    before = threading.active_count()
    readers = h.service.sampler._round.readers
    h.scrape()
    assert h.service.sampler._round.readers == 1 and readers == 1
    assert threading.active_count() == before  # no thread started per scrape


def test_a_disabled_collector_makes_no_calls_and_exports_nothing(make_exporter):
    h = make_exporter(2, enabled={"ecc": False, "clocks": False})
    fams = h.scrape()
    h.lib.calls.clear()
    fams = h.scrape()
    assert not any(n.startswith(("gpu_ecc", "gpu_remapped", "gpu_retired", "gpu_sm_clock")) for n in fams)
    assert h.lib.calls["nvmlDeviceGetClockInfo"] == 0
    assert set(h.values(fams, "gpu_temperature_celsius")) == {"0", "1"}


def test_cli_parses_durations_and_collector_flags():
    from gpuwarden.exporter.cli import build_parser

    args = build_parser().parse_args(["--collector.timeout=250ms", "--no-collector.xid", "--collector.ecc"])
    assert args.timeout == 0.25 and args.collector_xid is False and args.collector_ecc is True
    assert build_parser().parse_args(["--collector.timeout=3"]).timeout == 3.0
    assert build_parser().parse_args([]).listen == ":9786"


def test_gpu_lost_before_the_first_scrape_keeps_its_identity(make_exporter):
    h = make_exporter(2)
    h.fleet.inject(1, {"kind": "xid", "xid": 79})
    wait_until(lambda: h.values(h.scrape(), "gpu_xid_errors_total", xid="79"), what="XID 79 counted")
    fams = h.scrape()
    uuid = h.fleet.gpus[1].uuid
    assert [s.labels["uuid"] for s in fams["gpu_up"].samples if s.labels["gpu"] == "1"] == [uuid]
    assert [s.labels["uuid"] for s in fams["gpu_xid_errors"].samples] == [uuid]


def test_gpu_limits_are_read_once_and_not_supported_is_cached_per_gpu(make_exporter):
    """The GPU's own limits (relative alert thresholds read them) are fixed: asked once per GPU;
    a GPU answering NOT_SUPPORTED for the temperature thresholds is not asked again either."""
    h = make_exporter(
        3, setup=lambda f: f.inject(1, {"kind": "not_supported", "call": "nvmlDeviceGetTemperatureThreshold"})
    )
    fams = h.scrape()
    slowdown = {k: v for k, v in h.values(fams, "gpu_temperature_threshold_celsius", threshold="slowdown").items()}
    assert set(slowdown) == {"0", "2"} and slowdown["0"] == 88.0  # the simulated H100's figure
    assert h.values(fams, "gpu_power_limit_default_watts") == {"0": 700.0, "1": 700.0, "2": 700.0}
    assert h.values(fams, "gpu_up")["1"] == 1
    h.lib.calls.clear()
    for _ in range(3):
        fams = h.scrape()
    for call in (
        "nvmlDeviceGetTemperatureThreshold",
        "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceGetPowerManagementLimitConstraints",
    ):
        assert h.lib.calls[call] == 0, call
    assert set(h.values(fams, "gpu_temperature_threshold_celsius", threshold="slowdown")) == {"0", "2"}
