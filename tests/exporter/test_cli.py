"""The real gpuwarden-exporter binary, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from gpuwarden.exporter.cli import build_parser, build_service
from gpuwarden.exporter.service import DEFAULT_RESCAN
from gpuwarden.prom import PrometheusClient, PrometheusError, Series
from tests.helpers import console_script, free_port, http_get, require_binary, wait_until


def _start(spawn, *args: str, env: dict[str, str] | None = None):
    port = free_port()
    proc = spawn(
        [console_script("gpuwarden-exporter"), f"--web.listen-address=127.0.0.1:{port}", *args],
        name="exporter",
        env=env,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: http_get(url)[0] == 200, timeout=20, what=f"exporter at {url}\n{proc.output()}")
    return proc, url


@pytest.mark.binaries
def test_simulate_8_serves_linted_metrics_and_control(spawn):
    cport = free_port()
    proc, url = _start(spawn, "--simulate", "8", f"--sim.control-address=127.0.0.1:{cport}")
    text = http_get(url)[1].decode()
    up = [line for line in text.splitlines() if line.startswith("gpu_up{")]
    assert len(up) == 8 and all(line.endswith(" 1.0") for line in up), up
    promtool = require_binary("promtool")
    res = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0 and not res.stdout and not res.stderr, res.stdout + res.stderr
    status, body = http_get(f"http://127.0.0.1:{cport}/api/v1/gpus")
    assert status == 200 and len(json.loads(body)["gpus"]) == 8
    assert "SIMULATION" in proc.output()
    assert proc.stop() == 0  # SIGTERM: clean exit


def test_without_nvml_the_exporter_stays_up_and_says_so(spawn, tmp_path):
    # An unloadable libnvidia-ml.so.1 first on the search path: NVML is "absent" on any machine.
    (tmp_path / "libnvidia-ml.so.1").write_bytes(b"not a library")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    proc, url = _start(spawn, env=env)
    text = http_get(url)[1].decode()
    assert "gpuwarden_exporter_nvml_up 0.0" in text
    assert 'gpuwarden_exporter_nvml_errors_total{call="nvmlInit",code="library_not_found"}' in text
    assert "gpu_up{" not in text  # never silently simulated
    assert "retrying" in proc.output()


def test_bad_flags_and_scenarios_fail_fast_with_a_message(tmp_path):
    exe = console_script("gpuwarden-exporter")
    res = subprocess.run([exe, "--web.listen-address=nowhere"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "nowhere" in res.stderr
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nsteps:\n  - {at: 0, gpu: 0, fault: {kind: nope}}\n")
    res = subprocess.run(
        [exe, "--scenario", str(bad), f"--web.listen-address=127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "s.yaml:3" in res.stderr and "steps[0].fault.kind" in res.stderr
    res = subprocess.run([exe, "--nvml.rescan-interval=0s"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "--nvml.rescan-interval" in res.stderr and "more than zero" in res.stderr


def test_rescan_interval_flag_reaches_the_service():
    default = build_parser().parse_args([])
    assert build_service(default, [], None).rescan_interval == DEFAULT_RESCAN
    args = build_parser().parse_args(["--nvml.rescan-interval=1m30s"])
    assert build_service(args, [], None).rescan_interval == 90.0


@pytest.mark.binaries
@pytest.mark.slow
def test_prometheus_scrapes_all_8_simulated_gpus(spawn, tmp_path: Path):
    prometheus = require_binary("prometheus")
    _, url = _start(spawn, "--simulate", "8", f"--sim.control-address=127.0.0.1:{free_port()}")
    target = urllib.parse.urlparse(url).netloc
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: gpuwarden-exporter\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    pport = free_port()
    prom = spawn(
        [
            prometheus,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{pport}",
        ],
        name="prometheus",
    )

    client = PrometheusClient(f"http://127.0.0.1:{pport}", timeout=5)

    def query(q: str) -> list[Series]:
        try:
            return client.query(q)
        except PrometheusError:  # not up yet
            return []

    result = wait_until(
        lambda: (
            query('gpu_up{job="gpuwarden-exporter"} == 1')
            if len(query('gpu_up{job="gpuwarden-exporter"} == 1')) == 8
            else None
        ),
        timeout=30,
        what=f"Prometheus to see 8 GPUs up\n{prom.output()[-2000:]}",
    )
    assert sorted(r.labels["gpu"] for r in result) == [str(i) for i in range(8)]
    temps = query("gpu_temperature_celsius")
    assert len(temps) == 8 and all(20 < r.values[0] < 100 for r in temps)
    assert len({r.labels["uuid"] for r in temps}) == 8


@pytest.mark.binaries
def test_independent_nvml_library_with_a_lost_gpu(spawn, tmp_path):
    """A C implementation of NVML's ABI (older API, GPU 1 lost) loaded through LD_LIBRARY_PATH."""
    cc = require_binary("cc")
    lib = tmp_path / "libnvidia-ml.so.1"
    src = Path(__file__).parent / "fixtures" / "fake_nvml.c"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True, timeout=60)
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    proc, url = _start(spawn, env=env)

    def scraped() -> str | None:
        t = http_get(url)[1].decode()
        return t if "gpu_up{" in t else None

    text = wait_until(scraped, timeout=10, what=f"GPUs from the fake library\n{proc.output()}")
    lines = set(text.splitlines())
    assert "gpuwarden_exporter_nvml_up 1.0" in lines
    assert 'gpu_up{gpu="0",uuid="GPU-fake-0"} 1.0' in lines
    assert 'gpu_up{gpu="1",uuid=""} 0.0' in lines  # lost before its UUID was read
    assert 'gpu_up{gpu="2",uuid="GPU-fake-2"} 1.0' in lines
    for line in (
        'gpu_temperature_celsius{gpu="2",uuid="GPU-fake-2"} 42.0',
        'gpu_power_watts{gpu="2",uuid="GPU-fake-2"} 72.0',  # individual call
        'gpu_energy_joules_total{gpu="0",uuid="GPU-fake-0"} 5000.0',
        'gpu_memory_used_bytes{gpu="0",uuid="GPU-fake-0"} 1073741824.0',  # v1 memory info
        'gpu_throttle_active{gpu="0",uuid="GPU-fake-0",reason="sw_power_cap"} 1.0',
        'gpu_ecc_errors_correctable_total{gpu="0",uuid="GPU-fake-0"} 3.0',
        'gpu_pcie_replays_total{gpu="0",uuid="GPU-fake-0"} 7.0',
        'gpu_memory_clock_hertz{gpu="0",uuid="GPU-fake-0"} 5001000000.0',
    ):
        assert line in lines, line
    assert "gpu_fan_speed_ratio{" not in text
    assert 'code="function_not_found"' in text and 'call="nvmlDeviceGetFieldValues"' in text
    assert proc.alive()
    promtool = require_binary("promtool")
    res = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0 and not res.stdout and not res.stderr, res.stdout + res.stderr


def test_probe_counts_gpus_or_says_none(tmp_path):
    import sys

    (tmp_path / "libnvidia-ml.so.1").write_bytes(b"not a library")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    res = subprocess.run(
        [sys.executable, "-m", "gpuwarden.exporter.probe"], env=env, capture_output=True, text=True, timeout=30
    )
    assert (res.returncode, res.stdout.strip()) == (1, "0")
    cc = require_binary("cc")
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-o",
            str(tmp_path / "libnvidia-ml.so.1"),
            str(Path(__file__).parent / "fixtures" / "fake_nvml.c"),
        ],
        check=True,
        timeout=60,
    )
    res = subprocess.run(
        [sys.executable, "-m", "gpuwarden.exporter.probe"], env=env, capture_output=True, text=True, timeout=30
    )
    assert (res.returncode, res.stdout.strip()) == (0, "3")
