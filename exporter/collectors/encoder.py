"""Video encoder (NVENC) and decoder (NVDEC) utilization."""

from __future__ import annotations

import pynvml

from ..nvml import Reader
from .base import Collector, GpuMetric, Sample

ENCODER = GpuMetric(
    "gpu_encoder_utilization_ratio", "Share of the last sample period the video encoder was busy (0-1).", "encoder"
)
DECODER = GpuMetric(
    "gpu_decoder_utilization_ratio", "Share of the last sample period the video decoder was busy (0-1).", "decoder"
)


def _read(r: Reader, s: Sample) -> None:
    h = r.device.handle
    # No field id carries these: one call each (boards without the engines answer NOT_SUPPORTED once).
    for key, name, fn in (
        ("encoder", "nvmlDeviceGetEncoderUtilization", pynvml.nvmlDeviceGetEncoderUtilization),
        ("decoder", "nvmlDeviceGetDecoderUtilization", pynvml.nvmlDeviceGetDecoderUtilization),
    ):
        util_period = r.call(name, fn, h)
        if util_period is not None:
            s[key] = util_period[0] / 100.0  # NVML: (percent, sampling period in µs)


COLLECTOR = Collector(
    name="encoder", help="video encoder and decoder utilization", metrics=(ENCODER, DECODER), reads=_read
)
