"""The simulated fleet: GPUs, time, scenario timeline, NVML event sets.

All state changes go through one lock. Time is pulled, not pushed: every NVML call and every
control request calls ``sync()``, which integrates the physics up to ``clock.now()`` and applies
the scenario events that fell due on the way (at their own instant, not at the sync's).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .clock import Clock, RealClock
from .faults import apply_fault, check_fault, clear_faults
from .models import DEFAULT_MODEL, MODELS
from .physics import SimGpu

SYNC_QUANTUM_SECONDS = 0.1  # physics moves at most 10 times a second under real time
WOBBLE_PERIOD_SECONDS = 300.0
_UUID_NS = uuidlib.UUID("5d1f8a52-3c1e-4f0e-9a53-7a0f0c4e9b21")
NVML_EVENT_XID = 0x8  # nvmlEventTypeXidCriticalError


class UnknownGpu(LookupError):
    """A GPU reference (index or UUID) that names no simulated GPU."""


@dataclass
class TimedAction:
    at: float  # absolute clock time
    seq: int  # keeps file order among equal times
    gpu: int | str  # index, UUID or "all"
    action: str  # load | power_limit | fault | clear_faults
    args: dict[str, Any]

    def __lt__(self, other: TimedAction) -> bool:
        return (self.at, self.seq) < (other.at, other.seq)


class EventSet:
    def __init__(self) -> None:
        self.masks: dict[int, int] = {}  # gpu index -> registered event types
        self.queue: collections.deque[tuple[int, int, int]] = collections.deque()  # (gpu, type, data)


class Fleet:
    """``count`` simulated GPUs of one model, moving with ``clock``."""

    def __init__(
        self, count: int, clock: Clock | None = None, model: str = DEFAULT_MODEL, driver_version: str = "550.54.15"
    ) -> None:
        if count < 1:
            raise ValueError(f"a simulated fleet needs at least one GPU, got {count}")
        if model not in MODELS:
            raise ValueError(f"unknown GPU model {model!r}; known: {', '.join(sorted(MODELS))}")
        self.clock = clock or RealClock()
        self.driver_version = driver_version
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._model_key = model
        self._serials = itertools.count(count)  # a GPU plugged in later is a new board
        self.gpus: list[SimGpu] = [self._new_gpu(i, i) for i in range(count)]
        self._by_uuid = {g.uuid: g for g in self.gpus}
        self._t0 = self._t = self.clock.now()
        self._timeline: list[TimedAction] = []
        self._seq = itertools.count()
        self._event_sets: dict[int, EventSet] = {}
        self._set_ids = itertools.count(1)
        self._hang_release = {g.index: threading.Event() for g in self.gpus}
        self.clock.on_advance(self._wake)

    def _new_gpu(self, index: int, board: int) -> SimGpu:
        m = MODELS[self._model_key]
        g = SimGpu(
            index=index,
            model=m,
            uuid=f"GPU-{uuidlib.uuid5(_UUID_NS, f'{self._model_key}-{board}')}",
            pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
            serial=f"1650{board:09d}",
            power_limit_watts=m.default_limit_watts,
            temperature=m.ambient_celsius + 10,
        )
        self._baseline(g, 0.0)
        g.settle()
        g.temperature = m.ambient_celsius + m.thermal_resistance * g.power_watts  # start warmed up
        g.settle()
        return g

    def resize(self, count: int) -> None:
        """Hot-plug: GPUs are added (new boards) or removed at the end of the list, as a driver
        enumerates them; NVML's device count and handles follow at once."""
        if count < 1:
            raise ValueError(f"a simulated fleet needs at least one GPU, got {count}")
        with self.cond:
            self.sync(force=True)
            while len(self.gpus) > count:
                g = self.gpus.pop()
                self._by_uuid.pop(g.uuid, None)
                self._hang_release[g.index].set()  # a call blocked on a removed GPU returns
            while len(self.gpus) < count:
                g = self._new_gpu(len(self.gpus), next(self._serials))
                self._hang_release[g.index] = threading.Event()
                self.gpus.append(g)
                self._by_uuid[g.uuid] = g
            self.cond.notify_all()

    # --- time --------------------------------------------------------------------------------
    def _baseline(self, g: SimGpu, elapsed: float) -> None:
        """A healthy working load that drifts slowly, unless something pinned the load."""
        if g.load_pinned:
            return
        phase = 2 * math.pi * elapsed / WOBBLE_PERIOD_SECONDS + g.index
        g.utilization = 0.25 + 0.05 * (g.index % 4) + 0.05 * math.sin(phase)
        g.memory_ratio = 0.30 + 0.05 * (g.index % 3)

    def _wake(self) -> None:
        with self.cond:
            self.sync(force=True)
            self.cond.notify_all()

    def sync(self, force: bool = False) -> None:
        """Brings the fleet up to ``clock.now()``, applying due scenario actions in order."""
        now = self.clock.now()
        if not force and now - self._t < SYNC_QUANTUM_SECONDS:
            timeline = self._timeline  # read without the lock: the common case must stay cheap
            if not timeline or timeline[0].at > now:
                return
        with self.lock:
            while self._timeline and self._timeline[0].at <= now:
                act = self._timeline.pop(0)
                self._advance_to(act.at)
                self._apply(act)
            self._advance_to(now)

    def _advance_to(self, t: float) -> None:
        dt = t - self._t
        if dt <= 0:
            return
        # Step in slices so the wobbling baseline load is sampled as time passes.
        while dt > 1e-9:
            h = min(dt, 5.0)
            self._t += h
            dt -= h
            for g in self.gpus:
                self._baseline(g, self._t - self._t0)
                g.step(h)

    # --- lookups -----------------------------------------------------------------------------
    def gpu(self, ref: int | str) -> SimGpu:
        """The GPU named by index (int or digits) or UUID."""
        if isinstance(ref, str) and ref.isdigit():
            ref = int(ref)
        if isinstance(ref, int):
            if 0 <= ref < len(self.gpus):
                return self.gpus[ref]
        elif ref in self._by_uuid:
            return self._by_uuid[ref]
        raise UnknownGpu(f"no simulated GPU {ref!r}: use an index 0-{len(self.gpus) - 1} or a UUID")

    def _targets(self, ref: int | str) -> Iterable[SimGpu]:
        return list(self.gpus) if ref == "all" else [self.gpu(ref)]

    # --- control -----------------------------------------------------------------------------
    # Public methods bring time up to now first; the _do_* ones change state at the fleet's
    # current instant (scenario actions call them from inside sync()).
    def set_load(self, ref: int | str, utilization: float | None = None, memory_ratio: float | None = None) -> None:
        for name, v in (("utilization", utilization), ("memory_ratio", memory_ratio)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0):
                raise ValueError(f"{name}: must be a number in [0, 1], got {v!r}")
        with self.lock:
            self.sync(force=True)
            self._do_load(ref, utilization, memory_ratio)

    def set_power_limit(self, ref: int | str, watts: float) -> None:
        with self.lock:
            self.sync(force=True)
            self._do_power_limit(ref, watts)

    def inject(self, ref: int | str, fault: dict[str, Any]) -> None:
        check_fault(fault)
        with self.cond:
            self.sync(force=True)
            self._do_fault(ref, fault)

    def clear(self, ref: int | str) -> None:
        with self.lock:
            self.sync(force=True)
            self._do_clear(ref)

    def _do_load(self, ref: int | str, utilization: float | None, memory_ratio: float | None) -> None:
        for g in self._targets(ref):
            g.load_pinned = True
            if utilization is not None:
                g.utilization = float(utilization)
            if memory_ratio is not None:
                g.memory_ratio = float(memory_ratio)
            g.settle()

    def _do_power_limit(self, ref: int | str, watts: float) -> None:
        for g in self._targets(ref):
            g.set_power_limit(watts)

    def _do_fault(self, ref: int | str, fault: dict[str, Any]) -> None:
        for g in self._targets(ref):
            if fault["kind"] == "hang":
                self._hang_release[g.index].clear()
            apply_fault(g, fault, self._emit_xid)
        self.cond.notify_all()

    def _do_clear(self, ref: int | str) -> None:
        for g in self._targets(ref):
            clear_faults(g)
            self._hang_release[g.index].set()  # wakes calls blocked by a hang fault

    def schedule(self, actions: Iterable[tuple[float, int | str, str, dict[str, Any]]]) -> None:
        """Queues (seconds from now, gpu, action, args) to happen as time passes."""
        with self.lock:
            self.sync(force=True)
            base = self.clock.now()
            for offset, gpu, action, args in actions:
                self.gpu(0) if gpu == "all" else self.gpu(gpu)  # fail now on a bad reference
                bisect.insort(self._timeline, TimedAction(base + offset, next(self._seq), gpu, action, args))
        self.sync(force=True)

    def _apply(self, act: TimedAction) -> None:
        if act.action == "load":
            self._do_load(act.gpu, act.args.get("utilization"), act.args.get("memory_ratio"))
        elif act.action == "power_limit":
            self._do_power_limit(act.gpu, act.args["watts"])
        elif act.action == "fault":
            self._do_fault(act.gpu, act.args)
        elif act.action == "clear_faults":
            self._do_clear(act.gpu)
        elif act.action == "release_load":
            for g in self._targets(act.gpu):
                g.load_pinned = False
        else:  # scenario validation keeps this unreachable
            raise ValueError(f"unknown scenario action {act.action!r}")

    # --- hangs -------------------------------------------------------------------------------
    def hang_for(self, g: SimGpu, call: str) -> threading.Event | None:
        """The event a hung ``call`` must wait on, or None when the call does not hang."""
        if g.hang_calls and ("*" in g.hang_calls or call in g.hang_calls):
            return self._hang_release[g.index]
        return None

    # --- NVML events -------------------------------------------------------------------------
    def _emit_xid(self, g: SimGpu, xid: int) -> None:
        for es in self._event_sets.values():
            if es.masks.get(g.index, 0) & NVML_EVENT_XID:
                es.queue.append((g.index, NVML_EVENT_XID, xid))
        self.cond.notify_all()

    def event_set_create(self) -> int:
        with self.lock:
            sid = next(self._set_ids)
            self._event_sets[sid] = EventSet()
            return sid

    def event_set_register(self, sid: int, gpu_index: int, mask: int) -> bool:
        with self.lock:
            es = self._event_sets.get(sid)
            if es is None:
                return False
            es.masks[gpu_index] = es.masks.get(gpu_index, 0) | mask
            return True

    def event_set_free(self, sid: int) -> bool:
        with self.cond:
            found = self._event_sets.pop(sid, None) is not None
            self.cond.notify_all()
            return found

    def event_set_wait(self, sid: int, timeout_s: float, real_deadline: float) -> tuple[int, int, int] | None:
        """Blocks until an event for set ``sid`` arrives or ``timeout_s`` passes on the real clock.

        ``real_deadline`` is a ``time.monotonic()`` instant; scenario actions due before it are
        applied on the way (the wait sleeps until the next one is due rather than polling).
        """
        with self.cond:
            while True:
                self.sync()
                es = self._event_sets.get(sid)
                if es is None:
                    return None
                if es.queue:
                    return es.queue.popleft()
                remaining = real_deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._timeline and isinstance(self.clock, RealClock):
                    remaining = min(remaining, max(0.001, self._timeline[0].at - self.clock.now()))
                self.cond.wait(remaining)

    def state(self) -> list[dict[str, Any]]:
        with self.lock:
            self.sync(force=True)
            return [g.state() for g in self.gpus]
