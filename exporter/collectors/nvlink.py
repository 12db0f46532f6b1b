"""NVLink data traffic, summed over the GPU's links (boards without NVLink export nothing)."""

from __future__ import annotations

import pynvml

from .base import Collector, FieldRead, GpuMetric

TX = GpuMetric(
    "gpu_nvlink_transmit_bytes_total", "Data bytes the GPU sent over NVLink, all links.", "nvlink_tx", counter=True
)
RX = GpuMetric(
    "gpu_nvlink_receive_bytes_total", "Data bytes the GPU received over NVLink, all links.", "nvlink_rx", counter=True
)

KIB = 1024.0  # NVML counts these in KiB

COLLECTOR = Collector(
    name="nvlink",
    help="NVLink bytes sent and received",
    metrics=(TX, RX),
    # Only the field API has them; a board answering NOT_SUPPORTED is not asked again.
    fields=(
        FieldRead("nvlink_tx", pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, KIB),
        FieldRead("nvlink_rx", pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, KIB),
    ),
)
