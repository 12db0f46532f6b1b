"""Device memory (framebuffer): used, free, reserved by the driver, total."""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml

from ..nvml import Reader
from .base import Collector, GpuMetric, Sample

USED = GpuMetric("gpu_memory_used_bytes", "Device memory in use, in bytes.", "memory_used")
TOTAL = GpuMetric("gpu_memory_total_bytes", "Device memory, in bytes.", "memory_total")
FREE = GpuMetric("gpu_memory_free_bytes", "Device memory neither in use nor reserved, in bytes.", "memory_free")
RESERVED = GpuMetric(
    "gpu_memory_reserved_bytes", "Device memory the driver reserves for itself, in bytes.", "memory_reserved"
)


class _MemoryV2(ctypes.Structure):
    """nvmlMemory_v2_t as a plain ctypes struct (pynvml's routes each field through Python hooks)."""

    _fields_ = pynvml.c_nvmlMemory_v2_t._fields_


def _memory_v2(handle: Any) -> _MemoryV2:
    """nvmlDeviceGetMemoryInfo_v2 (the C entry point, called like pynvml calls it)."""
    m = _MemoryV2()
    m.version = pynvml.nvmlMemory_v2
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2")
    pynvml._nvmlCheckReturn(fn(handle, ctypes.byref(m)))
    return m


def _read(r: Reader, s: Sample) -> None:
    h = r.device.handle
    # v2 excludes the driver's reserved memory from "used"; older libraries only have v1.
    m: Any = r.call("nvmlDeviceGetMemoryInfo_v2", _memory_v2, h)
    if m is None and "nvmlDeviceGetMemoryInfo_v2" in r.device.unsupported:
        m = r.call("nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, h)
    if m is not None:
        s["memory_used"] = float(m.used)  # NVML: bytes
        s["memory_total"] = float(m.total)
        s["memory_free"] = float(m.free)
        if hasattr(m, "reserved"):  # v2 only (same call: free and reserved cost nothing more)
            s["memory_reserved"] = float(m.reserved)


COLLECTOR = Collector(
    name="memory", help="device memory used, free, reserved", metrics=(USED, TOTAL, FREE, RESERVED), reads=_read
)
