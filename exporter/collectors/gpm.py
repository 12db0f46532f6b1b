"""SM, tensor-pipe and DRAM activity from GPM (GPU performance monitoring, Hopper and later).

GPM metrics are computed by NVML from two samples: each collection takes a sample and asks for
the metrics between it and the previous collection's, so a value is the average over the time
between two collections (the first collection only takes a sample). Boards without GPM answer
nvmlGpmQueryDeviceSupport with isSupportedDevice 0 once and are not asked again.

Off by default (``--collector.gpm`` turns it on), as node_exporter leaves its costly collectors
off and dcgm-exporter keeps its DCP profiling fields out of its default set: these are profiling
figures (two more NVML calls per GPU per scrape, no field id can carry them, and four more series
per GPU), not health signals any alert reads, and they kept the scrape from staying as cheap as
nvitop-exporter's against which it is benchmarked (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

import pynvml

from ..nvml import Device, Reader, code_name
from .base import Collector, GpuMetric, Sample

SM_ACTIVE = GpuMetric(
    "gpu_sm_active_ratio",
    "Share of SMs busy (at least one warp resident), averaged since the previous collection (0-1; GPM).",
    "sm_active",
)
SM_OCCUPANCY = GpuMetric(
    "gpu_sm_occupancy_ratio",
    "Resident warps against the SMs' maximum, averaged since the previous collection (0-1; GPM).",
    "sm_occupancy",
)
TENSOR_ACTIVE = GpuMetric(
    "gpu_tensor_active_ratio",
    "Share of time the tensor pipes were busy, averaged since the previous collection (0-1; GPM).",
    "tensor_active",
)
DRAM_ACTIVE = GpuMetric(
    "gpu_dram_active_ratio",
    "Device memory bandwidth used against its maximum, averaged since the previous collection (0-1; GPM).",
    "dram_active",
)

# sample key <- GPM metric id (NVML: percent)
METRICS = (
    ("sm_active", pynvml.NVML_GPM_METRIC_SM_UTIL),
    ("sm_occupancy", pynvml.NVML_GPM_METRIC_SM_OCCUPANCY),
    ("tensor_active", pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL),
    ("dram_active", pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL),
)
log = logging.getLogger(__name__)

UNSUPPORTED = "gpm"  # the key a board without GPM is remembered by in Device.unsupported


class _Metric(ctypes.Structure):
    """nvmlGpmMetric_t's layout as a plain ctypes struct (pynvml's routes every field access
    through Python hooks: a third of a Hopper GPU's read cost went there)."""

    _fields_ = pynvml.c_nvmlGpmMetric_t._fields_


class _MetricsGet(ctypes.Structure):
    """nvmlGpmMetricsGet_t, plain; the sample handles are opaque pointers."""

    _fields_ = [
        ("version", ctypes.c_uint),
        ("numMetrics", ctypes.c_uint),
        ("sample1", ctypes.c_void_p),
        ("sample2", ctypes.c_void_p),
        ("metrics", _Metric * pynvml.NVML_GPM_METRIC_MAX),
    ]


def _metrics_get(req: _MetricsGet) -> _MetricsGet:
    """nvmlGpmMetricsGet on the plain struct (the C entry point, called like pynvml calls it)."""
    fn = pynvml._nvmlGetFunctionPointer("nvmlGpmMetricsGet")
    pynvml._nvmlCheckReturn(fn(ctypes.byref(req)))
    return req


@dataclass
class _State:
    """Per GPU, made once: two samples taken in turn and one reusable request."""

    samples: tuple[Any, Any]
    request: Any
    turn: int = 0
    primed: bool = False  # a previous sample exists


def _start(r: Reader) -> _State | None:
    dev = r.device
    support = r.call("nvmlGpmQueryDeviceSupport", pynvml.nvmlGpmQueryDeviceSupport, dev.handle)
    if support is None:
        return None
    if not support.isSupportedDevice:
        dev.unsupported.add(UNSUPPORTED)
        return None
    a = r.call("nvmlGpmSampleAlloc", pynvml.nvmlGpmSampleAlloc)
    b = r.call("nvmlGpmSampleAlloc", pynvml.nvmlGpmSampleAlloc) if a is not None else None
    if a is None or b is None:
        if a is not None:
            r.call("nvmlGpmSampleFree", pynvml.nvmlGpmSampleFree, a)
        return None
    req = _MetricsGet()
    req.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    req.numMetrics = len(METRICS)
    for i, (_, metric_id) in enumerate(METRICS):
        req.metrics[i].metricId = metric_id
    state = _State((a, b), req)
    dev.static[UNSUPPORTED] = state
    return state


def _release(dev: Device) -> None:
    """Frees the GPU's two samples (nvmlGpmSampleFree); the next read starts over."""
    state = dev.static.pop(UNSUPPORTED, None)
    if state is None:
        return
    for sample in state.samples:
        try:
            pynvml.nvmlGpmSampleFree(sample)
        except pynvml.NVMLError as exc:  # nothing to do about it: the library is going away
            log.debug("GPU %d: nvmlGpmSampleFree: %s", dev.index, code_name(exc.value))


def _read(r: Reader, s: Sample) -> None:
    dev = r.device
    if UNSUPPORTED in dev.unsupported:
        return
    state: _State | None = dev.static.get(UNSUPPORTED) or _start(r)
    if state is None:
        return
    current = state.samples[state.turn]
    if r.call("nvmlGpmSampleGet", pynvml.nvmlGpmSampleGet, dev.handle, current) is None:
        state.primed = False
        return
    if state.primed:
        req = state.request
        req.sample1 = ctypes.cast(state.samples[1 - state.turn], ctypes.c_void_p).value
        req.sample2 = ctypes.cast(current, ctypes.c_void_p).value
        if r.call("nvmlGpmMetricsGet", _metrics_get, req) is not None:
            for i, (key, _) in enumerate(METRICS):
                m = req.metrics[i]
                if m.nvmlReturn == pynvml.NVML_SUCCESS:
                    s[key] = m.value / 100.0  # NVML: percent
    state.primed = True
    state.turn = 1 - state.turn


COLLECTOR = Collector(
    name="gpm",
    help="SM, tensor-pipe and DRAM activity (GPM; Hopper and later)",
    metrics=(SM_ACTIVE, SM_OCCUPANCY, TENSOR_ACTIVE, DRAM_ACTIVE),
    reads=_read,
    release=_release,
    default_enabled=False,
)
