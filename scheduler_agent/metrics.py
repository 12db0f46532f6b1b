"""The scheduler's Prometheus metrics, built per scrape from ``Scheduler.snapshot()`` (no state of our own).

Register one ``SchedulerCollector`` on the app's own ``CollectorRegistry``; other components
register their collectors on the same registry (``agent.registry``). Names keep the seed's
(jobs_submitted_total, cluster_gpus_available, ...); ``gpu_state`` has one series per state per
GPU (1 for the GPU's current state, 0 for the others) so dashboards can sum by state;
``gpu_allocation_info`` is 1 for each GPU a job holds (the embedded scheduler's jobs, and Slurm's
through ``Scheduler.add_allocation_source``), so a dashboard or an alert template can name the job.

Per-GPU series carry ``instance``: the GPU's node as Prometheus names it (its exporter target),
not the agent's, so they join the exporter's series; the agent's scrape job sets
``honor_labels: true`` to keep it. ``node`` on gpu_state is the inventory's own name for the node.
"""

from __future__ import annotations

import re
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
        allocations = s.allocations()  # outside snapshot(): a source may run a command
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
            "available": ("GPUs free and schedulable.", sum(1 for g in gpus if g.schedulable and not g.busy)),
            "allocated": ("GPUs held by a job.", sum(1 for g in gpus if g.busy)),
            "unhealthy": (
                "GPUs lost, quarantined or under a firing critical alert.",
                sum(1 for g in gpus if not g.schedulable),
            ),
        }
        for name, (doc, value) in cluster.items():
            g = GaugeMetricFamily("cluster_gpus" + (f"_{name}" if name else ""), doc)
            g.add_metric([], value)
            yield g
        st = GaugeMetricFamily(
            "gpu_state",
            "1 for the GPU's current health state, 0 for the others.",
            labels=["instance", "node", "gpu", "uuid", "state"],
        )
        for row in sorted(gpus):
            for candidate in GPU_STATES:
                st.add_metric(
                    [row.instance, row.node, str(row.gpu), row.uuid, candidate], float(candidate == row.state)
                )
        yield st
        alloc = GaugeMetricFamily(
            "gpu_allocation_info",
            "1 for each GPU a job holds (the embedded scheduler's or Slurm's), naming the job.",
            labels=["instance", "gpu", "uuid", "job_id", "job_name"],
        )
        # A set: one series per (GPU, job). Two jobs on one GPU (Slurm's shared GPUs) stay two.
        for labels in sorted({(a.instance, str(a.gpu), a.uuid, a.job_id, job_label(a.job_name)) for a in allocations}):
            alloc.add_metric(list(labels), 1.0)
        yield alloc


# A job's name is its submitter's text and reaches alert annotations, Slack and dashboards through
# gpu_allocation_info: bounded, without control characters or Slack's markup brackets.
JOB_LABEL_MAX = 128
_NOT_IN_JOB_LABEL = re.compile(r"[\x00-\x1f\x7f<>&]")


def job_label(name: str) -> str:
    """``name`` as the ``job_name`` label: those characters dropped, cut to JOB_LABEL_MAX."""
    return _NOT_IN_JOB_LABEL.sub("", name)[:JOB_LABEL_MAX]
