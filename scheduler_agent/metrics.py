"""The scheduler's Prometheus metrics, built per scrape from ``Scheduler.snapshot()`` (no state of our own).

Register one ``SchedulerCollector`` on the app's own ``CollectorRegistry``; other components
register their collectors on the same registry (``agent.registry``). Names keep the seed's
(jobs_submitted_total, cluster_gpus_available, ...); ``gpu_state`` has one series per state per
GPU (1 for the GPU's current state, 0 for the others) so dashboards can sum by state.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .models import GPU_STATES
from .scheduler import Scheduler

_COUNTERS = {
    "submitted": ("jobs_submitted", "Jobs accepted by the scheduler."),
    "scheduled": ("jobs_scheduled", "Placements made (a requeued job counts again)."),
    "completed": ("jobs_completed", "Jobs that exited 0."),
    "failed": ("jobs_failed", "Jobs that failed (non-zero exit, signal, time limit, too many preemptions)."),
    "preempted": ("jobs_preempted", "Preemptions of running jobs."),
    "cancelled": ("jobs_cancelled", "Jobs cancelled by a user."),
}


class SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        s = self.scheduler
        counters, jobs, gpus = s.snapshot()
        for key, (name, doc) in _COUNTERS.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], counters.get(key, 0))
            yield c
        for state, doc in (
            ("pending", "Jobs waiting for GPUs."),
            ("running", "Jobs holding GPUs."),
            ("stopping", "Jobs told to stop, not exited yet."),
        ):
            g = GaugeMetricFamily(f"jobs_{state}", doc)
            g.add_metric([], sum(1 for st in jobs if st == state))
            yield g
        buckets, total = s.stats.snapshot()
        h = HistogramMetricFamily(
            "job_duration_seconds", "Run time of jobs that completed or failed (since the agent started)."
        )
        h.add_metric([], buckets, total)
        yield h
        # The seed's cluster_gpus_total is a gauge: promtool rejects _total on a gauge, so it is
        # exported as cluster_gpus (Prometheus conventions win over the seed's names).
        cluster = {
            "": ("GPUs in the inventory (the seed's cluster_gpus_total).", len(gpus)),
            "available": ("GPUs free and schedulable.", sum(1 for *_, ok, busy in gpus if ok and not busy)),
            "allocated": ("GPUs held by a job.", sum(1 for *_, busy in gpus if busy)),
            "unhealthy": (
                "GPUs lost, quarantined or under a firing critical alert.",
                sum(1 for *_, ok, _b in gpus if not ok),
            ),
        }
        for name, (doc, value) in cluster.items():
            g = GaugeMetricFamily("cluster_gpus" + (f"_{name}" if name else ""), doc)
            g.add_metric([], value)
            yield g
        st = GaugeMetricFamily(
            "gpu_state",
            "1 for the GPU's current health state, 0 for the others.",
            labels=["node", "gpu", "uuid", "state"],
        )
        for node, index, uuid, state, _ok, _busy in sorted(gpus):
            for candidate in GPU_STATES:
                st.add_metric([node, str(index), uuid, candidate], 1.0 if candidate == state else 0.0)
        yield st
