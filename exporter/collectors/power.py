"""Power draw, enforced power limit (and the board's default and allowed range), energy counter.

The default limit and the range are the GPU's own figures that relative alert thresholds
(rules/thresholds.yaml `profiles`) are measured against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynvml

from ..nvml import Reader
from .base import Collector, FieldRead, GpuMetric

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


def _milli(name: str, fn: Callable[[Any], int]) -> Callable[[Reader], float | None]:
    """A per-GPU call answering in milliwatts or millijoules, read as watts or joules."""

    def read(r: Reader) -> float | None:
        v = r.call(name, fn, r.device.handle)
        return None if v is None else v / 1000.0

    return read


def _constraint(position: int) -> Callable[[Reader], float | None]:
    def read(r: Reader) -> float | None:
        lo_hi = r.call(
            "nvmlDeviceGetPowerManagementLimitConstraints",
            pynvml.nvmlDeviceGetPowerManagementLimitConstraints,
            r.device.handle,
        )
        return None if lo_hi is None else lo_hi[position] / 1000.0  # NVML: milliwatts (min, max)

    return read


MW = 0.001  # NVML's power fields are in milliwatts, energy in millijoules

COLLECTOR = Collector(
    name="power",
    help="power draw, enforced/default limits and range, energy",
    metrics=(POWER, LIMIT, DEFAULT_LIMIT, MIN_LIMIT, MAX_LIMIT, ENERGY),
    # Everything rides in the one field-values call; the individual calls are for libraries
    # without these field ids. The enforced limit changes (a throttle lowers it); the board's
    # default and range do not while the driver is loaded, so they are asked until they answer once.
    fields=(
        FieldRead(
            "power",
            pynvml.NVML_FI_DEV_POWER_INSTANT,
            MW,
            _milli("nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage),
        ),
        FieldRead(
            "energy",
            pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
            MW,
            _milli("nvmlDeviceGetTotalEnergyConsumption", pynvml.nvmlDeviceGetTotalEnergyConsumption),
        ),
        FieldRead(
            "power_limit",
            pynvml.NVML_FI_DEV_POWER_CURRENT_LIMIT,  # "limit currently enforced" (nvml.h)
            MW,
            _milli("nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit),
        ),
        FieldRead(
            "power_limit_default",
            pynvml.NVML_FI_DEV_POWER_DEFAULT_LIMIT,
            MW,
            _milli("nvmlDeviceGetPowerManagementDefaultLimit", pynvml.nvmlDeviceGetPowerManagementDefaultLimit),
            static=True,
        ),
        FieldRead("power_limit_min", pynvml.NVML_FI_DEV_POWER_MIN_LIMIT, MW, _constraint(0), static=True),
        FieldRead("power_limit_max", pynvml.NVML_FI_DEV_POWER_MAX_LIMIT, MW, _constraint(1), static=True),
    ),
)
