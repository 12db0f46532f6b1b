"""PredictorService: the periodic runner the agent embeds, its metrics and its migrations.

Every ``period`` seconds one run (span ``health.check``) range-queries Prometheus for the last
``window`` seconds of every MetricSpec, forecasts each GPU (health.evaluate; a crossing reported
at the last run stays reported while its window still forecasts one, health.hold_firing), publishes the
result for the scheduler's risk hook (``service.risk``) and the collector, and migrates ahead of
time: a GPU predicted to cross a migrating metric's threshold within ``lead_time`` gets
``migrator.migrate(gpu, reason)`` (in the agent: ``migrations.PortMigrator``, through the
agent's scheduler port, embedded or Slurm) every run until it returns something other than an
empty list (jobs moved), then not again until the prediction clears, so a requeued job that
lands back on the only free GPU is not bounced every period.

Prometheus down, slow (each request is bounded by ``timeout``) or erroring never raises out of
a run: the last good result stays published, marked stale, ``gpuwarden_predictor_up`` drops to
0 and the error is logged and carried in the snapshot. Stale data never triggers a migration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpuwarden import sources
from gpuwarden.prom import PrometheusClient, PrometheusError

from .forecast import MIN_CONFIDENCE, PERSIST
from .health import GpuHealth, evaluate, gpu_key, hold_firing, migration_candidates
from .specs import MetricSpec, resolve_source, specs_from_rules

log = logging.getLogger(__name__)


def error_queries(source: str, job_selector: str) -> dict[str, str]:
    """The "recent errors" read per GPU (their increase within the window counts): uncorrectable
    ECC errors, and XIDs (gpuwarden-exporter counts them per XID; dcgm-exporter's
    DCGM_FI_DEV_XID_ERRORS is the last XID's value, so a change to a new XID reads as an
    increase, a repeat of the same XID does not)."""
    if source == "gpuwarden":
        xid = f"sum by (instance, gpu, uuid) (gpu_xid_errors_total{{{job_selector}}})"
    else:
        xid = sources.uuid_lowercase(source, sources.instant(source, "gpu_xid_errors_total", job_selector))
    return {"uncorrectable": sources.signal(source, "ecc_uncorrectable_total", job_selector), "xid": xid}


def throttle_query(source: str, job_selector: str) -> str:
    """1 per GPU while any throttling reason (DESIGN.md's list) is active: the firmware is holding
    the GPU, so the temperature and power models do not extrapolate the climb before it."""
    return f"max by (instance, gpu, uuid) ({sources.signal(source, 'throttle_active', job_selector)})"


@dataclass(frozen=True)
class Snapshot:
    """The published result: the last good forecasts, and whether the latest run failed."""

    gpus: dict[str, GpuHealth] = field(default_factory=dict)
    at: float | None = None  # data time of the forecasts
    last_success: float | None = None
    ok: bool = False
    error: str | None = None
    runs: int = 0

    @property
    def stale(self) -> bool:
        return not self.ok


class Migrator(Protocol):
    """Where the predictor's migrations go."""

    def migrate(self, gpu: GpuHealth, reason: str) -> Sequence[int] | None:
        """Moves the GPU's jobs elsewhere; their ids ([]: none ran there; None: not known)."""

    def predicted(self, uuids: Set[str]) -> None:
        """After every good run: the GPUs predicted now (a migration of any other has ended)."""

    def close(self) -> None:
        """At the service's close."""


class FunctionMigrator:
    """A plain function ``on_migrate(uuid, reason)`` as a ``Migrator`` (tools and tests)."""

    def __init__(self, fn: Callable[[str, str], Any]) -> None:
        self.fn = fn

    def migrate(self, gpu: GpuHealth, reason: str) -> Any:
        return self.fn(gpu.uuid, reason)

    def predicted(self, uuids: Set[str]) -> None:
        pass

    def close(self) -> None:
        pass


def _as_specs(thresholds: Any, source: str | None, job_selector: str | None) -> tuple[list[MetricSpec], str, str]:
    """MetricSpecs, the metrics source and its job matcher (see specs.resolve_source)."""
    if thresholds is None or isinstance(thresholds, (str, Path)):
        from gpuwarden.rules import config as rules_config

        thresholds = rules_config.load(Path(thresholds) if thresholds is not None else None)
    if hasattr(thresholds, "alerts"):
        return specs_from_rules(thresholds, source, job_selector), *resolve_source(thresholds, source, job_selector)
    specs = list(thresholds)
    if not all(isinstance(s, MetricSpec) for s in specs):
        raise TypeError("thresholds must be None, a rules file path, a RulesConfig or MetricSpecs")
    return specs, *resolve_source(None, source, job_selector)


class PredictorService:
    """Periodic predictor. ``risk`` is the scheduler's hook; ``collector()`` its metrics.

    ``thresholds``: None (the shipped rules/thresholds.yaml), a path to a thresholds file, a
    loaded ``rules.config.RulesConfig``, or MetricSpecs. Migrations go to ``migrator``, or to
    the function ``on_migrate(uuid, reason)`` (one or the other; neither: never migrate).
    """

    def __init__(
        self,
        prom_url: str | PrometheusClient,
        thresholds: Any = None,
        *,
        period: float = 30.0,
        lead_time: float = 300.0,
        window: float = 600.0,
        step: float = 15.0,
        timeout: float | None = None,
        min_confidence: float = MIN_CONFIDENCE,
        on_risk: Callable[[str, float], None] | None = None,
        on_migrate: Callable[[str, str], Any] | None = None,
        migrator: Migrator | None = None,
        tracer_provider: Any = None,
        clock: Callable[[], float] = time.time,
        source: str | None = None,
        job_selector: str | None = None,
    ) -> None:
        if period <= 0 or window <= 0 or step <= 0 or lead_time < 0:
            raise ValueError(
                f"period ({period}), window ({window}) and step ({step}) must be > 0, lead_time ({lead_time}) >= 0"
            )
        if window < 5 * step:
            raise ValueError(f"window {window:g}s holds fewer than 5 steps of {step:g}s; widen it")
        if on_migrate is not None and migrator is not None:
            raise ValueError("give on_migrate or migrator, not both")
        self.specs, self.source, self.job_selector = _as_specs(thresholds, source, job_selector)
        self.client = (
            prom_url
            if isinstance(prom_url, PrometheusClient)
            else PrometheusClient(prom_url, timeout if timeout is not None else max(1.0, min(10.0, 0.8 * period)))
        )
        self.period, self.lead_time, self.window, self.step = period, lead_time, window, step
        self.min_confidence = min_confidence
        self.on_risk = on_risk
        self.migrator: Migrator | None = FunctionMigrator(on_migrate) if on_migrate is not None else migrator
        provider = tracer_provider if tracer_provider is not None else trace.NoOpTracerProvider()
        self._tracer = provider.get_tracer("gpuwarden.predictor")
        self._clock = clock
        self._error_queries = error_queries(self.source, self.job_selector)
        self._throttle_query = throttle_query(self.source, self.job_selector)
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._migrated: set[str] = set()
        self._firing: set[tuple[str, str]] = set()  # (uuid, metric) reported at the last run
        self._warned_defaults = False
        self._runs = {"ok": 0, "error": 0}
        self._last_duration = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- results -------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def risk(self, uuid: str) -> float:
        """The scheduler's risk hook: 0-1, 0 for a GPU the predictor has not seen."""
        h = self.snapshot.gpus.get(uuid)
        return h.risk if h is not None else 0.0

    # --- one run -------------------------------------------------------------------------

    def fetch(self, now: float) -> dict[str, GpuHealth]:
        """Range-queries Prometheus and evaluates every GPU as of ``now`` (raises PrometheusError)."""
        # PERSIST extra steps: forecasts are confirmed against the windows ending at earlier scrapes.
        start = now - self.window - PERSIST * self.step
        series = {
            s.name: [(r.labels, r.times, r.values) for r in self.client.query_range(s.query, start, now, self.step)]
            for s in self.specs
        }
        errors = {
            k: [(r.labels, r.times, r.values) for r in self.client.query_range(q, start, now, self.step)]
            for k, q in self._error_queries.items()
        }
        throttle = [
            (r.labels, r.times, r.values) for r in self.client.query_range(self._throttle_query, start, now, self.step)
        ]
        return evaluate(
            self.specs,
            series,
            errors,
            now,
            self.window,
            self.min_confidence,
            self.own_thresholds(now, series),
            throttle,
        )

    def own_thresholds(self, now: float, series: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
        """Each GPU's latest threshold per spec (spec.name -> uuid -> value) from the recording
        rule; says once when Prometheus has none for GPUs it has data of (rules not loaded)."""
        out: dict[str, dict[str, float]] = {}
        for spec in self.specs:
            if spec.threshold_query is None:
                continue
            own = out.setdefault(spec.name, {})
            for r in self.client.query_range(spec.threshold_query, now - self.step, now, self.step):
                finite = r.values[np.isfinite(r.values)]
                if finite.size:
                    own[gpu_key(r.labels)[0]] = float(finite[-1])
            if not own and series.get(spec.name) and not self._warned_defaults:
                self._warned_defaults = True
                log.warning(
                    "predictor: Prometheus has no %s; every GPU is judged by the default thresholds "
                    "(load rules/generated/gpuwarden-recording.rules.yml and gpuwarden-alerts.rules.yml "
                    "into Prometheus so that each GPU model's profile applies)",
                    spec.threshold_query,
                )
        return out

    def run_once(self) -> Snapshot:
        """One health check; never raises for Prometheus trouble (see the module docstring)."""
        t0 = time.monotonic()
        now = self._clock()
        with self._tracer.start_as_current_span("health.check") as span:
            try:
                gpus, self._firing = hold_firing(self.fetch(now), self._firing)
            except PrometheusError as exc:
                snap = self._fail(str(exc))
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.set_attribute("gpuwarden.stale", True)
                self._last_duration = time.monotonic() - t0
                return snap
            with self._lock:
                snap = Snapshot(gpus, now, now, True, None, self._snapshot.runs + 1)
                self._snapshot = snap
                self._runs["ok"] += 1
            cands = migration_candidates(gpus, self.specs, self.lead_time)
            span.set_attribute("gpuwarden.gpus", len(gpus))
            span.set_attribute("gpuwarden.migrations", len(set(cands) - self._migrated))
            span.set_attribute("gpuwarden.stale", False)
            span.set_attribute("gpuwarden.max_risk", max((h.risk for h in gpus.values()), default=0.0))
        self._publish(gpus, cands)
        self._last_duration = time.monotonic() - t0
        return snap

    def _fail(self, message: str) -> Snapshot:
        with self._lock:
            old = self._snapshot
            snap = Snapshot(old.gpus, old.at, old.last_success, False, message, old.runs + 1)
            self._snapshot = snap
            self._runs["error"] += 1
        kept = (
            f"keeping the result from {time.strftime('%H:%M:%S', time.localtime(old.at))}"
            if old.at
            else "no result yet"
        )
        log.warning("predictor: %s; %s", message, kept)
        return snap

    def _publish(self, gpus: dict[str, GpuHealth], cands: dict[str, str]) -> None:
        if self.on_risk is not None:
            for uuid, h in gpus.items():
                try:
                    self.on_risk(uuid, h.risk)
                except Exception:
                    log.exception("predictor: on_risk(%s) failed", uuid)
        self._migrated &= set(cands)  # re-arm GPUs whose prediction cleared
        if self.migrator is None:
            return
        try:
            self.migrator.predicted(set(cands))
        except Exception:
            log.exception("predictor: recording the predicted GPUs failed")
        for uuid, reason in cands.items():
            if uuid in self._migrated:
                continue
            try:
                moved = self.migrator.migrate(gpus[uuid], reason)
            except Exception:
                log.exception("predictor: migrating jobs off %s failed", uuid)
                continue
            if moved is not None and not moved:
                continue  # nothing ran there (preempt_gpu -> []): a job placed later still moves
            log.info("predictor: migrated jobs off %s (%s): %s", uuid, moved, reason)
            self._migrated.add(uuid)

    # --- periodic runner -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="gpuwarden-predictor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                log.exception("predictor: run failed")
                self._fail(f"internal error: {exc!r}")
            self._stop.wait(self.period)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.client.timeout * (3 + 2 * len(self.specs)) + 1)
            self._thread = None
        if self.migrator is not None:
            self.migrator.close()

    stop = close

    def collector(self) -> Collector:
        return PredictorCollector(self)


class PredictorCollector(Collector):
    """gpu_failure_risk_score, gpu_predicted_seconds_to_threshold and the predictor's own health."""

    def __init__(self, service: PredictorService) -> None:
        self._svc = service

    def collect(self) -> Iterator[Metric]:
        snap = self._svc.snapshot
        risk = GaugeMetricFamily(
            "gpu_failure_risk_score",
            "Predicted failure risk of the GPU, 0-1 (forecasts toward critical thresholds and recent errors).",
            labels=["instance", "gpu", "uuid"],
        )
        ttt = GaugeMetricFamily(
            "gpu_predicted_seconds_to_threshold",
            "Predicted seconds until the metric crosses its critical threshold (absent when no crossing is predicted).",
            labels=["instance", "gpu", "uuid", "metric"],
        )
        for uuid, h in sorted(snap.gpus.items()):
            # instance is the GPU's node (its exporter target), not the agent's: two nodes'
            # GPU 0 stay two series (the agent's scrape job uses honor_labels: true).
            risk.add_metric([h.instance, h.gpu, uuid], h.risk)
            for spec in self._svc.specs:
                f = h.forecasts.get(spec.name)
                if f is not None and f.seconds_to_threshold is not None:
                    ttt.add_metric([h.instance, h.gpu, uuid, spec.name], f.seconds_to_threshold)
        yield risk
        yield ttt
        up = GaugeMetricFamily(
            "gpuwarden_predictor_up",
            "1 when the predictor's last run read Prometheus, 0 when it failed and the last result is stale.",
        )
        up.add_metric([], 1.0 if snap.ok else 0.0)
        yield up
        last = GaugeMetricFamily(
            "gpuwarden_predictor_last_success_timestamp_seconds",
            "When the published forecasts were computed (Unix time).",
        )
        if snap.last_success is not None:
            last.add_metric([], snap.last_success)
        yield last
        runs = CounterMetricFamily("gpuwarden_predictor_runs", "Predictor runs by result.", labels=["result"])
        for k, v in sorted(self._svc._runs.items()):
            runs.add_metric([k], v)
        yield runs
        dur = GaugeMetricFamily("gpuwarden_predictor_run_duration_seconds", "Duration of the last run.")
        dur.add_metric([], self._svc._last_duration)
        yield dur
