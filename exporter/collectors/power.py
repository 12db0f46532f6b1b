"""Power draw, enforced power limit (and the board's default and allowed range), energy counter.

The default limit and the range are the GPU's own figures that relative alert thresholds
(rules/thresholds.yaml `profiles`) are measured against."""

from __future__ import annotations

import pynvml

from ..nvml import Reader
from .base import Collector, FieldRead, GpuMetric, Sample

POWER = GpuMetric("gpu_power_watts", "Power draw in watts (instantaneous where NVML has it).", "power")
LIMIT = GpuMetric("gpu_power_limit_watts", "Enforced power limit in watts.", "power_limit")
DEFAULT_LIMIT = GpuMetric(
    "gpu_power_limit_default_watts", "Default power limit in watts (after a driver load).", "power_limit_default"
)
MIN_LIMIT = GpuMetric("gpu_power_limit_min_watts", "Lowest power limit the GPU accepts, in watts.", "power_limit_min")
MAX_LIMIT = GpuMetric("gpu_power_limit_max_watts", "Highest power limit the GPU accepts, in watts.", "power_limit_max")
ENERGY = GpuMetric(
    "gpu_energy_joules_total", "Energy consumed since the driver loaded, in joules.", "energy", counter=True
)


def _power_fallback(r: Reader) -> float | None:
    mw = r.call("nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage, r.device.handle)
    return None if mw is None else mw / 1000.0  # NVML: milliwatts


def _energy_fallback(r: Reader) -> float | None:
    mj = r.call("nvmlDeviceGetTotalEnergyConsumption", pynvml.nvmlDeviceGetTotalEnergyConsumption, r.device.handle)
    return None if mj is None else mj / 1000.0  # NVML: millijoules


def _read(r: Reader, s: Sample) -> None:
    mw = r.call("nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit, r.device.handle)
    if mw is not None:
        s["power_limit"] = mw / 1000.0  # NVML: milliwatts
    # The board's default limit and range are fixed while the driver is loaded: read once per GPU.
    static = r.device.static
    if "power_limit_default" not in static:
        mw = r.call(
            "nvmlDeviceGetPowerManagementDefaultLimit", pynvml.nvmlDeviceGetPowerManagementDefaultLimit, r.device.handle
        )
        if mw is not None:
            static["power_limit_default"] = mw / 1000.0  # NVML: milliwatts
    if "power_limit_min" not in static:
        lo_hi = r.call(
            "nvmlDeviceGetPowerManagementLimitConstraints",
            pynvml.nvmlDeviceGetPowerManagementLimitConstraints,
            r.device.handle,
        )
        if lo_hi is not None:
            static["power_limit_min"], static["power_limit_max"] = lo_hi[0] / 1000.0, lo_hi[1] / 1000.0  # mW
    for key in ("power_limit_default", "power_limit_min", "power_limit_max"):
        if key in static:
            s[key] = static[key]


COLLECTOR = Collector(
    name="power",
    help="power draw, enforced/default limits and range, energy",
    metrics=(POWER, LIMIT, DEFAULT_LIMIT, MIN_LIMIT, MAX_LIMIT, ENERGY),
    fields=(
        FieldRead("power", pynvml.NVML_FI_DEV_POWER_INSTANT, 0.001, _power_fallback),
        FieldRead("energy", pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 0.001, _energy_fallback),
    ),
    reads=_read,
)
