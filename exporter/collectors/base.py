"""What every collector module is made of.

A collector covers one concern (power, thermal, ECC, ...). It declares, once, at module level:
the metric families it exports (name, help, labels), the NVML field ids it reads through the one
``nvmlDeviceGetFieldValues`` call per GPU (with a per-field fallback call for libraries that lack
the field), and the other calls it makes. A scrape only fills in values: ``read`` runs on the
GPU's worker thread and puts base-unit numbers in the sample; ``export`` builds fresh families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample as PromSample

from ..nvml import Device, Reader

GPU_LABELS = ("gpu", "uuid")

Sample = dict[str, Any]


@dataclass(frozen=True)
class GpuView:
    """One GPU in one scrape: identity, whether it answered, and what it answered.

    ``labels`` is the GPU's shared {"gpu", "uuid"} dict (``Device.labels()``), taken once per
    scrape rather than once per sample.
    """

    device: Device
    up: bool
    stale: bool
    sample: Sample
    labels: dict[str, str]

    @property
    def gpu(self) -> str:
        return str(self.device.index)

    @property
    def uuid(self) -> str:
        return self.device.uuid


def new_family(name: str, help: str, counter: bool, labels: Sequence[str] = GPU_LABELS) -> tuple[Metric, str]:
    """An empty family and the name its samples carry (counters' samples end in _total).

    Samples are appended directly with the GPU's cached label dict: building a label dict per
    sample per scrape (``add_metric``) was a fifth of a scrape's CPU.
    """
    fam = (CounterMetricFamily if counter else GaugeMetricFamily)(name, help, labels=labels)
    return fam, fam.name + "_total" if counter else fam.name


@dataclass(frozen=True)
class FieldRead:
    """A value read through nvmlDeviceGetFieldValues: ``sample[key] = raw * scale``.

    ``static`` values (a board's limits) cannot change while the driver is loaded: read until
    they answer once, then served from ``Device.static`` and no longer asked for.
    """

    key: str
    field_id: int
    scale: float = 1.0
    fallback: Callable[[Reader], float | None] | None = None  # an individual call, base units
    # Where the fallback's value goes when it measures something else (a rate for a counter).
    fallback_key: str | None = None
    static: bool = False


@dataclass(frozen=True)
class GpuMetric:
    """A per-GPU metric whose value is ``sample[key]`` (skipped where the key is missing)."""

    name: str
    help: str
    key: str
    counter: bool = False

    def family(self, gpus: Sequence[GpuView]) -> Metric:
        fam, sample_name = new_family(self.name, self.help, self.counter)
        key, append = self.key, fam.samples.append
        for g in gpus:
            v = g.sample.get(key)
            if v is not None:
                append(PromSample(sample_name, g.labels, v))
        return fam


@dataclass(frozen=True)
class LabelledGpuMetric:
    """A per-GPU metric with one extra label: ``sample[key]`` is a {label value: number} dict."""

    name: str
    help: str
    key: str
    label: str
    counter: bool = False

    def family(self, gpus: Sequence[GpuView]) -> Metric:
        fam, sample_name = new_family(self.name, self.help, self.counter, GPU_LABELS + (self.label,))
        append, label = fam.samples.append, self.label
        for g in gpus:
            values = g.sample.get(self.key)
            if values:
                for lv, v in values.items():
                    append(PromSample(sample_name, g.device.labels_with(label, lv), v))
        return fam


@dataclass
class Collector:
    """One concern. ``reads`` makes individual NVML calls; ``fields`` go through the field API."""

    name: str
    help: str
    metrics: tuple[GpuMetric | LabelledGpuMetric, ...]
    fields: tuple[FieldRead, ...] = ()
    reads: Callable[[Reader, Sample], None] | None = None
    default_enabled: bool = True
    extra_families: Callable[[Sequence[GpuView]], Iterable[Metric]] | None = field(default=None)
    # Frees what ``reads`` allocated in the library for a GPU (GPM samples) before the GPU is
    # dropped or NVML shut down; never called while the GPU is being read.
    release: Callable[[Device], None] | None = None

    def read(self, reader: Reader, sample: Sample) -> None:
        if self.reads is not None:
            self.reads(reader, sample)

    def export(self, gpus: Sequence[GpuView]) -> Iterator[Metric]:
        for m in self.metrics:
            yield m.family(gpus)
        if self.extra_families is not None:
            yield from self.extra_families(gpus)
