"""``gpuwarden-rules doctor`` for the gpuwarden source, against a real Prometheus scraping real
``gpuwarden-exporter --simulate`` processes with collectors turned off: the report names the
missing metric and the exporter flag that brings it back, and the exit status is 0 when only
warning rules cannot fire, 1 when a critical one cannot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuwarden.prom import PrometheusClient
from gpuwarden.rules import cli, config
from tests.helpers import Proc, console_script, free_port, http_get, require_binary, wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]

# scrape job -> the exporter's collector flags
JOBS = {
    "gpuwarden-exporter": ["--no-collector.throttle"],
    # (xid off too: doctor tells "no XID yet" from "not exported")
    "gpuwarden-exporter-no-ecc": ["--no-collector.throttle", "--no-collector.ecc", "--no-collector.xid"],
}
GPUS = 2


@pytest.fixture
def prometheus(tmp_path: Path, spawn: Callable[..., Proc]) -> str:
    targets = {}
    for job, flags in JOBS.items():
        port = free_port()
        exporter = spawn(
            [
                console_script("gpuwarden-exporter"),
                "--simulate",
                str(GPUS),
                f"--web.listen-address=127.0.0.1:{port}",
                f"--sim.control-address=127.0.0.1:{free_port()}",
                *flags,
            ],
            name=job,
        )
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda u=url: http_get(u)[0] == 200, 20, what=f"{job}: {exporter.output()[-2000:]}")
        targets[job] = f"127.0.0.1:{port}"
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
                ],
            }
        )
    )
    prom = spawn(
        [
            require_binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        name="prometheus",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(f"{url}/-/ready")[0] == 200, 30, what=f"prometheus: {prom.output()[-2000:]}")
    client = PrometheusClient(url, timeout=5)
    wait_until(lambda: len(client.query("gpu_info")) == GPUS * len(JOBS), 30, what="both exporters' GPUs in Prometheus")
    return url


def _doctor(url: str, job: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    thresholds = tmp_path / f"{job}.yaml"
    text = config.DEFAULT_PATH.read_text()
    assert "  exporter_job: gpuwarden-exporter " in text
    thresholds.write_text(text.replace("  exporter_job: gpuwarden-exporter ", f"  exporter_job: {job} "))
    code = cli.main(["doctor", "--config", str(thresholds), "--prometheus", url])
    return code, capsys.readouterr().out


def test_doctor_names_the_missing_metric_and_the_flag(
    prometheus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _doctor(prometheus, "gpuwarden-exporter", tmp_path, capsys)
    assert f'source gpuwarden, job="gpuwarden-exporter": {GPUS} GPUs reported' in out
    assert (
        "FAIL THROTTLING (GPUThrottling, warning) cannot fire: no gpu_throttle_active series: "
        "gpuwarden-exporter exports it from its throttle collector: start it with --collector.throttle" in out
    )
    assert f"ok   THERMAL_CRITICAL (GPUThermalCritical, critical): covers {GPUS}/{GPUS} GPUs" in out
    assert f"ok   ECC_UNCORRECTABLE (GPUECCUncorrectable, critical): covers {GPUS}/{GPUS} GPUs" in out
    # No XID yet: its series appears with the first one; the exporter declares the family.
    assert "ok   XID_FATAL (GPUFatalXID, critical)" in out
    assert "note: no gpu_xid_errors_total series yet" in out
    assert [line for line in out.splitlines() if line.startswith("FAIL")] == [
        line for line in out.splitlines() if line.startswith("FAIL THROTTLING")
    ]
    assert code == 0, out  # only a warning rule cannot fire


def test_doctor_fails_when_a_critical_rule_cannot_fire(
    prometheus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _doctor(prometheus, "gpuwarden-exporter-no-ecc", tmp_path, capsys)
    assert (
        "FAIL ECC_UNCORRECTABLE (GPUECCUncorrectable, critical) cannot fire: no gpu_ecc_errors_uncorrectable_total "
        'series under job="gpuwarden-exporter-no-ecc" (job gpuwarden-exporter has them): '
        "gpuwarden-exporter exports it from its ecc collector: start it with --collector.ecc" in out
    )
    assert "FAIL ECC_ERRORS_SPIKE (GPUECCErrorsSpike, warning)" in out
    assert "FAIL THROTTLING (GPUThrottling, warning)" in out
    # Without the xid collector its family is not declared either: no "no XID yet" here.
    assert "FAIL XID_FATAL (GPUFatalXID, critical) cannot fire: no gpu_xid_errors_total series" in out
    assert "start it with --collector.xid" in out
    assert code == 1, out
