"""Die and memory temperature, fan speed."""

from __future__ import annotations

import pynvml

from exporter.collectors.base import Collector, FieldRead, GpuMetric, Sample
from exporter.nvml import Reader

TEMPERATURE = GpuMetric("gpu_temperature_celsius", "GPU die temperature in degrees Celsius.", "temperature")
MEMORY_TEMPERATURE = GpuMetric("gpu_memory_temperature_celsius",
                               "GPU memory (HBM) temperature in degrees Celsius.", "memory_temperature")
FAN = GpuMetric("gpu_fan_speed_ratio", "Fan speed as a ratio of its maximum (0-1).", "fan")


def _read(r: Reader, s: Sample) -> None:
    h = r.device.handle
    t = r.call("nvmlDeviceGetTemperature", pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
    if t is not None:
        s["temperature"] = float(t)                      # NVML: whole degrees C
    fan = r.call("nvmlDeviceGetFanSpeed", pynvml.nvmlDeviceGetFanSpeed, h)
    if fan is not None:
        s["fan"] = fan / 100.0                           # NVML: percent


COLLECTOR = Collector(
    name="thermal", help="temperatures and fan",
    metrics=(TEMPERATURE, MEMORY_TEMPERATURE, FAN),
    fields=(FieldRead("memory_temperature", pynvml.NVML_FI_DEV_MEMORY_TEMP),),
    reads=_read,
)
