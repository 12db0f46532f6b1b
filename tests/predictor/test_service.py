"""PredictorService against a real local HTTP server standing in for Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from gpuwarden.prom import PrometheusClient, PrometheusQueryError, PrometheusUnavailable
from gpuwarden.scheduler_agent.predictor.service import PredictorService
from gpuwarden.scheduler_agent.predictor.specs import MetricSpec
from tests.helpers import free_port
from tests.predictor.fakeprom import FakePrometheus

NOW = 1_800_000_000.0
SPECS = [
    MetricSpec("temperature", "Temperature", "gpu_temperature_celsius", 85.0, "THERMAL_CRITICAL", "°C"),
    MetricSpec("power", "Power", "gpu_power_watts", 450.0, "POWER_CRITICAL", "W"),
    MetricSpec(
        "memory",
        "Memory Use",
        "gpu_memory_used_bytes / gpu_memory_total_bytes",
        0.9,
        "MEMORY_PRESSURE",
        "%",
        scale=100,
        migrate=False,
    ),
]
HOT = {"gpu": "0", "uuid": "GPU-hot", "instance": "node1:9786"}
COOL = {"gpu": "1", "uuid": "GPU-cool", "instance": "node1:9786"}


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    p = FakePrometheus()
    # GPU-hot: 75 °C now, +1 °C/minute -> 85 °C in 10 minutes. GPU-cool: flat 60 °C.
    p.add("gpu_temperature_celsius", HOT, lambda t: 75 + (t - NOW) / 60)
    p.add("gpu_temperature_celsius", COOL, lambda t: 60.0)
    p.add("gpu_power_watts", HOT, lambda t: 300.0)
    p.add("gpu_power_watts", COOL, lambda t: 250.0)
    p.add("gpu_memory_used_bytes", COOL, lambda t: 0.5 + (t - NOW) / 6000)  # 0.9 in 40 min
    yield p
    p.close()


class Migrations:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def __call__(self, uuid: str, reason: str) -> list[int]:
        if self.fail:
            raise KeyError(uuid)
        self.calls.append((uuid, reason))
        return [1]


def make(prom_url: str, clock: list[float], **kw: object) -> PredictorService:
    return PredictorService(
        prom_url,
        SPECS,
        period=60,
        lead_time=kw.pop("lead_time", 900.0),
        timeout=kw.pop("timeout", 2.0),
        clock=lambda: clock[0],
        **kw,
    )  # type: ignore[arg-type]


def test_forecasts_risk_hook_and_metrics(prom: FakePrometheus) -> None:
    svc = make(prom.url, [NOW])
    snap = svc.run_once()
    assert snap.ok and not snap.stale and snap.error is None
    hot = snap.gpus["GPU-hot"].forecasts["temperature"]
    assert hot.seconds_to_threshold == pytest.approx(600, rel=0.01)
    assert snap.gpus["GPU-cool"].forecasts["temperature"].seconds_to_threshold is None
    assert snap.gpus["GPU-cool"].forecasts["memory"].seconds_to_threshold == pytest.approx(2400, rel=0.01)
    assert svc.risk("GPU-hot") > svc.risk("GPU-cool") > 0.0
    assert svc.risk("GPU-unknown") == 0.0
    reg = CollectorRegistry()
    reg.register(svc.collector())
    text = generate_latest(reg).decode()
    assert (
        'gpu_predicted_seconds_to_threshold{gpu="0",instance="node1:9786",metric="temperature",uuid="GPU-hot"} 6'
        in text
    )
    assert 'gpu_predicted_seconds_to_threshold{gpu="1",instance="node1:9786",metric="memory",uuid="GPU-cool"}' in text
    assert 'metric="temperature",uuid="GPU-cool"' not in text  # no crossing predicted: no sample
    assert f'gpu_failure_risk_score{{gpu="0",instance="node1:9786",uuid="GPU-hot"}} {svc.risk("GPU-hot")}' in text
    assert "gpuwarden_predictor_up 1.0" in text
    assert 'gpuwarden_predictor_runs_total{result="ok"} 1.0' in text


def test_migration_within_lead_time_once_per_episode(prom: FakePrometheus) -> None:
    mig = Migrations()
    clock = [NOW - 600]  # GPU-hot 20 minutes from 85 °C: outside a 15 minute lead time
    svc = make(prom.url, clock, on_migrate=mig)
    svc.run_once()
    assert mig.calls == []
    clock[0] = NOW  # 10 minutes from 85 °C: migrate, once
    svc.run_once()
    svc.run_once()
    assert [u for u, _ in mig.calls] == ["GPU-hot"]
    assert "THERMAL_CRITICAL" in mig.calls[0][1]
    # Memory (migrate=False) never migrates GPU-cool although it is predicted.
    clock[0] = NOW + 1800  # memory at 0.8, 10 minutes from 0.9
    svc.run_once()
    assert "GPU-cool" not in [u for u, _ in mig.calls]


def test_migration_rearms_after_prediction_clears_and_retries_failures(prom: FakePrometheus) -> None:
    mig = Migrations()
    clock = [NOW]
    svc = make(prom.url, clock, on_migrate=mig)
    mig.fail = True
    svc.run_once()  # the scheduler refused (unknown GPU): not recorded, retried next run
    mig.fail = False
    svc.run_once()
    assert len(mig.calls) == 1
    prom.series["gpu_temperature_celsius"][0] = (HOT, lambda t: 70.0)  # cooled down
    svc.run_once()
    prom.series["gpu_temperature_celsius"][0] = (HOT, lambda t: 75 + (t - NOW) / 60)
    svc.run_once()
    assert len(mig.calls) == 2


def test_prometheus_unreachable_keeps_last_result_and_says_so(prom: FakePrometheus) -> None:
    mig = Migrations()
    svc = make(prom.url, [NOW], lead_time=0.0, on_migrate=mig)
    good = svc.run_once()
    risk = svc.risk("GPU-hot")
    svc.client = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=1.0)  # nothing listens
    snap = svc.run_once()
    assert snap.stale and "unreachable" in (snap.error or "")
    assert snap.gpus == good.gpus and snap.last_success == good.last_success
    assert svc.risk("GPU-hot") == risk
    reg = CollectorRegistry()
    reg.register(svc.collector())
    text = generate_latest(reg).decode()
    assert "gpuwarden_predictor_up 0.0" in text
    assert 'gpuwarden_predictor_runs_total{result="error"} 1.0' in text
    assert "gpu_failure_risk_score" in text and "GPU-hot" in text  # last result still served
    assert mig.calls == []


def test_prometheus_slow_is_bounded_by_timeout(prom: FakePrometheus) -> None:
    svc = make(prom.url, [NOW], timeout=0.3)
    prom.delay = 1.5
    t0 = time.monotonic()
    snap = svc.run_once()
    assert time.monotonic() - t0 < 1.2
    assert snap.stale and "did not answer within 0.3s" in (snap.error or "")
    prom.delay = 0.0
    assert svc.run_once().ok


def test_prometheus_errors_translate(prom: FakePrometheus) -> None:
    prom.status = 503
    with pytest.raises(PrometheusUnavailable, match="HTTP 503"):
        PrometheusClient(prom.url).query_range("up", NOW - 60, NOW, 15)
    prom.status = 400
    with pytest.raises(PrometheusQueryError, match="rejected 'up'"):
        PrometheusClient(prom.url).query_range("up", NOW - 60, NOW, 15)
    with pytest.raises(ValueError, match="http://"):
        PrometheusClient("127.0.0.1:9090")


def test_periodic_runner_spans_and_survives_outage(prom: FakePrometheus) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    svc = PredictorService(prom.url, SPECS, period=0.05, timeout=0.5, tracer_provider=provider, clock=lambda: NOW)
    svc.start()
    try:
        deadline = time.monotonic() + 5
        while svc.snapshot.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        prom.status = 500
        runs = svc.snapshot.runs
        while svc.snapshot.runs < runs + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert svc.snapshot.stale and svc.snapshot.gpus  # kept
        prom.status = 200
        runs = svc.snapshot.runs
        while (svc.snapshot.runs < runs + 1 or svc.snapshot.stale) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert svc.snapshot.ok
    finally:
        svc.close()
    spans = exporter.get_finished_spans()
    assert len(spans) >= 5 and {s.name for s in spans} == {"health.check"}
    assert any(not s.status.is_ok for s in spans) and any(s.attributes.get("gpuwarden.gpus") == 2 for s in spans)
    provider.shutdown()


def test_thresholds_come_from_rules_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from gpuwarden import rules
    from gpuwarden.scheduler_agent.predictor.specs import load_specs

    src = Path(rules.__file__).parent / "thresholds.yaml"
    edited = tmp_path / "thresholds.yaml"
    edited.write_text(src.read_text().replace("threshold: 85 ", "threshold: 83 "))
    by = {s.name: s for s in load_specs(edited)}
    assert by["temperature"].threshold == 83.0
    shipped = {s.name: s for s in load_specs()}
    assert shipped["temperature"].threshold == 85.0 and shipped["power"].threshold == 450.0
    assert shipped["memory"].threshold == 0.9
    assert shipped["ecc"].threshold == pytest.approx(10 / 300)
    assert 'job="gpuwarden-exporter"' in shipped["temperature"].query


def test_shipped_rules_select_the_exporter_job_everywhere(prom: FakePrometheus) -> None:
    svc = PredictorService(prom.url, None, clock=lambda: NOW)
    assert svc.run_once().ok
    # series and own thresholds per spec, 2 error counters, the throttle signal
    assert len(prom.queries) == 2 * len(svc.specs) + 3
    assert any(q.startswith("max by (instance, gpu, uuid) (") and "gpu_throttle_active{" in q for q in prom.queries)
    assert all('job="gpuwarden-exporter"' in q for q in prom.queries), prom.queries


def test_dcgm_exporter_source_queries_dcgm_names(prom: FakePrometheus) -> None:
    """source="dcgm-exporter": every query reads DCGM's fields under dcgm-exporter's job, with
    its UUID copied to uuid; none names a gpuwarden-exporter series."""
    svc = PredictorService(prom.url, None, clock=lambda: NOW, source="dcgm-exporter")
    by = {s.name: s.query for s in svc.specs}
    assert "DCGM_FI_DEV_GPU_TEMP" in by["temperature"] and "DCGM_FI_DEV_POWER_USAGE" in by["power"]
    assert "DCGM_FI_DEV_FB_USED" in by["memory"] and "DCGM_FI_DEV_FB_FREE" in by["memory"]
    assert "1048576" in by["memory"]  # MiB to bytes (the ratio needs both in one unit)
    assert by["ecc"].startswith("label_replace(rate(DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{")
    assert svc.run_once().ok
    assert len(prom.queries) == 2 * len(svc.specs) + 3
    throttle = [q for q in prom.queries if "THROTTLE_REASONS" in q or "EVENT_REASONS" in q]
    assert len(throttle) == 1 and throttle[0].startswith("max by (instance, gpu, uuid) (")
    assert all('job=~"(nvidia-)?dcgm-exporter"' in q for q in prom.queries), prom.queries
    data = [q for q in prom.queries if "gpu_alert_threshold" not in q]
    assert all('"uuid", "$1", "UUID"' in q for q in data), data
    assert not any(n in q for q in prom.queries for n in ("gpu_temperature_celsius", "gpu_throttle_active", "gpu_ecc"))


def test_each_gpu_is_judged_by_its_own_threshold(prom: FakePrometheus) -> None:
    """Both GPUs draw 600 W, over the default 450 W. Prometheus records GPU-hot's own threshold
    as 787.5 W (an H100: 112.5 % of its 700 W limit): it is not over; GPU-cool, with no recorded
    threshold, is judged by the default and is."""
    own = "instance_gpu:gpu_alert_threshold:effective"
    specs = [
        MetricSpec(
            "power",
            "Power",
            "gpu_power_watts",
            450.0,
            "POWER_CRITICAL",
            "W",
            threshold_query=f'{own}{{rule="POWER_CRITICAL"}}',
        )
    ]
    prom.series["gpu_power_watts"] = [(HOT, lambda t: 600.0), (COOL, lambda t: 600.0)]
    prom.add(own, HOT, lambda t: 787.5)
    mig = Migrations()
    svc = PredictorService(prom.url, specs, period=60, lead_time=900.0, timeout=2.0, clock=lambda: NOW, on_migrate=mig)
    snap = svc.run_once()
    hot, cool = snap.gpus["GPU-hot"].forecasts["power"], snap.gpus["GPU-cool"].forecasts["power"]
    assert (hot.threshold, hot.seconds_to_threshold) == (787.5, None)
    assert (cool.threshold, cool.seconds_to_threshold) == (450.0, 0.0)
    assert [u for u, _ in mig.calls] == ["GPU-cool"] and "reaches 450" in mig.calls[0][1]


def test_says_once_when_prometheus_has_no_recorded_thresholds(
    prom: FakePrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    specs = [
        MetricSpec(
            "power",
            "Power",
            "gpu_power_watts",
            450.0,
            "POWER_CRITICAL",
            "W",
            threshold_query='instance_gpu:gpu_alert_threshold:effective{rule="POWER_CRITICAL"}',
        )
    ]
    svc = PredictorService(prom.url, specs, period=60, timeout=2.0, clock=lambda: NOW)
    svc.run_once()
    svc.run_once()
    warnings = [r.getMessage() for r in caplog.records if "default thresholds" in r.getMessage()]
    assert len(warnings) == 1 and "gpuwarden-recording.rules.yml" in warnings[0]
    assert svc.snapshot.gpus["GPU-hot"].forecasts["power"].threshold == 450.0


def test_two_nodes_gpu0_are_two_series() -> None:
    # Contract 2: the metrics carry the GPU's node, so node1's and node2's GPU 0 never fold.
    p = FakePrometheus()
    try:
        for node, base in (("node1:9786", 75.0), ("node2:9786", 60.0)):
            labels = {"gpu": "0", "uuid": f"GPU-{node[:5]}", "instance": node}
            p.add("gpu_temperature_celsius", labels, lambda t, b=base: b + (t - NOW) / 60)
        svc = make(p.url, [NOW])
        svc.run_once()
        reg = CollectorRegistry()
        reg.register(svc.collector())
        text = generate_latest(reg).decode()
        assert 'gpu_failure_risk_score{gpu="0",instance="node1:9786",uuid="GPU-node1"}' in text
        assert 'gpu_failure_risk_score{gpu="0",instance="node2:9786",uuid="GPU-node2"}' in text
        assert 'gpu_predicted_seconds_to_threshold{gpu="0",instance="node1:9786",metric="temperature"' in text
    finally:
        p.close()
