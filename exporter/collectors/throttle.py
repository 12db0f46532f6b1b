"""Clock-event (throttle) reasons, one 0/1 series per reason."""

from __future__ import annotations

import pynvml

from gpuwarden.sources import THROTTLE_BITS

from ..nvml import Reader
from .base import Collector, LabelledGpuMetric, Sample

# reason label -> NVML bit (nvmlClocksEventReason*, same bits as the older ...ThrottleReason*):
# gpuwarden.sources holds them, for dcgm-exporter's bitmask too.
REASONS: tuple[tuple[str, int], ...] = tuple(THROTTLE_BITS.items())

ACTIVE = LabelledGpuMetric(
    "gpu_throttle_active",
    "1 while NVML reports this clock-event (throttle) reason active, else 0.",
    "throttle",
    "reason",
)


def _read(r: Reader, s: Sample) -> None:
    h = r.device.handle
    # The "...ClocksEventReasons" name arrived in driver 535; older libraries have the other.
    bits = r.call("nvmlDeviceGetCurrentClocksEventReasons", pynvml.nvmlDeviceGetCurrentClocksEventReasons, h)
    if bits is None and "nvmlDeviceGetCurrentClocksEventReasons" in r.device.unsupported:
        bits = r.call("nvmlDeviceGetCurrentClocksThrottleReasons", pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
    if bits is not None:
        s["throttle"] = {name: 1.0 if bits & bit else 0.0 for name, bit in REASONS}


COLLECTOR = Collector(name="throttle", help="clock-event (throttle) reasons", metrics=(ACTIVE,), reads=_read)
