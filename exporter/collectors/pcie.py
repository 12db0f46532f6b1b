"""PCIe replay counter."""

from __future__ import annotations

import pynvml

from ..nvml import Reader
from .base import Collector, FieldRead, GpuMetric

REPLAYS = GpuMetric(
    "gpu_pcie_replays_total", "PCIe replays (link-level retransmissions).", "pcie_replays", counter=True
)


def _fallback(r: Reader) -> float | None:
    n = r.call("nvmlDeviceGetPcieReplayCounter", pynvml.nvmlDeviceGetPcieReplayCounter, r.device.handle)
    return None if n is None else float(n)


COLLECTOR = Collector(
    name="pcie",
    help="PCIe replays",
    metrics=(REPLAYS,),
    fields=(FieldRead("pcie_replays", pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, 1.0, _fallback),),
)
