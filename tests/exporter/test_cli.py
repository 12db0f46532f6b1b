"""The real gpuwarden-exporter binary, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.helpers import console_script, free_port, http_get, require_binary, wait_until


def _start(spawn, *args: str, env: dict[str, str] | None = None):
    port = free_port()
    proc = spawn([console_script("gpuwarden-exporter"), f"--web.listen-address=127.0.0.1:{port}", *args],
                 name="exporter", env=env)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: http_get(url)[0] == 200, timeout=20, what=f"exporter at {url}\n{proc.output()}")
    return proc, url


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
    assert proc.stop() == 0                                  # SIGTERM: clean exit


def test_without_nvml_the_exporter_stays_up_and_says_so(spawn, tmp_path):
    # An unloadable libnvidia-ml.so.1 first on the search path: NVML is "absent" on any machine.
    (tmp_path / "libnvidia-ml.so.1").write_bytes(b"not a library")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    proc, url = _start(spawn, env=env)
    text = http_get(url)[1].decode()
    assert "gpuwarden_exporter_nvml_up 0.0" in text
    assert 'gpuwarden_exporter_nvml_errors_total{call="nvmlInit",code="library_not_found"}' in text
    assert "gpu_up{" not in text                             # never silently simulated
    assert "retrying" in proc.output()


def test_bad_flags_and_scenarios_fail_fast_with_a_message(tmp_path):
    exe = console_script("gpuwarden-exporter")
    res = subprocess.run([exe, "--web.listen-address=nowhere"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "nowhere" in res.stderr
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nsteps:\n  - {at: 0, gpu: 0, fault: {kind: nope}}\n")
    res = subprocess.run([exe, "--scenario", str(bad), f"--web.listen-address=127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "s.yaml:3" in res.stderr and "steps[0].fault.kind" in res.stderr


@pytest.mark.binaries
@pytest.mark.slow
def test_prometheus_scrapes_all_8_simulated_gpus(spawn, tmp_path: Path):
    prometheus = require_binary("prometheus")
    _, url = _start(spawn, "--simulate", "8", f"--sim.control-address=127.0.0.1:{free_port()}")
    target = urllib.parse.urlparse(url).netloc
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                   "scrape_configs:\n  - job_name: gpuwarden-exporter\n"
                   f"    static_configs: [{{targets: ['{target}']}}]\n")
    pport = free_port()
    prom = spawn([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{pport}"], name="prometheus")

    def query(q: str) -> list:
        status, body = http_get(f"http://127.0.0.1:{pport}/api/v1/query?query={urllib.parse.quote(q)}")
        return json.loads(body)["data"]["result"] if status == 200 else []

    result = wait_until(lambda: query('gpu_up{job="gpuwarden-exporter"} == 1') if len(
        query('gpu_up{job="gpuwarden-exporter"} == 1')) == 8 else None, timeout=30,
        what=f"Prometheus to see 8 GPUs up\n{prom.output()[-2000:]}")
    assert sorted(r["metric"]["gpu"] for r in result) == [str(i) for i in range(8)]
    temps = query("gpu_temperature_celsius")
    assert len(temps) == 8 and all(20 < float(r["value"][1]) < 100 for r in temps)
    assert len({r["metric"]["uuid"] for r in temps}) == 8
