"""Die and memory temperature, NVML's temperature thresholds, fan speed."""

from __future__ import annotations

import pynvml

from ..nvml import Reader
from .base import Collector, FieldRead, GpuMetric, LabelledGpuMetric, Sample

TEMPERATURE = GpuMetric("gpu_temperature_celsius", "GPU die temperature in degrees Celsius.", "temperature")
MEMORY_TEMPERATURE = GpuMetric(
    "gpu_memory_temperature_celsius", "GPU memory (HBM) temperature in degrees Celsius.", "memory_temperature"
)
THRESHOLD = LabelledGpuMetric(
    "gpu_temperature_threshold_celsius",
    "NVML temperature threshold in degrees Celsius (slowdown, shutdown, gpu_max, memory_max).",
    "temperature_thresholds",
    "threshold",
)
# threshold label -> nvmlTemperatureThresholds_t; each is asked on its own, so a GPU that answers
# NOT_SUPPORTED for one (memory_max on boards without HBM) is not asked for it again.
THRESHOLDS = (
    ("shutdown", pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
    ("slowdown", pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
    ("memory_max", pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX),
    ("gpu_max", pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX),
)
FAN = GpuMetric("gpu_fan_speed_ratio", "Fan speed as a ratio of its maximum (0-1).", "fan")


def _read(r: Reader, s: Sample) -> None:
    h = r.device.handle
    t = r.call("nvmlDeviceGetTemperature", pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
    if t is not None:
        s["temperature"] = float(t)  # NVML: whole degrees C
    # Fixed per board: each is read until it answers once (an unsupported one is never asked again).
    thresholds = r.device.static.setdefault("temperature_thresholds", {})
    for label, kind in THRESHOLDS:
        if label not in thresholds:
            v = r.call(
                "nvmlDeviceGetTemperatureThreshold",
                pynvml.nvmlDeviceGetTemperatureThreshold,
                h,
                kind,
                key=f"nvmlDeviceGetTemperatureThreshold:{label}",
            )
            if v is not None:
                thresholds[label] = float(v)  # NVML: whole degrees C
    if thresholds:
        s["temperature_thresholds"] = thresholds
    fan = r.call("nvmlDeviceGetFanSpeed", pynvml.nvmlDeviceGetFanSpeed, h)
    if fan is not None:
        s["fan"] = fan / 100.0  # NVML: percent


COLLECTOR = Collector(
    name="thermal",
    help="temperatures, temperature thresholds and fan",
    metrics=(TEMPERATURE, MEMORY_TEMPERATURE, THRESHOLD, FAN),
    fields=(FieldRead("memory_temperature", pynvml.NVML_FI_DEV_MEMORY_TEMP),),
    reads=_read,
)
