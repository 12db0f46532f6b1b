"""A virtual fleet: N simulated nodes of 8 GPUs each in one process, for scale tests.

The per-GPU simulator (``fleet.Fleet``: one ``SimGpu`` object per GPU, read through NVML and
the real exporter) costs tens of microseconds per GPU per call; 8,192 of them beside Prometheus
on a 2-core machine would measure the simulator, not the monitoring. Here the same physics
(``physics.SimGpu.settle``/``step``: power follows load capped by the limit, temperature follows
power through the thermal time constant, thermal slowdown, ECC rates) runs on numpy arrays, one
element per GPU, and each node's ``/metrics`` is rendered straight from them with the real
exporter's metric names, labels and help (``exporter.collectors``), so the rules, the inventory
and the predictor read exactly what they read from ``gpuwarden-exporter``.

Each node is its own scrape target: one listener serves ``/nodes/<node>/metrics`` for every node
(1,024 uvicorn listeners would cost a thread and an event loop each), and the targets file
(Prometheus file_sd) gives each target its own ``instance`` (``<node>:9400``, as a real fleet's
exporters look) and ``__metrics_path__``, so Prometheus keeps one ``up`` per node. A node taken
down (``node_down``) answers 503: its ``up`` goes to 0 like an unreachable exporter's.

Faults use the simulator's documents (``faults.check_fault``; ``hang`` and ``not_supported`` act
on NVML calls, which this fleet has none of, and are refused). ``storm`` injects a mix of faults on
a fraction of the GPUs at one instant and records when each GPU's raw temperature first crosses
the thresholds it is asked to watch, so latency can be measured from the moment a rule could
first have seen its condition.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuwarden.sources import THROTTLE_BITS, THROTTLING_REASONS

from ..collector import INFO, NVML_UP, STALE, UP
from ..collectors import COLLECTORS
from ..collectors.throttle import REASONS
from .clock import Clock, RealClock
from .faults import XID_FALLEN_OFF_BUS, check_fault
from .fleet import SYNC_QUANTUM_SECONDS, WOBBLE_PERIOD_SECONDS
from .models import DEFAULT_MODEL, MODELS
from .physics import (
    MAX_STEP_SECONDS,
    REASON_GPU_IDLE,
    REASON_HW_SLOWDOWN,
    REASON_HW_THERMAL,
    REASON_SW_POWER_CAP,
    REASON_SW_THERMAL,
)

GPUS_PER_NODE = 8
EXPORTER_PORT = 9400  # the port in each node's instance label, as a real fleet's exporters
_UUID_NS = uuidlib.UUID("0b7c3f9e-5d2a-4e61-8f0a-6c1d2b3a4f50")
UNSUPPORTED_FAULTS = {"hang", "not_supported"}  # they act on NVML calls; this fleet makes none


class UnknownTarget(LookupError):
    """A node or GPU reference that names nothing in the virtual fleet."""


@dataclass(frozen=True)
class Watch:
    """A raw-value threshold whose first crossing (per storm GPU) is recorded."""

    metric: str  # temperature_celsius | power_watts | throttle_active (any throttling reason: 1)
    above: float


class VirtualFleet:
    """``nodes`` × ``gpus_per_node`` simulated GPUs of one model, vectorised (module doc)."""

    def __init__(
        self,
        nodes: int,
        gpus_per_node: int = GPUS_PER_NODE,
        model: str = DEFAULT_MODEL,
        clock: Clock | None = None,
        driver_version: str = "550.54.15",
        node_prefix: str = "node",
    ) -> None:
        if nodes < 1 or gpus_per_node < 1:
            raise ValueError(f"a virtual fleet needs at least one node and one GPU, got {nodes} x {gpus_per_node}")
        if model not in MODELS:
            raise ValueError(f"unknown GPU model {model!r}; known: {', '.join(sorted(MODELS))}")
        self.model = m = MODELS[model]
        self.clock = clock or RealClock()
        self.driver_version = driver_version
        self.nodes, self.per_node = nodes, gpus_per_node
        self.count = n = nodes * gpus_per_node
        width = max(4, len(str(nodes - 1)))
        self.node_names = [f"{node_prefix}-{i:0{width}d}" for i in range(nodes)]
        self._node_ix = {name: i for i, name in enumerate(self.node_names)}
        self.index = np.tile(np.arange(gpus_per_node), nodes)  # GPU index within its node
        self.uuids = [
            f"GPU-{uuidlib.uuid5(_UUID_NS, f'{self.node_names[i // gpus_per_node]}-{i % gpus_per_node}')}"
            for i in range(n)
        ]
        self._by_uuid = {u: i for i, u in enumerate(self.uuids)}
        self.lock = threading.RLock()
        f = np.zeros
        self.utilization, self.memory_ratio = f(n), f(n)
        self.load_pinned = f(n, dtype=bool)
        self.power_limit = np.full(n, m.default_limit_watts)
        self.power, self.energy_j, self.reasons = f(n), f(n), f(n, dtype=np.int64)
        self.cooling, self.extra_watts = np.ones(n), f(n)
        self.ecc_c, self.ecc_u = f(n, dtype=np.int64), f(n, dtype=np.int64)
        self.ecc_rate, self._ecc_carry = f(n), f(n)
        self.pcie, self.pcie_rate, self._pcie_carry = f(n, dtype=np.int64), f(n), f(n)
        self.lost = f(n, dtype=bool)
        self.node_down = f(nodes, dtype=bool)
        self.xids: dict[int, dict[int, int]] = {}  # gpu -> xid -> count
        # (watch, since when each GPU is above: clock time or nan, each GPU's rising edges): an
        # alert's latency counts from the start of the episode that fired it, not the first one.
        self._watch: list[tuple[Watch, np.ndarray, dict[int, list[float]]]] = []
        self._t0 = self._t = self.clock.now()
        self._wall0 = time.time() - self._t0  # fixed, so a manual clock's times map one to one
        self._baseline(0.0)
        self._settle()
        self.temperature = m.ambient_celsius + m.thermal_resistance * self.power  # start warmed up
        self._settle()
        self._prefix = [self._labels(i) for i in range(n)]

    # --- physics (physics.SimGpu's, on arrays) --------------------------------------------------
    def _baseline(self, elapsed: float) -> None:
        """A healthy working load that drifts slowly, unless something pinned the load."""
        free = ~self.load_pinned
        phase = 2 * math.pi * elapsed / WOBBLE_PERIOD_SECONDS + np.arange(self.count)
        util = 0.25 + 0.05 * (self.index % 4) + 0.05 * np.sin(phase)
        self.utilization[free] = util[free]
        self.memory_ratio[free] = (0.30 + 0.05 * (self.index % 3))[free]

    def _demand(self) -> np.ndarray:
        m = self.model
        return m.idle_watts + (m.max_watts - m.idle_watts) * self.utilization + self.extra_watts

    def _settle(self) -> None:
        m = self.model
        demand = self._demand()
        capped = demand > self.power_limit
        power = np.where(capped, self.power_limit, demand)
        reasons = np.where(capped, REASON_SW_POWER_CAP, 0)
        resistance = m.thermal_resistance * self.cooling
        thermal_cap = (m.slowdown_celsius - m.ambient_celsius) / resistance
        temp = getattr(self, "temperature", None)
        if temp is not None:
            hot = (temp >= m.slowdown_celsius - 0.5) & (power > thermal_cap)
            power = np.where(hot, thermal_cap, power)
            reasons |= np.where(hot, REASON_SW_THERMAL, 0)
            very_hot = temp >= m.hw_slowdown_celsius
            power = np.where(very_hot, np.minimum(power, m.idle_watts * 2), power)
            reasons |= np.where(very_hot, REASON_HW_THERMAL | REASON_HW_SLOWDOWN, 0)
        reasons |= np.where((self.utilization < 0.05) & (self.extra_watts == 0), REASON_GPU_IDLE, 0)
        self.power, self.reasons = power, reasons

    def _step(self, h: float) -> None:
        m = self.model
        self._settle()
        steady = m.ambient_celsius + m.thermal_resistance * self.cooling * self.power
        self.temperature = self.temperature + (steady - self.temperature) * (1 - math.exp(-h / m.thermal_tau_seconds))
        self.energy_j = self.energy_j + self.power * h
        for rate, carry, counter in ((self.ecc_rate, self._ecc_carry, "ecc"), (self.pcie_rate, self._pcie_carry, "")):
            if rate.any():
                carry += rate * h
                whole = np.floor(carry).astype(np.int64)
                carry -= whole
                if counter == "ecc":
                    self.ecc_c += whole
                else:
                    self.pcie += whole

    def sync(self, force: bool = False) -> None:
        """Brings the fleet up to ``clock.now()`` (at most every SYNC_QUANTUM_SECONDS unless forced)."""
        with self.lock:
            now = self.clock.now()
            if not force and now - self._t < SYNC_QUANTUM_SECONDS:
                return
            while now - self._t > 1e-9:
                h = min(now - self._t, MAX_STEP_SECONDS)
                self._t += h
                self._baseline(self._t - self._t0)
                self._step(h)
                self._record_crossings()
            self._settle()

    def _record_crossings(self) -> None:
        for w, since, edges in self._watch:
            above = WATCHED[w.metric](self) > w.above
            rising = above & np.isnan(since)
            for i in np.flatnonzero(rising):
                edges.setdefault(int(i), []).append(self._t)
            since[rising] = self._t
            since[~above] = np.nan

    def wall(self, t: float) -> float:
        """Wall-clock time (epoch seconds) of the fleet's clock time ``t``."""
        return self._wall0 + t

    # --- lookups -------------------------------------------------------------------------------
    def node(self, ref: str) -> int:
        if ref in self._node_ix:
            return self._node_ix[ref]
        raise UnknownTarget(f"no node {ref!r} in the virtual fleet ({self.node_names[0]} .. {self.node_names[-1]})")

    def gpu(self, ref: str | int, node: str | None = None) -> int:
        """The flat id of a GPU named by UUID, by ``<node>:<index>``, or by index within ``node``."""
        if isinstance(ref, str) and node is None and ":" in ref and not ref.startswith("GPU-"):
            node, ref = ref.rsplit(":", 1)
        if node is not None:
            k = int(ref) if isinstance(ref, int) or ref.isdigit() else -1
            if not 0 <= k < self.per_node:
                raise UnknownTarget(f"no GPU {ref!r} on {node}: use an index 0-{self.per_node - 1}")
            return self.node(node) * self.per_node + k
        if isinstance(ref, str) and ref in self._by_uuid:
            return self._by_uuid[ref]
        raise UnknownTarget(f"no GPU {ref!r} in the virtual fleet: use a UUID, <node>:<index> or all")

    def targets(self, ref: str, node: str | None = None) -> list[int]:
        if ref == "all":
            if node is None:
                return list(range(self.count))
            base = self.node(node) * self.per_node
            return list(range(base, base + self.per_node))
        return [self.gpu(ref, node)]

    def instance(self, i: int) -> str:
        return f"{self.node_names[i // self.per_node]}:{EXPORTER_PORT}"

    # --- control (the --simulate control API's operations) ----------------------------------------
    def set_load(self, ids: Sequence[int], utilization: float | None, memory_ratio: float | None) -> None:
        for name, v in (("utilization", utilization), ("memory_ratio", memory_ratio)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0):
                raise ValueError(f"{name}: must be a number in [0, 1], got {v!r}")
        with self.lock:
            self.sync(force=True)
            ix = np.asarray(ids)
            self.load_pinned[ix] = True
            if utilization is not None:
                self.utilization[ix] = utilization
            if memory_ratio is not None:
                self.memory_ratio[ix] = memory_ratio
            self._settle()

    def set_power_limit(self, ids: Sequence[int], watts: float) -> None:
        m = self.model
        if not m.min_limit_watts <= watts <= m.max_limit_watts:
            raise ValueError(f"power limit {watts} W outside [{m.min_limit_watts}, {m.max_limit_watts}] W")
        with self.lock:
            self.sync(force=True)
            self.power_limit[np.asarray(ids)] = float(watts)
            self._settle()

    def inject(self, ids: Sequence[int], fault: dict[str, Any]) -> float:
        """Applies a fault document to the GPUs; returns the fleet clock time it took effect."""
        check_fault(fault)
        if fault["kind"] in UNSUPPORTED_FAULTS:
            raise ValueError(f"kind: {fault['kind']!r} acts on NVML calls; the virtual fleet makes none")
        with self.lock:
            self.sync(force=True)
            for i in ids:
                self._apply(i, fault)
            self._settle()
            return self._t

    def _apply(self, i: int, doc: dict[str, Any]) -> None:
        """One fault on GPU ``i`` (faults.apply_fault's effects, on the arrays)."""
        kind = doc["kind"]
        if kind == "lost":
            self.lost[i] = True
        elif kind == "xid":
            xid = int(doc["xid"])
            per = self.xids.setdefault(i, {})
            per[xid] = per.get(xid, 0) + 1
            if doc.get("lose_gpu", xid == XID_FALLEN_OFF_BUS):
                self.lost[i] = True
        elif kind == "cooling":
            self.cooling[i] = float(doc["factor"])
        elif kind == "power_spike":
            self.extra_watts[i] = float(doc["watts"])
        elif kind == "ecc":
            self.ecc_c[i] += int(doc.get("correctable", 0))
            self.ecc_u[i] += int(doc.get("uncorrectable", 0))
            if "correctable_per_minute" in doc:
                self.ecc_rate[i] = float(doc["correctable_per_minute"]) / 60.0
        elif kind == "pcie_replays":
            self.pcie[i] += int(doc.get("count", 0))
            if "per_minute" in doc:
                self.pcie_rate[i] = float(doc["per_minute"]) / 60.0
        elif kind == "driver_reload":
            self.ecc_c[i] = self.ecc_u[i] = 0
            self.energy_j[i] = 0.0
            self.lost[i] = False

    def clear(self, ids: Sequence[int]) -> None:
        """Undoes every standing fault (counts already made stay, as on a real GPU)."""
        with self.lock:
            self.sync(force=True)
            ix = np.asarray(ids)
            self.lost[ix] = False
            self.cooling[ix] = 1.0
            self.extra_watts[ix] = 0.0
            self.ecc_rate[ix] = 0.0
            self.pcie_rate[ix] = 0.0
            self._settle()

    def set_node_down(self, node: str, down: bool) -> None:
        with self.lock:
            self.node_down[self.node(node)] = down

    def storm(
        self,
        fraction: float,
        faults: Sequence[dict[str, Any]],
        seed: int = 0,
        watch: Sequence[Watch] = (),
        exclude: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Faults on ``fraction`` of the GPUs at one instant, ``faults`` dealt round-robin over a
        seeded random sample; records every time a GPU's value rises above each ``watch``."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction: must be in (0, 1], got {fraction!r}")
        if not faults:
            raise ValueError("faults: a storm needs at least one fault document")
        for doc in faults:
            check_fault(doc)
            if doc["kind"] in UNSUPPORTED_FAULTS:
                raise ValueError(f"faults: kind {doc['kind']!r} acts on NVML calls; the virtual fleet makes none")
        pool = sorted(set(range(self.count)) - set(exclude))
        size = max(1, round(fraction * self.count))
        if size > len(pool):
            raise ValueError(f"fraction: {size} GPUs asked, {len(pool)} not excluded")
        chosen = sorted(random.Random(seed).sample(pool, size))
        with self.lock:
            self.sync(force=True)
            self._watch = [(w, np.full(self.count, np.nan), {}) for w in watch]
            for k, i in enumerate(chosen):
                self._apply(i, faults[k % len(faults)])
            self._settle()
            self._record_crossings()
            at = self._t
        return {
            "at": self.wall(at),
            "gpus": [
                {
                    "uuid": self.uuids[i],
                    "instance": self.instance(i),
                    "node": self.node_names[i // self.per_node],
                    "gpu": int(self.index[i]),
                    "fault": faults[k % len(faults)],
                }
                for k, i in enumerate(chosen)
            ],
        }

    def crossings(self) -> dict[str, dict[str, list[float]]]:
        """uuid -> "<metric>><above>" -> wall times the value rose above it since the last storm."""
        with self.lock:
            self.sync(force=True)
            out: dict[str, dict[str, list[float]]] = {}
            for w, _, edges in self._watch:
                for i, times in edges.items():
                    out.setdefault(self.uuids[i], {})[f"{w.metric}>{w.above:g}"] = [self.wall(t) for t in times]
            return out

    def state(self, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """What the control endpoint shows, in the shape of ``fleet.Fleet.state()`` plus the node."""
        m = self.model
        with self.lock:
            self.sync(force=True)
            out = []
            for i in range(self.count) if ids is None else ids:
                out.append(
                    {
                        "index": int(self.index[i]),
                        "node": self.node_names[i // self.per_node],
                        "instance": self.instance(i),
                        "uuid": self.uuids[i],
                        "name": m.name,
                        "lost": bool(self.lost[i]),
                        "utilization": round(float(self.utilization[i]), 4),
                        "memory_ratio": round(float(self.memory_ratio[i]), 4),
                        "temperature_celsius": round(float(self.temperature[i]), 3),
                        "power_watts": round(float(self.power[i]), 3),
                        "power_limit_watts": float(self.power_limit[i]),
                        "power_limit_min_watts": m.min_limit_watts,
                        "power_limit_max_watts": m.max_limit_watts,
                        "throttle_reasons": int(self.reasons[i]),
                        "ecc_correctable": int(self.ecc_c[i]),
                        "ecc_uncorrectable": int(self.ecc_u[i]),
                        "cooling_factor": float(self.cooling[i]),
                        "extra_watts": float(self.extra_watts[i]),
                    }
                )
            return out

    # --- exposition ----------------------------------------------------------------------------
    def _labels(self, i: int) -> str:
        return f'gpu="{int(self.index[i])}",uuid="{self.uuids[i]}"'

    def render(self, node: int) -> bytes:
        """One node's ``/metrics``, as ``gpuwarden-exporter`` on that node would answer."""
        m = self.model
        lo, hi = node * self.per_node, (node + 1) * self.per_node
        with self.lock:
            self.sync()
            temp = self.temperature[lo:hi].tolist()
            power = self.power[lo:hi].tolist()
            limit = self.power_limit[lo:hi].tolist()
            energy = self.energy_j[lo:hi].tolist()
            util = self.utilization[lo:hi].tolist()
            mem = self.memory_ratio[lo:hi].tolist()
            reasons = self.reasons[lo:hi].tolist()
            ecc_c, ecc_u = self.ecc_c[lo:hi].tolist(), self.ecc_u[lo:hi].tolist()
            pcie = self.pcie[lo:hi].tolist()
            lost = self.lost[lo:hi].tolist()
            xids = {i - lo: dict(self.xids[i]) for i in range(lo, hi) if i in self.xids}
        labels = self._prefix[lo:hi]
        live = [k for k in range(hi - lo) if not lost[k]]
        out: list[str] = []

        def family(name: str, help_: str, kind: str, rows: list[str]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
            out.extend(rows)

        def per_gpu(name: str, values: list[float], kind: str = "gauge") -> None:
            family(name, _HELP[name], kind, [f"{name}{{{labels[k]}}} {values[k]!r}\n" for k in live])

        family(NVML_UP[0], NVML_UP[1], "gauge", [f"{NVML_UP[0]} 1.0\n"])
        family(
            INFO[0],
            INFO[1],
            "gauge",
            [
                f'gpu_info{{{labels[k]},name="{m.name}",pci_bus_id="00000000:{0x18 + k:02X}:00.0",'
                f'driver_version="{self.driver_version}"}} 1.0\n'
                for k in range(hi - lo)
            ],
        )
        family(UP[0], UP[1], "gauge", [f"gpu_up{{{labels[k]}}} {0.0 if lost[k] else 1.0}\n" for k in range(hi - lo)])
        per_gpu("gpu_temperature_celsius", temp)
        per_gpu("gpu_memory_temperature_celsius", [t + 4.0 for t in temp])
        thresholds = (
            ("shutdown", m.hw_slowdown_celsius + 5),
            ("slowdown", m.slowdown_celsius),
            ("memory_max", 95.0),
            ("gpu_max", m.slowdown_celsius - 3),
        )
        family(
            "gpu_temperature_threshold_celsius",
            _HELP["gpu_temperature_threshold_celsius"],
            "gauge",
            [
                f'gpu_temperature_threshold_celsius{{{labels[k]},threshold="{t}"}} {float(v)!r}\n'
                for k in live
                for t, v in thresholds
            ],
        )
        if m.has_fan:
            per_gpu(
                "gpu_fan_speed_ratio",
                [round(min(1.0, max(0.3, (t - m.ambient_celsius) / 60.0)), 2) for t in temp],
            )
        per_gpu("gpu_power_watts", power)
        per_gpu("gpu_power_limit_watts", limit)
        per_gpu("gpu_power_limit_default_watts", [m.default_limit_watts] * len(limit))
        per_gpu("gpu_power_limit_min_watts", [m.min_limit_watts] * len(limit))
        per_gpu("gpu_power_limit_max_watts", [m.max_limit_watts] * len(limit))
        per_gpu("gpu_energy_joules_total", energy, "counter")
        per_gpu("gpu_utilization_ratio", [round(u, 2) for u in util])
        per_gpu("gpu_memory_utilization_ratio", [round(u * 0.6, 2) for u in util])
        per_gpu("gpu_memory_used_bytes", [float(int(m.memory_bytes * min(max(r, 0.0), 1.0))) for r in mem])
        per_gpu("gpu_memory_total_bytes", [float(m.memory_bytes)] * len(mem))
        per_gpu("gpu_ecc_errors_correctable_total", [float(v) for v in ecc_c], "counter")
        per_gpu("gpu_ecc_errors_uncorrectable_total", [float(v) for v in ecc_u], "counter")
        family(
            "gpu_throttle_active",
            _HELP["gpu_throttle_active"],
            "gauge",
            [
                f'gpu_throttle_active{{{labels[k]},reason="{name}"}} {1.0 if reasons[k] & bit else 0.0}\n'
                for k in live
                for name, bit in REASONS
            ],
        )
        per_gpu("gpu_pcie_replays_total", [float(v) for v in pcie], "counter")
        family(
            "gpu_xid_errors_total",
            _HELP["gpu_xid_errors_total"],
            "counter",
            [
                f'gpu_xid_errors_total{{{labels[k]},xid="{x}"}} {float(c)!r}\n'
                for k, per in sorted(xids.items())
                for x, c in sorted(per.items())
            ],
        )
        family(STALE[0], STALE[1], "gauge", [f"{STALE[0]}{{{labels[k]}}} 0.0\n" for k in range(hi - lo)])
        return "".join(out).encode()


# Help text as the real exporter declares it (its collectors), so /metrics reads the same.
_HELP = {metric.name: metric.help for c in COLLECTORS.values() for metric in c.metrics}


# What a Watch can read, per GPU: the raw value a rule compares (THROTTLING's is whether any of
# the reasons it means is active, so its latency counts from the throttle, not from the fault).
_THROTTLING_MASK = sum(THROTTLE_BITS[r] for r in THROTTLING_REASONS)
WATCHED: dict[str, Callable[[VirtualFleet], np.ndarray]] = {
    "temperature_celsius": lambda f: f.temperature,
    "power_watts": lambda f: f.power,
    "throttle_active": lambda f: ((f.reasons & _THROTTLING_MASK) != 0).astype(float),
}
