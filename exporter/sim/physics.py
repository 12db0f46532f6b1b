"""One simulated GPU: state, and how it moves with time.

Power follows load and is capped by the power limit (the capped excess raises ``sw_power_cap``);
temperature follows power through a first-order thermal model with time constant tau; past the
slowdown temperature the GPU caps its own power so that it holds there (``sw_thermal_slowdown``).
So a lower power limit really cools the board, and a cooling fault really heats it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .models import GpuModel

# NVML clock-event reason bits (nvmlClocksEventReason*).
REASON_GPU_IDLE = 0x1
REASON_SW_POWER_CAP = 0x4
REASON_HW_SLOWDOWN = 0x8
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40

MAX_STEP_SECONDS = 1.0  # integration step: fine enough for tau = 20 s

# Traffic at full load (the simulated jobs move data in step with their compute).
PCIE_TX_BYTES_PER_S = 4e9
PCIE_RX_BYTES_PER_S = 8e9
NVLINK_BYTES_PER_S_PER_LINK = 12.5e9  # half of a Hopper link's 25 GB/s each way


@dataclass
class SimGpu:
    index: int
    model: GpuModel
    uuid: str
    pci_bus_id: str
    serial: str
    power_limit_watts: float
    utilization: float = 0.3  # target load 0-1 set by baseline, scenario or control API
    memory_ratio: float = 0.3  # share of memory allocated
    load_pinned: bool = False  # True once a scenario or the API set the load: no wobble
    temperature: float = 35.0
    power_watts: float = 0.0
    energy_mj: float = 0.0
    reasons: int = 0
    ecc_correctable: int = 0
    ecc_uncorrectable: int = 0
    retired_sbe: int = 0
    retired_dbe: int = 0
    remapped_correctable: int = 0
    remapped_uncorrectable: int = 0
    pcie_replays: int = 0
    lost: bool = False
    cooling_factor: float = 1.0  # > 1: degraded cooling (fan failure, blocked airflow)
    extra_watts: float = 0.0  # power_spike fault: draw on top of what load explains
    ecc_correctable_per_s: float = 0.0  # ecc fault: rate of new correctable errors
    pcie_replays_per_s: float = 0.0
    not_supported: set[str] = field(default_factory=set)  # NVML calls answering NOT_SUPPORTED
    hang_calls: set[str] = field(default_factory=set)  # calls that block ("*" = all)
    hang_seconds: float = 0.0
    encoder_utilization: float = 0.0  # 0-1; the simulated jobs do no video work unless told
    decoder_utilization: float = 0.0
    pcie_tx_bytes: float = 0.0  # cumulative traffic, as NVML's byte counters count it
    pcie_rx_bytes: float = 0.0
    nvlink_tx_bytes: float = 0.0
    nvlink_rx_bytes: float = 0.0
    remap_failure: bool = False  # the row remapper ran out of spare rows
    # GPM activity integrals (seconds busy); a GPM metric is their change over a sample interval.
    gpm_elapsed_s: float = 0.0
    sm_active_s: float = 0.0
    sm_occupancy_s: float = 0.0
    tensor_active_s: float = 0.0
    dram_active_s: float = 0.0
    _ecc_carry: float = 0.0
    _pcie_carry: float = 0.0

    # --- derived readings -------------------------------------------------------------------
    @property
    def memory_total(self) -> int:
        return self.model.memory_bytes

    @property
    def memory_used(self) -> int:
        return int(self.model.memory_bytes * min(max(self.memory_ratio, 0.0), 1.0))

    @property
    def memory_reserved(self) -> int:
        return self.model.reserved_bytes

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_total - self.memory_used - self.memory_reserved)

    @property
    def memory_temperature(self) -> float:
        return self.temperature + 4.0  # HBM sits a few degrees above the die sensor

    @property
    def sm_clock_mhz(self) -> int:
        if self.reasons & REASON_GPU_IDLE:
            return self.model.idle_sm_mhz
        demand = self._demand_watts()
        share = 1.0 if demand <= 0 else min(1.0, self.power_watts / demand)
        # Clock scales roughly with the cube root of power in the DVFS range.
        return max(self.model.idle_sm_mhz, int(self.model.max_sm_mhz * share ** (1 / 3)))

    @property
    def fan_percent(self) -> int:
        ratio = (self.temperature - self.model.ambient_celsius) / 60.0
        return int(round(100 * min(1.0, max(0.3, ratio))))

    # --- dynamics ----------------------------------------------------------------------------
    def _demand_watts(self) -> float:
        m = self.model
        return m.idle_watts + (m.max_watts - m.idle_watts) * self.utilization + self.extra_watts

    def _resistance(self) -> float:
        return self.model.thermal_resistance * self.cooling_factor

    def settle(self) -> None:
        """Computes power and reasons for the current temperature (no time passes)."""
        m = self.model
        demand = self._demand_watts()
        reasons = 0
        power = demand
        if power > self.power_limit_watts:
            power = self.power_limit_watts
            reasons |= REASON_SW_POWER_CAP
        # The software thermal controller caps power so the die holds at slowdown temperature.
        thermal_cap = (m.slowdown_celsius - m.ambient_celsius) / self._resistance()
        if self.temperature >= m.slowdown_celsius - 0.5 and power > thermal_cap:
            power = thermal_cap
            reasons |= REASON_SW_THERMAL
        if self.temperature >= m.hw_slowdown_celsius:
            power = min(power, m.idle_watts * 2)
            reasons |= REASON_HW_THERMAL | REASON_HW_SLOWDOWN
        if self.utilization < 0.05 and self.extra_watts == 0:
            reasons |= REASON_GPU_IDLE
        self.power_watts = power
        self.reasons = reasons

    def step(self, dt: float) -> None:
        """Advances this GPU by ``dt`` seconds."""
        while dt > 1e-9:
            h = min(dt, MAX_STEP_SECONDS)
            dt -= h
            self.settle()
            steady = self.model.ambient_celsius + self._resistance() * self.power_watts
            self.temperature += (steady - self.temperature) * (1 - math.exp(-h / self.model.thermal_tau_seconds))
            self.energy_mj += self.power_watts * h * 1000.0
            self._traffic_and_activity(h)
            if self.ecc_correctable_per_s:
                self._ecc_carry += self.ecc_correctable_per_s * h
                whole = int(self._ecc_carry)
                self._ecc_carry -= whole
                self.add_ecc(correctable=whole)
            if self.pcie_replays_per_s:
                self._pcie_carry += self.pcie_replays_per_s * h
                whole = int(self._pcie_carry)
                self._pcie_carry -= whole
                self.pcie_replays += whole
        self.settle()

    def _traffic_and_activity(self, h: float) -> None:
        # Work done scales with the clock the GPU is allowed to run at, so a throttled GPU moves
        # less data and its SMs stay busy longer per job; the simple model: both track load.
        u = self.utilization
        self.pcie_tx_bytes += u * PCIE_TX_BYTES_PER_S * h
        self.pcie_rx_bytes += u * PCIE_RX_BYTES_PER_S * h
        if self.model.nvlink_links:
            link = u * NVLINK_BYTES_PER_S_PER_LINK * self.model.nvlink_links * h
            self.nvlink_tx_bytes += link
            self.nvlink_rx_bytes += link
        self.gpm_elapsed_s += h
        self.sm_active_s += u * h
        self.sm_occupancy_s += 0.5 * u * h
        self.tensor_active_s += 0.7 * u * h
        self.dram_active_s += min(1.0, 0.4 * u + 0.2 * self.memory_ratio) * h

    def add_ecc(self, correctable: int = 0, uncorrectable: int = 0) -> None:
        """New ECC errors; the memory repairs them the way this board does."""
        self.ecc_correctable += correctable
        self.ecc_uncorrectable += uncorrectable
        if self.model.memory_repair == "remapping":
            self.remapped_correctable += correctable // 8  # a row is remapped every few errors
            self.remapped_uncorrectable += uncorrectable
        else:
            self.retired_sbe += correctable // 8
            self.retired_dbe += uncorrectable

    def set_power_limit(self, watts: float) -> None:
        m = self.model
        if not m.min_limit_watts <= watts <= m.max_limit_watts:
            raise ValueError(f"power limit {watts} W outside [{m.min_limit_watts}, {m.max_limit_watts}] W")
        self.power_limit_watts = float(watts)
        self.settle()

    def state(self) -> dict[str, object]:
        """What the control endpoint shows (JSON-ready)."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.model.name,
            "pci_bus_id": self.pci_bus_id,
            "lost": self.lost,
            "utilization": round(self.utilization, 4),
            "memory_ratio": round(self.memory_ratio, 4),
            "temperature_celsius": round(self.temperature, 3),
            "power_watts": round(self.power_watts, 3),
            "power_limit_watts": self.power_limit_watts,
            "energy_joules": round(self.energy_mj / 1000.0, 3),
            "throttle_reasons": self.reasons,
            "ecc_correctable": self.ecc_correctable,
            "ecc_uncorrectable": self.ecc_uncorrectable,
            "pcie_replays": self.pcie_replays,
            "encoder_utilization": self.encoder_utilization,
            "decoder_utilization": self.decoder_utilization,
            "remap_failure": self.remap_failure,
            "cooling_factor": self.cooling_factor,
            "extra_watts": self.extra_watts,
            "not_supported": sorted(self.not_supported),
            "hang_calls": sorted(self.hang_calls),
        }
