"""PCIe traffic: byte counters where NVML has them, else its throughput sample."""

from __future__ import annotations

from collections.abc import Callable

import pynvml

from ..nvml import Reader
from .base import Collector, FieldRead, GpuMetric

TX = GpuMetric("gpu_pcie_transmit_bytes_total", "Bytes the GPU sent over PCIe.", "pcie_tx", counter=True)
RX = GpuMetric("gpu_pcie_receive_bytes_total", "Bytes the GPU received over PCIe.", "pcie_rx", counter=True)
TX_RATE = GpuMetric(
    "gpu_pcie_transmit_bytes_per_second",
    "PCIe send throughput in bytes per second, sampled by NVML over 20 ms (boards without the byte counters).",
    "pcie_tx_rate",
)
RX_RATE = GpuMetric(
    "gpu_pcie_receive_bytes_per_second",
    "PCIe receive throughput in bytes per second, sampled by NVML over 20 ms (boards without the byte counters).",
    "pcie_rx_rate",
)


def _throughput(counter: int) -> Callable[[Reader], float | None]:
    def read(r: Reader) -> float | None:
        kb = r.call(
            "nvmlDeviceGetPcieThroughput",
            pynvml.nvmlDeviceGetPcieThroughput,
            r.device.handle,
            counter,
            key=f"nvmlDeviceGetPcieThroughput:{counter}",
        )
        return None if kb is None else kb * 1024.0  # NVML: KB/s

    return read


COLLECTOR = Collector(
    name="pcie_traffic",
    help="PCIe bytes sent and received",
    metrics=(TX, RX, TX_RATE, RX_RATE),
    # Counters are what Prometheus wants (rate() over any window); older drivers lack the field
    # ids, and there the 20 ms throughput sample is the only figure NVML has.
    fields=(
        FieldRead(
            "pcie_tx",
            pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
            1.0,
            _throughput(pynvml.NVML_PCIE_UTIL_TX_BYTES),
            "pcie_tx_rate",
        ),
        FieldRead(
            "pcie_rx",
            pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES,
            1.0,
            _throughput(pynvml.NVML_PCIE_UTIL_RX_BYTES),
            "pcie_rx_rate",
        ),
    ),
)
