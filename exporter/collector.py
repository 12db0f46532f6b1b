"""The Prometheus collector: one collection per scrape, fresh metric families every time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample as PromSample

from .collectors.base import GPU_LABELS, GpuView
from .service import ExporterService

INFO = ("gpu_info", "GPU identity; always 1.", GPU_LABELS + ("name", "pci_bus_id", "driver_version"))
UP = ("gpu_up", "1 when the GPU answered this collection, 0 when it errored, is lost, or is stale.")
NVML_UP = ("gpuwarden_exporter_nvml_up", "1 when NVML is initialised, 0 while it is missing or failing.")
DURATION = ("gpuwarden_exporter_collect_duration_seconds", "Time this scrape waited for its GPU collection.")
ERRORS = ("gpuwarden_exporter_nvml_errors_total", "NVML calls that returned an error, by call and return code.")
STALE = (
    "gpuwarden_exporter_gpu_stale",
    "1 when the GPU's reader missed the collection deadline (a hung NVML call); its other series "
    "then carry the last values read.",
)
CALLS = ("gpuwarden_exporter_nvml_calls_total", "NVML calls made to read GPUs.")


class GpuCollector:
    """Registered once in a CollectorRegistry; each ``collect()`` is one scrape."""

    def __init__(self, service: ExporterService) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        return []  # nothing to pre-declare; avoids a collection at registration time

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        snap = svc.snapshot()
        nvml_up = GaugeMetricFamily(*NVML_UP)
        nvml_up.add_metric((), 1.0 if snap is not None else 0.0)
        yield nvml_up
        if snap is not None:
            driver = svc.discovery.driver_version if svc.discovery else ""
            xid = svc.xid
            views = []
            info = GaugeMetricFamily(*INFO[:2], labels=INFO[2])
            up = GaugeMetricFamily(*UP, labels=GPU_LABELS)
            stale = GaugeMetricFamily(*STALE, labels=GPU_LABELS)
            for st in snap.gpus:
                d = st.device
                gpu = str(d.index)
                sample = st.sample
                if xid is not None:
                    sample = dict(sample)
                    sample["xid"] = xid.counts(d.uuid)
                labels = d.labels()
                views.append(GpuView(d, st.up, st.stale, sample, labels))
                info.add_metric((gpu, d.uuid, d.name, d.pci_bus_id, driver), 1.0)
                up.samples.append(PromSample("gpu_up", labels, 1.0 if st.up else 0.0))
                stale.samples.append(PromSample(STALE[0], labels, 1.0 if st.stale else 0.0))
            yield info
            yield up
            for c in svc.collectors:
                yield from c.export(views)
            yield stale
            duration = GaugeMetricFamily(*DURATION)
            duration.add_metric((), snap.duration)
            yield duration
            calls = CounterMetricFamily(*CALLS)
            calls.add_metric((), float(svc.sampler.calls()) if svc.sampler else 0.0)
            yield calls
        errors = CounterMetricFamily(*ERRORS, labels=("call", "code"))
        for (call, code), n in sorted(svc.errors.counts().items()):
            errors.add_metric((call, code), float(n))
        yield errors
