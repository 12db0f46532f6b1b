"""The predictor judges each GPU by its profile's threshold, read from a real Prometheus 2.42
evaluating the generated recording rules over a real exporter on simulated H100s.

An H100 at 90 % load draws about 640 W: far over the default POWER_CRITICAL (450 W, the seed's
A100 figure) and well under the H100 profile's 112.5 % of its 700 W limit. The predictor must
forecast against the latter, so its power neither reads as critical nor moves its jobs.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from gpuwarden.prom import PrometheusClient, Series
from gpuwarden.rules.promql import THRESHOLD_RECORD
from gpuwarden.scheduler_agent.predictor.health import migration_candidates
from gpuwarden.scheduler_agent.predictor.service import PredictorService
from tests.helpers import REPO, console_script, free_port, http_get, require_binary, wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]


def _query(prom: str, expr: str) -> list[Series]:
    return PrometheusClient(prom, timeout=5).query(expr)


def test_predictor_uses_the_h100_profile_threshold_recorded_by_prometheus(tmp_path: Path, spawn) -> None:
    exporter_port, control_port, prom_port = free_port(), free_port(), free_port()
    exporter = spawn(
        [
            console_script("gpuwarden-exporter"),
            "--simulate",
            "2",
            "--sim.model",
            "h100",
            f"--web.listen-address=127.0.0.1:{exporter_port}",
            f"--sim.control-address=127.0.0.1:{control_port}",
        ],
        name="exporter",
    )
    wait_until(
        lambda: http_get(f"http://127.0.0.1:{exporter_port}/metrics")[0] == 200,
        20,
        what=f"exporter: {exporter.output()[-2000:]}",
    )
    req = urllib.request.Request(
        f"http://127.0.0.1:{control_port}/api/v1/gpus/0/load",
        method="POST",
        data=json.dumps({"utilization": 0.9}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=5).close()

    prom = f"http://127.0.0.1:{prom_port}"
    (tmp_path / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                "rule_files": sorted(str(p) for p in (REPO / "rules" / "generated").glob("*.rules.yml")),
                "scrape_configs": [
                    {"job_name": "gpuwarden-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
                ],
            }
        )
    )
    prometheus = spawn(
        [
            require_binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        name="prometheus",
    )
    wait_until(lambda: http_get(f"{prom}/-/ready")[0] == 200, 30, what=f"prometheus: {prometheus.output()[-2000:]}")
    recorded = wait_until(
        lambda: len(r := _query(prom, f'{THRESHOLD_RECORD}{{rule="POWER_CRITICAL"}}')) == 2 and r,
        30,
        what="the recorded POWER_CRITICAL threshold of both GPUs",
    )
    limits = {r.labels["uuid"]: r.values[0] for r in _query(prom, "gpu_power_limit_watts")}
    assert {r.labels["profile"] for r in recorded} == {"H100"}
    for r in recorded:
        assert r.values[0] == pytest.approx(1.125 * limits[r.labels["uuid"]])

    svc = PredictorService(prom, None, period=2, window=10, step=1, timeout=5)
    hot = None

    def forecast_of_loaded_gpu():
        nonlocal hot
        snap = svc.run_once()
        h = next((h for h in snap.gpus.values() if h.gpu == "0"), None)
        hot = h
        return h is not None and "power" in h.forecasts and h.forecasts["power"].current > 450 and h

    h = wait_until(
        forecast_of_loaded_gpu, 30, interval=1, what=f"a power forecast of the loaded H100 over 450 W (last: {hot})"
    )
    power = h.forecasts["power"]
    assert power.threshold == pytest.approx(1.125 * limits[h.uuid])
    assert power.seconds_to_threshold != 0.0, power  # the default's 450 W would call it over now
    # (It heats toward its thermal threshold under that load; that forecast may move jobs.)
    reasons = migration_candidates(svc.snapshot.gpus, svc.specs, svc.lead_time).values()
    assert not any("POWER_CRITICAL" in r for r in reasons), reasons
