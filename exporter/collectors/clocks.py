"""SM and memory clocks."""

from __future__ import annotations

import pynvml

from ..nvml import Reader
from .base import Collector, GpuMetric, Sample

SM = GpuMetric("gpu_sm_clock_hertz", "Current SM clock in hertz.", "sm_clock")
MEMORY = GpuMetric("gpu_memory_clock_hertz", "Current memory clock in hertz.", "memory_clock")


def _read(r: Reader, s: Sample) -> None:
    h = r.device.handle
    for key, clock in (("sm_clock", pynvml.NVML_CLOCK_SM), ("memory_clock", pynvml.NVML_CLOCK_MEM)):
        mhz = r.call(
            "nvmlDeviceGetClockInfo", pynvml.nvmlDeviceGetClockInfo, h, clock, key=f"nvmlDeviceGetClockInfo:{key}"
        )
        if mhz is not None:
            s[key] = mhz * 1e6  # NVML: MHz


COLLECTOR = Collector(name="clocks", help="SM and memory clocks", metrics=(SM, MEMORY), reads=_read)
