"""XID errors, counted by a thread blocked in NVML's event API (exporter/events.py)."""

from __future__ import annotations

from .base import Collector, LabelledGpuMetric

XID = LabelledGpuMetric(
    "gpu_xid_errors_total", "XID errors reported through NVML's event API, by XID.", "xid", "xid", counter=True
)

COLLECTOR = Collector(name="xid", help="XID errors from the NVML event API", metrics=(XID,))
