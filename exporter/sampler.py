"""Collections: each GPU read on its own worker thread, scrapes sharing one collection, and a
deadline no scrape waits past.

A scrape asks for a snapshot. If a collection is already running (and inside its deadline) the
scrape joins it (single flight); otherwise it starts one, handing a request to every idle GPU
worker. It then waits until all answered or the deadline passed. A GPU whose worker is still
inside NVML (a hung call) is *stale*: the snapshot carries its last good sample, flagged, and the
next collection skips that worker until its call returns. NVML is never called on a scrape thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import pynvml

from exporter.collectors.base import Collector, FieldRead, Sample
from exporter.nvml import (UNSUPPORTED_CODES, Device, ErrorLog, GpuLost, Reader, field_buffer, field_value,
                           get_field_values, read_identity)

log = logging.getLogger("gpuwarden.exporter")

FIELD_CALL = "nvmlDeviceGetFieldValues"


def _read_fields(r: Reader, fields: Sequence[FieldRead], field_ids: list[int], s: Sample) -> None:
    dev = r.device
    if dev.field_fallback:
        active = [f for f in fields if f.key not in dev.field_fallback]
        fallback = [f for f in fields if f.key in dev.field_fallback]
        field_ids = [f.field_id for f in active]
    else:
        active, fallback = list(fields), []
    if active and FIELD_CALL not in dev.unsupported:
        if dev.field_buf is None or dev.field_buf_ids != field_ids:
            dev.field_buf, dev.field_buf_ids = field_buffer(field_ids), list(field_ids)
        values = r.call(FIELD_CALL, get_field_values, dev.handle, dev.field_buf)
        if values is None:
            if FIELD_CALL in dev.unsupported:     # no field API in this library: individual calls
                fallback = list(fields)
        else:
            for f, fv in zip(active, values):
                rc = fv.nvmlReturn
                if rc == pynvml.NVML_SUCCESS:
                    s[f.key] = field_value(fv) * f.scale
                elif rc in UNSUPPORTED_CODES or rc == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                    # An older library may not know the field id: use the individual call from now on.
                    r.errors.add(FIELD_CALL, rc)
                    dev.field_fallback.add(f.key)
                    fallback.append(f)
                else:
                    r.note_error(FIELD_CALL, rc, key=f"{FIELD_CALL}:{f.field_id}")
    elif active:
        fallback = list(fields)
    for f in fallback:
        if f.fallback is not None:
            v = f.fallback(r)
            if v is not None:
                s[f.key] = v


def read_gpu(dev: Device, collectors: Sequence[Collector], fields: Sequence[FieldRead],
             errors: ErrorLog, field_ids: list[int] | None = None) -> tuple[bool, Sample]:
    """Reads one GPU. Returns (up, sample); up is False when the GPU is lost or nothing answered."""
    if dev.handle is None:
        return False, {}
    r = Reader(dev, errors)
    sample: Sample = {}
    try:
        read_identity(r)
        if fields:
            _read_fields(r, fields, field_ids if field_ids is not None else [f.field_id for f in fields], sample)
        for c in collectors:
            c.read(r, sample)
    except GpuLost:
        return False, {}
    up = r.successes > 0 or r.failures == 0
    return up, sample


@dataclass
class GpuResult:
    up: bool
    sample: Sample
    at: float           # monotonic time the read finished


class _Round:
    """One collection; scrapes that arrive while it runs share it."""

    def __init__(self, expected: int, deadline: float) -> None:
        self.deadline = deadline
        self.started = time.monotonic()
        self.finished: float | None = None
        self.results: dict[int, GpuResult] = {}
        self._pending = expected
        self._lock = threading.Lock()
        self.done = threading.Event()
        if expected == 0:
            self.finished = self.started
            self.done.set()

    def deliver(self, index: int, result: GpuResult) -> None:
        with self._lock:
            self.results[index] = result
            self._pending -= 1
            if self._pending == 0:
                self.finished = time.monotonic()
                self.done.set()


class _Worker:
    """A thread that owns one GPU: only it calls NVML for that GPU's readings."""

    def __init__(self, dev: Device, sampler: "Sampler") -> None:
        self.dev = dev
        self.busy = False                   # set by the sampler under its lock, cleared here
        self._sampler = sampler
        self._q: queue.SimpleQueue[_Round | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"gpu{dev.index}-reader", daemon=True)
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
            try:
                up, sample = read_gpu(self.dev, s.collectors, s.fields, s.errors, s.field_ids)
            except Exception:  # noqa: BLE001 - a bug reading one GPU must not kill its worker
                log.exception("GPU %d: read failed", self.dev.index)
                up, sample = False, {}
            result = GpuResult(up, sample, time.monotonic())
            with s._lock:
                s._last[self.dev.index] = result
                self.busy = False
            rnd.deliver(self.dev.index, result)


@dataclass(frozen=True)
class GpuState:
    device: Device
    up: bool
    stale: bool
    sample: Sample


@dataclass(frozen=True)
class Snapshot:
    gpus: list[GpuState]
    duration: float     # seconds this scrape waited for its collection


class Sampler:
    """Per-GPU workers plus single-flight collections with a deadline."""

    def __init__(self, devices: Sequence[Device], collectors: Sequence[Collector], errors: ErrorLog,
                 timeout: float) -> None:
        self.collectors = list(collectors)
        self.fields = [f for c in self.collectors for f in c.fields]
        self.field_ids = [f.field_id for f in self.fields]
        self.errors = errors
        self.timeout = timeout
        self.devices = list(devices)
        self._lock = threading.Lock()
        self._last: dict[int, GpuResult] = {}
        self._round: _Round | None = None
        self._workers = [_Worker(d, self) for d in self.devices]

    def collect(self) -> Snapshot:
        t0 = time.monotonic()
        with self._lock:
            rnd = self._round
            if rnd is None or rnd.done.is_set() or t0 >= rnd.deadline:
                idle = [w for w in self._workers if not w.busy]
                rnd = _Round(len(idle), t0 + self.timeout)
                for w in idle:
                    w.busy = True
                    w.submit(rnd)
                self._round = rnd
        rnd.done.wait(max(0.0, rnd.deadline - time.monotonic()))
        with self._lock:
            last = dict(self._last)
        fresh = dict(rnd.results)
        states = []
        for d in self.devices:
            res = fresh.get(d.index)
            if res is not None:
                states.append(GpuState(d, res.up, False, res.sample))
            else:
                # Its worker is still inside NVML: serve the last good values, flagged stale.
                prev = last.get(d.index)
                states.append(GpuState(d, False, True, prev.sample if prev else {}))
        return Snapshot(states, time.monotonic() - t0)

    def calls(self) -> int:
        return sum(d.calls for d in self.devices)

    def stop(self) -> None:
        for w in self._workers:
            w.stop()
