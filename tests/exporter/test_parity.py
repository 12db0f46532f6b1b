"""The parity metrics (issue 16, item 4): encoder/decoder, framebuffer free/reserved, PCIe and
NVLink traffic, row-remap pending/failure, GPM activity. Each read the cheapest way NVML offers,
each behind its collector flag, unsupported boards asked once."""

from __future__ import annotations

import subprocess

import pytest

from gpuwarden.exporter import collectors
from gpuwarden.exporter.cli import build_parser
from tests.helpers import require_binary

GPM = ("gpu_sm_active_ratio", "gpu_sm_occupancy_ratio", "gpu_tensor_active_ratio", "gpu_dram_active_ratio")
NVLINK = ("gpu_nvlink_transmit_bytes_total", "gpu_nvlink_receive_bytes_total")
PCIE_COUNTERS = ("gpu_pcie_transmit_bytes_total", "gpu_pcie_receive_bytes_total")
PCIE_RATES = ("gpu_pcie_transmit_bytes_per_second", "gpu_pcie_receive_bytes_per_second")


def _two_scrapes(h, load: float = 0.8, seconds: float = 60):  # type: ignore[no-untyped-def]
    h.fleet.set_load("all", utilization=load)
    first = h.scrape()
    h.clock.advance(seconds)
    return first, h.scrape()


def test_hopper_reports_gpm_activity_nvlink_and_pcie_byte_counters(make_exporter):
    h = make_exporter(2, model="h100", enabled={"gpm": True})
    first, fams = _two_scrapes(h, load=0.8)
    for name in GPM:  # GPM needs two samples: nothing from the start-up collection's alone
        assert set(h.values(fams, name)) == {"0", "1"}, name
        assert all(0.0 <= v <= 1.0 for v in h.values(fams, name).values()), name
    # The simulated job keeps SMs busy in step with its load over the interval.
    assert h.values(fams, "gpu_sm_active_ratio")["0"] == pytest.approx(0.8, abs=0.01)
    assert h.values(fams, "gpu_tensor_active_ratio")["0"] == pytest.approx(0.56, abs=0.01)
    for name in NVLINK + PCIE_COUNTERS:
        before, after = h.values(first, name)["0"], h.values(fams, name)["0"]
        assert after > before, name
    # 60 s at 80 % of 4 GB/s sent: the counter moved by that many bytes (bytes, not KiB).
    sent = h.values(fams, "gpu_pcie_transmit_bytes_total")["0"] - h.values(first, "gpu_pcie_transmit_bytes_total")["0"]
    assert sent == pytest.approx(60 * 0.8 * 4e9, rel=0.01)
    nv = h.values(fams, NVLINK[0])["0"] - h.values(first, NVLINK[0])["0"]
    assert nv == pytest.approx(60 * 0.8 * 12.5e9 * 18, rel=0.01)
    for name in PCIE_RATES:
        assert name not in fams or not fams[name].samples, name


def test_ampere_has_nvlink_and_row_remapping_but_no_gpm_and_is_asked_once(make_exporter):
    h = make_exporter(2, model="a100", enabled={"gpm": True})
    _, fams = _two_scrapes(h)
    for name in GPM:
        assert not h.values(fams, name), name
    assert set(h.values(fams, NVLINK[0])) == {"0", "1"}
    assert h.values(fams, "gpu_remapped_rows_failure") == {"0": 0, "1": 0}
    h.lib.calls.clear()
    h.scrape()
    assert not [c for c in h.lib.calls if c.startswith("nvmlGpm")]  # support asked once, at start


def test_older_board_reads_pcie_as_a_rate_and_has_no_remapper(make_exporter):
    h = make_exporter(2, model="v100")
    h.fleet.set_load("all", utilization=0.5)
    fams = h.scrape()
    assert h.values(fams, "gpu_pcie_transmit_bytes_per_second")["0"] == pytest.approx(0.5 * 4e9, rel=0.01)
    assert h.values(fams, "gpu_pcie_receive_bytes_per_second")["0"] == pytest.approx(0.5 * 8e9, rel=0.01)
    for name in PCIE_COUNTERS + ("gpu_remapped_rows_pending", "gpu_remapped_rows_failure"):
        assert not h.values(fams, name), name
    assert set(h.values(fams, NVLINK[0])) == {"0", "1"}  # SXM2 has NVLink


def test_framebuffer_free_and_reserved_come_with_the_memory_call(make_exporter):
    h = make_exporter(1, model="h100")
    h.fleet.set_load(0, memory_ratio=0.5)
    h.scrape()
    h.lib.calls.clear()
    fams = h.scrape()
    g = h.fleet.gpus[0]
    assert h.values(fams, "gpu_memory_reserved_bytes") == {"0": 512 * 1024**2}
    assert h.values(fams, "gpu_memory_free_bytes") == {"0": g.memory_total - g.memory_used - 512 * 1024**2}
    assert h.lib.calls["nvmlDeviceGetMemoryInfo_v2"] == 1  # no call more for them


def test_encoder_decoder_and_remap_failure_follow_the_gpu(make_exporter):
    h = make_exporter(2, model="h100")
    g = h.fleet.gpus[1]
    g.encoder_utilization, g.decoder_utilization, g.remap_failure = 0.25, 0.5, True
    g.add_ecc(uncorrectable=1)
    fams = h.scrape()
    assert h.values(fams, "gpu_encoder_utilization_ratio") == {"0": 0.0, "1": 0.25}
    assert h.values(fams, "gpu_decoder_utilization_ratio") == {"0": 0.0, "1": 0.5}
    assert h.values(fams, "gpu_remapped_rows_failure") == {"0": 0, "1": 1}
    assert h.values(fams, "gpu_remapped_rows_pending") == {"0": 0, "1": 1}


def test_unsupported_video_engines_are_asked_once(make_exporter):
    h = make_exporter(
        2, setup=lambda f: f.inject(0, {"kind": "not_supported", "call": "nvmlDeviceGetEncoderUtilization"})
    )
    h.scrape()
    h.lib.calls.clear()
    fams = h.scrape()
    assert h.lib.calls["nvmlDeviceGetEncoderUtilization"] == 1  # GPU 1 only
    assert set(h.values(fams, "gpu_encoder_utilization_ratio")) == {"1"}
    assert h.values(fams, "gpu_up") == {"0": 1, "1": 1}


def test_traffic_counters_ride_in_the_one_field_values_call(make_exporter):
    h = make_exporter(4, model="h100")
    h.scrape()
    h.lib.calls.clear()
    h.scrape()
    assert h.lib.calls["nvmlDeviceGetFieldValues"] == 4
    assert h.lib.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert h.lib.calls["nvmlDeviceGetRemappedRows"] == 0


@pytest.mark.parametrize("name", ["encoder", "gpm", "pcie_traffic", "nvlink"])
def test_each_new_collector_has_its_flag_and_off_means_no_calls(make_exporter, name):
    assert getattr(build_parser().parse_args([f"--no-collector.{name}"]), f"collector_{name}") is False
    assert collectors.COLLECTORS[name].default_enabled is (name != "gpm")
    h = make_exporter(2, model="h100", enabled={name: False})
    _, fams = _two_scrapes(h)
    gone = {"encoder": ("gpu_encoder_utilization_ratio",), "gpm": GPM, "pcie_traffic": PCIE_COUNTERS, "nvlink": NVLINK}
    for metric in gone[name]:
        assert metric not in fams, metric
    if name == "encoder":
        assert h.lib.calls["nvmlDeviceGetEncoderUtilization"] == 0
    if name == "gpm":
        assert not [c for c in h.lib.calls if c.startswith("nvmlGpm")]


def test_gpm_is_off_by_default_and_on_with_its_flag(make_exporter):
    """Profiling figures cost two calls per GPU per scrape: opt-in, like dcgm-exporter's DCP fields."""
    assert build_parser().parse_args([]).collector_gpm is False
    assert build_parser().parse_args(["--collector.gpm"]).collector_gpm is True
    h = make_exporter(2, model="h100")
    _, fams = _two_scrapes(h)
    assert not [name for name in GPM if name in fams]
    assert not [c for c in h.lib.calls if c.startswith("nvmlGpm")]


def test_gpm_samples_are_allocated_once_per_gpu_and_freed(make_exporter):
    h = make_exporter(3, model="h100", enabled={"gpm": True}, rescan_interval=3600)
    for _ in range(4):
        h.clock.advance(10)
        h.scrape()
    assert h.lib.calls["nvmlGpmSampleAlloc"] == 2 * 3  # two per GPU, taken in turn
    assert h.lib.calls["nvmlGpmSampleGet"] == 5 * 3  # the start-up collection and four scrapes
    h.fleet.resize(2)
    assert h.service.rescan() is True  # every Device is new: the old ones' samples are freed
    assert h.lib.calls["nvmlGpmSampleFree"] == 2 * 3
    h.clock.advance(10)
    h.scrape()
    h.clock.advance(10)
    assert set(h.values(h.scrape(), "gpu_sm_active_ratio")) == {"0", "1"}
    h.service.stop()
    assert h.lib.calls["nvmlGpmSampleFree"] == h.lib.calls["nvmlGpmSampleAlloc"] == 2 * 3 + 2 * 2


@pytest.mark.binaries
def test_promtool_check_metrics_is_silent_on_every_board(make_exporter, tmp_path):
    promtool = require_binary("promtool")
    for model in ("h100", "a100", "v100"):
        h = make_exporter(2, model=model)
        _, _ = _two_scrapes(h)
        text = h.text()
        assert "gpu_encoder_utilization_ratio{" in text
        out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
            model,
            out.stdout,
            out.stderr,
        )
