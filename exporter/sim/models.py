"""Board models the simulator can play, with the constants its physics needs."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GpuModel:
    name: str  # what nvmlDeviceGetName answers
    idle_watts: float  # draw at 0 % utilization
    max_watts: float  # draw at 100 % utilization with no cap
    default_limit_watts: float  # power limit after a driver load
    min_limit_watts: float  # nvmlDeviceSetPowerManagementLimit lower bound
    max_limit_watts: float  # ... upper bound
    memory_bytes: int
    ambient_celsius: float  # inlet temperature
    thermal_resistance: float  # steady-state °C above ambient per watt (healthy cooling)
    thermal_tau_seconds: float  # time constant of the heat sink
    slowdown_celsius: float  # software thermal slowdown holds the GPU here
    hw_slowdown_celsius: float  # hardware slowdown beyond this
    max_sm_mhz: int
    idle_sm_mhz: int
    mem_mhz: int
    memory_repair: str  # "remapping" (A100 and later) or "retirement" (older boards)
    has_fan: bool
    gpm: bool = False  # GPU performance monitoring (nvmlGpm*): Hopper and later
    nvlink_links: int = 0  # NVLink links (0: PCIe only)
    pcie_byte_counters: bool = True  # NVML_FI_DEV_PCIE_COUNT_TX/RX_BYTES (else nvmlDeviceGetPcieThroughput)
    reserved_bytes: int = 0  # framebuffer the driver keeps for itself (nvmlMemory_v2_t.reserved)
    has_video: bool = True  # NVENC/NVDEC engines


MODELS: dict[str, GpuModel] = {
    # SXM-class board; the simulated one reports a fan reading so dashboards have one to show.
    "h100": GpuModel(
        name="NVIDIA H100 80GB HBM3",
        idle_watts=70.0,
        max_watts=700.0,
        default_limit_watts=700.0,
        min_limit_watts=200.0,
        max_limit_watts=700.0,
        memory_bytes=80 * 1024**3,
        ambient_celsius=30.0,
        thermal_resistance=0.08,
        thermal_tau_seconds=20.0,
        slowdown_celsius=88.0,
        hw_slowdown_celsius=93.0,
        max_sm_mhz=1980,
        idle_sm_mhz=345,
        mem_mhz=2619,
        memory_repair="remapping",
        has_fan=True,
        gpm=True,
        nvlink_links=18,
        reserved_bytes=512 * 1024**2,
    ),
    # An older board: retired pages instead of remapped rows, lower limits.
    "v100": GpuModel(
        name="Tesla V100-SXM2-32GB",
        idle_watts=40.0,
        max_watts=300.0,
        default_limit_watts=300.0,
        min_limit_watts=150.0,
        max_limit_watts=300.0,
        memory_bytes=32 * 1024**3,
        ambient_celsius=30.0,
        thermal_resistance=0.17,
        thermal_tau_seconds=20.0,
        slowdown_celsius=87.0,
        hw_slowdown_celsius=92.0,
        max_sm_mhz=1530,
        idle_sm_mhz=135,
        mem_mhz=877,
        memory_repair="retirement",
        has_fan=False,
        nvlink_links=6,
        pcie_byte_counters=False,  # too old for the PCIe byte counters: read as a rate
        reserved_bytes=256 * 1024**2,
    ),
    # Ampere: remapped rows and NVLink, but no GPM (that came with Hopper).
    "a100": GpuModel(
        name="NVIDIA A100-SXM4-80GB",
        idle_watts=55.0,
        max_watts=400.0,
        default_limit_watts=400.0,
        min_limit_watts=100.0,
        max_limit_watts=400.0,
        memory_bytes=80 * 1024**3,
        ambient_celsius=30.0,
        thermal_resistance=0.13,
        thermal_tau_seconds=20.0,
        slowdown_celsius=88.0,
        hw_slowdown_celsius=93.0,
        max_sm_mhz=1410,
        idle_sm_mhz=210,
        mem_mhz=1593,
        memory_repair="remapping",
        has_fan=False,
        nvlink_links=12,
        reserved_bytes=512 * 1024**2,
    ),
}

# The default: the h100 board under a name no profile in rules/thresholds.yaml matches, so the
# simulated fleet is judged by the seed's default thresholds (400/450 W, 80/85 °C).
# `--sim.model h100` plays the same board as an H100, judged by the H100 profile.
MODELS["sim"] = replace(MODELS["h100"], name="gpuwarden Simulated GPU")
# Hopper with more memory: GPM and NVLink like the H100.
MODELS["h200"] = replace(MODELS["h100"], name="NVIDIA H200", memory_bytes=141 * 1024**3)

DEFAULT_MODEL = "sim"
