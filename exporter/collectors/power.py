"""Power draw, enforced power limit, energy counter."""

from __future__ import annotations

import pynvml

from exporter.collectors.base import Collector, FieldRead, GpuMetric, Sample
from exporter.nvml import Reader

POWER = GpuMetric("gpu_power_watts", "Power draw in watts (instantaneous where NVML has it).", "power")
LIMIT = GpuMetric("gpu_power_limit_watts", "Enforced power limit in watts.", "power_limit")
ENERGY = GpuMetric("gpu_energy_joules_total", "Energy consumed since the driver loaded, in joules.",
                   "energy", counter=True)


def _power_fallback(r: Reader) -> float | None:
    mw = r.call("nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage, r.device.handle)
    return None if mw is None else mw / 1000.0          # NVML: milliwatts


def _energy_fallback(r: Reader) -> float | None:
    mj = r.call("nvmlDeviceGetTotalEnergyConsumption", pynvml.nvmlDeviceGetTotalEnergyConsumption,
                r.device.handle)
    return None if mj is None else mj / 1000.0          # NVML: millijoules


def _read(r: Reader, s: Sample) -> None:
    mw = r.call("nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit, r.device.handle)
    if mw is not None:
        s["power_limit"] = mw / 1000.0                   # NVML: milliwatts


COLLECTOR = Collector(
    name="power", help="power draw, enforced limit, energy",
    metrics=(POWER, LIMIT, ENERGY),
    fields=(
        FieldRead("power", pynvml.NVML_FI_DEV_POWER_INSTANT, 0.001, _power_fallback),
        FieldRead("energy", pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 0.001, _energy_fallback),
    ),
    reads=_read,
)
