"""Collections: each GPU read on its own worker thread, scrapes sharing one collection, and a
deadline no scrape waits past.

A scrape asks for a snapshot. If a collection is already running (and inside its deadline) the
scrape joins it (single flight); otherwise it starts one, handing a request to every idle GPU
worker. It then waits until all answered or the deadline passed. A GPU whose worker is still
inside NVML (a hung call) is *stale*: the snapshot carries its last good sample, flagged, and the
next collection skips that worker until its call returns. NVML is never called on a scrape thread.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pynvml

from .collectors.base import Collector, FieldRead, Sample
from .nvml import (
    UNSUPPORTED_CODES,
    Device,
    ErrorLog,
    FieldBatch,
    GpuLost,
    Reader,
    field_number,
    read_handle,
    read_identity,
)

log = logging.getLogger(__name__)

FIELD_CALL = "nvmlDeviceGetFieldValues"
_FIELD_GIVES_UP = UNSUPPORTED_CODES | {pynvml.NVML_ERROR_INVALID_ARGUMENT}  # an older library's unknown field id


@dataclass
class FieldPlan:
    """One GPU's field reads: what its field-values call asks for, what individual calls cover,
    and the fixed figures served from ``Device.static``. Kept on the Device between scrapes."""

    batch: FieldBatch | None  # None: nothing (left) to ask the field API
    asked: list[FieldRead]  # in the batch's slot order
    fallback: list[FieldRead]  # read by their individual calls
    static_keys: list[str]


def _plan(dev: Device, fields: Sequence[FieldRead]) -> FieldPlan:
    whole = FIELD_CALL in dev.unsupported  # no field API in this library: individual calls
    asked: list[FieldRead] = []
    fallback: list[FieldRead] = []
    for f in fields:
        if f.static and f.key in dev.static:
            continue  # answered once: never asked again
        (fallback if whole or f.key in dev.field_fallback else asked).append(f)
    batch = FieldBatch([f.field_id for f in asked]) if asked else None
    return FieldPlan(batch, asked, fallback, [f.key for f in fields if f.static])


def _read_fields(r: Reader, fields: Sequence[FieldRead], s: Sample) -> None:
    dev = r.device
    plan: FieldPlan = dev.field_plan or _plan(dev, fields)
    dev.field_plan = plan
    static = dev.static
    fallback = plan.fallback
    if plan.batch is not None:
        slots = r.call(FIELD_CALL, plan.batch, dev.handle)
        if slots is None:
            if FIELD_CALL in dev.unsupported:
                dev.field_plan, fallback = None, plan.asked + fallback
        else:
            for f, (value_type, rc, raw) in zip(plan.asked, slots, strict=True):
                if rc == pynvml.NVML_SUCCESS:
                    if f.static:
                        static[f.key] = field_number(value_type, raw) * f.scale
                        dev.field_plan = None
                    else:
                        s[f.key] = field_number(value_type, raw) * f.scale
                elif rc in _FIELD_GIVES_UP:
                    # An older library may not know the field id: use the individual call from now on.
                    r.errors.add(FIELD_CALL, rc)
                    dev.field_fallback.add(f.key)
                    dev.field_plan, fallback = None, fallback + [f]
                else:
                    r.note_error(FIELD_CALL, rc, key=f"{FIELD_CALL}:{f.field_id}")
    for f in fallback:
        if f.fallback is not None and not (f.static and f.key in static):
            v = f.fallback(r)
            if v is None:
                continue
            if f.static:
                static[f.key] = v
                dev.field_plan = None
            else:
                s[f.fallback_key or f.key] = v
    for key in plan.static_keys:
        v = static.get(key)
        if v is not None:
            s[key] = v


def read_gpu(
    dev: Device, collectors: Sequence[Collector], fields: Sequence[FieldRead], errors: ErrorLog
) -> tuple[bool, Sample]:
    """Reads one GPU. Returns (up, sample); up is False when the GPU is lost or nothing answered."""
    r = Reader(dev, errors)
    sample: Sample = {}
    try:
        if not read_handle(r):
            return False, {}
        read_identity(r)
        if fields:
            _read_fields(r, fields, sample)
        for c in collectors:
            c.read(r, sample)
    except GpuLost:
        return False, {}
    up = r.successes > 0 or r.failures == 0
    if up and dev.lost:
        dev.lost = False  # back (a driver reload): a later loss counts again
        log.info("GPU %d: answering again", dev.index)
    return up, sample


@dataclass
class GpuResult:
    up: bool
    sample: Sample
    at: float  # monotonic time the read finished


class _Round:
    """One collection; scrapes that arrive while it runs share it.

    GPUs wait in ``pending``; reader threads take them one at a time (under the sampler's lock,
    so no GPU is ever read by two threads at once).
    """

    def __init__(self, indices: list[int], deadline: float) -> None:
        self.deadline = deadline
        self.started = time.monotonic()
        self.pending: collections.deque[int] = collections.deque(indices)
        self.results: dict[int, GpuResult] = {}
        self.progress = 0  # GPUs finished; a scrape watches it for stalls
        self.readers = 0  # reader threads working on this round
        self._remaining = len(indices)
        self._lock = threading.Lock()
        self.done = threading.Event()
        if not indices:
            self.done.set()

    def deliver(self, index: int, result: GpuResult) -> None:
        with self._lock:
            self.results[index] = result
            self.progress += 1
            self._remaining -= 1
            if self._remaining == 0:
                self.done.set()


class _Reader:
    """A thread that reads GPUs for collections; the only kind of thread that calls NVML."""

    def __init__(self, sampler: Sampler, n: int) -> None:
        self._sampler = sampler
        self._q: queue.SimpleQueue[_Round | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"nvml-reader-{n}", daemon=True)
        self._thread.start()

    def submit(self, rnd: _Round) -> None:
        self._q.put(rnd)

    def stop(self) -> None:
        self._q.put(None)

    def _run(self) -> None:
        s = self._sampler
        while True:
            rnd = self._q.get()
            if rnd is None:
                return
            while (dev := s._take(rnd)) is not None:
                # Alone when the read began: a helper woken because this read is slow (a stall)
                # must not stop it from teaching the estimate how slow GPUs are.
                alone = rnd.readers == 1
                t0 = time.monotonic()
                try:
                    up, sample = read_gpu(dev, s.collectors, s.fields, s.errors)
                except Exception:
                    log.exception("GPU %d: read failed", dev.index)
                    up, sample = False, {}
                now = time.monotonic()
                result = GpuResult(up, sample, now)
                took = now - t0
                with s._lock:
                    s._last[dev.index] = result
                    s._reading.discard(dev.index)
                    # Moving average of one GPU's read time. Readers running side by side slow
                    # each other (the GIL), so their times may only pull the estimate down;
                    # otherwise wide collections would measure themselves slow and stay wide.
                    if alone or took < s._gpu_seconds:
                        s._gpu_seconds += 0.2 * (took - s._gpu_seconds)
                rnd.deliver(dev.index, result)
            with s._lock:
                s._idle.append(self)


@dataclass(frozen=True)
class GpuState:
    device: Device
    up: bool
    stale: bool
    sample: Sample


@dataclass(frozen=True)
class Snapshot:
    gpus: list[GpuState]
    duration: float  # seconds this scrape waited for its collection


class Sampler:
    """Reader threads plus single-flight collections with a deadline.

    How many readers a collection wakes adapts to how long a GPU takes to read: with NVML
    answering in microseconds one reader goes through every GPU (waking eight threads would cost
    more than the reads); with slow calls (real drivers, ctypes releases the GIL) GPUs are read in
    parallel. A reader that makes no progress for ``stall`` seconds (a hung call) gets a
    helper for the GPUs still waiting, so one wedged GPU never holds back the others.
    """

    TARGET_SECONDS = 0.002  # a reader should get through a collection's share in about this

    def __init__(
        self, devices: Sequence[Device], collectors: Sequence[Collector], errors: ErrorLog, timeout: float
    ) -> None:
        self.collectors = list(collectors)
        self.fields = [f for c in self.collectors for f in c.fields]
        self.errors = errors
        self.timeout = timeout
        self.stall = min(0.05, timeout / 4)
        self.devices = list(devices)
        self._by_index = {d.index: d for d in self.devices}
        self._lock = threading.Lock()
        self._last: dict[int, GpuResult] = {}
        self._round: _Round | None = None
        self._reading: set[int] = set()  # GPUs inside a reader right now (maybe hung)
        self._idle: list[_Reader] = []
        self._readers: list[_Reader] = []
        self._gpu_seconds = 0.0  # learnt from single-reader collections
        self._retired_calls = 0  # calls made for GPUs since removed: the calls counter never goes back

    def set_devices(self, devices: Sequence[Device]) -> None:
        """Serves ``devices`` from the next collection on (GPUs added or removed while running).

        A GPU whose reader is still inside a hung call keeps that reader: its index is not read
        again until the call returns, whichever Device now holds the index.
        """
        kept = {id(d) for d in devices}
        self.release([d for d in self.devices if id(d) not in kept])
        with self._lock:
            self._retired_calls += sum(d.calls for d in self.devices if id(d) not in kept)
            old = self._by_index
            self.devices = list(devices)
            self._by_index = {d.index: d for d in self.devices}
            # A last good sample belongs to the Device that read it, not to its index.
            self._last = {i: r for i, r in self._last.items() if old.get(i) is self._by_index.get(i)}

    def release(self, devices: Sequence[Device]) -> None:
        """Frees what the collectors allocated in the library for ``devices`` (GPM samples).

        A GPU being read is skipped (a hung call may still use them; they leak with it), and no
        reader can start on a GPU while its state is freed.
        """
        releases = [c.release for c in self.collectors if c.release is not None]
        if not releases:
            return
        with self._lock:
            idle = [d for d in devices if d.index not in self._reading]
            busy = {d.index for d in idle}
            self._reading |= busy  # a collection meanwhile serves these GPUs' last values
        try:
            for d in idle:
                for release in releases:
                    release(d)
        finally:
            with self._lock:
                self._reading -= busy

    def _take(self, rnd: _Round) -> Device | None:
        """The next GPU of ``rnd`` no other reader is inside, or None when the round is over."""
        with self._lock:
            if time.monotonic() >= rnd.deadline:
                return None  # back from a hang: a newer round owns these GPUs
            while rnd.pending:
                index = rnd.pending.popleft()
                dev = self._by_index.get(index)
                if dev is None:  # removed (hot-unplug) since the round began
                    rnd.deliver(index, GpuResult(False, {}, time.monotonic()))
                elif index not in self._reading:
                    self._reading.add(index)
                    return dev
            return None

    def _wake(self, rnd: _Round) -> None:
        """Hands ``rnd`` to an idle reader, starting one if none is idle (call with the lock)."""
        if self._idle:
            reader = self._idle.pop()
        else:
            reader = _Reader(self, len(self._readers))
            self._readers.append(reader)
        rnd.readers += 1
        reader.submit(rnd)

    def collect(self) -> Snapshot:
        t0 = time.monotonic()
        with self._lock:
            rnd = self._round
            if rnd is None or rnd.done.is_set() or t0 >= rnd.deadline:
                indices = [d.index for d in self.devices if d.index not in self._reading]
                rnd = _Round(indices, t0 + self.timeout)
                wanted = math.ceil(len(indices) * self._gpu_seconds / self.TARGET_SECONDS)
                for _ in range(max(1, min(len(indices), wanted)) if indices else 0):
                    self._wake(rnd)
                self._round = rnd
        while True:
            remaining = rnd.deadline - time.monotonic()
            if remaining <= 0:
                break
            seen = rnd.progress
            if rnd.done.wait(min(remaining, self.stall)):
                break
            if rnd.progress == seen and rnd.pending:
                with self._lock:
                    self._wake(rnd)  # nothing finished for a while: a call is stuck
        with self._lock:
            last = dict(self._last)
        fresh = dict(rnd.results)
        states = []
        for d in self.devices:
            res = fresh.get(d.index)
            if res is not None:
                states.append(GpuState(d, res.up, False, res.sample))
            else:
                # Still inside NVML (or queued behind a GPU that is): serve its last good values, flagged.
                prev = last.get(d.index)
                states.append(GpuState(d, False, True, prev.sample if prev else {}))
        return Snapshot(states, time.monotonic() - t0)

    def calls(self) -> int:
        return self._retired_calls + sum(d.calls for d in self.devices)

    def stop(self) -> None:
        for r in self._readers:
            r.stop()
