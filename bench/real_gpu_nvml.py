"""The NVML side of the real-GPU check: the cost of each call the exporter makes, XID event
registration, and a power-limit set and restore.

The call list is not written down here: the exporter's own service runs (discovery, then
collections) while every call it makes is recorded, through the one gateway its collectors use
(``Reader.call``) and, for the calls made outside it (initialisation, discovery, the XID
watcher), by wrapping pynvml's functions. New collectors' calls show up by themselves. Each
recorded read-only call is then replayed with the same arguments and timed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pynvml

from gpuwarden.exporter import collectors
from gpuwarden.exporter.nvml import Reader, code_name
from gpuwarden.exporter.service import ExporterService

# Calls that only read, safe to repeat; anything else (init, set, event sets) is timed once, as made.
REPLAYABLE = re.compile(r"^nvml(Device|System)Get")
BLOCKING = {"nvmlEventSetWait", "nvmlEventSetWait_v2"}  # waits for events by design: not a cost


@dataclass
class Call:
    name: str  # NVML entry point as the exporter names it
    key: str  # the exporter's key for it (same entry, other arguments: nvmlDeviceGetClockInfo:sm_clock)
    gpu: int | None
    phase: str  # start (discovery and first collection) | scrape (later collections) | xid watcher
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    seconds: float
    error: str | None


class Recorder:
    """Records every NVML call made while ``active()``: by the collectors through Reader.call
    (with the GPU and the exporter's key) and directly through pynvml (everything else)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.phase = "start"
        self._lock = threading.Lock()
        self._local = threading.local()

    def _add(
        self,
        name: str,
        key: str,
        gpu: int | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        dt: float,
        err: str | None,
    ) -> None:
        phase = "xid watcher" if threading.current_thread().name.startswith("xid") else self.phase
        with self._lock:
            self.calls.append(Call(name, key, gpu, phase, fn, args, dt, err))

    def _timed(self, fn: Callable[..., Any], box: dict[str, Any]) -> Callable[..., Any]:
        local = self._local

        def run(*args: Any, **kw: Any) -> Any:
            local.depth = getattr(local, "depth", 0) + 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            except pynvml.NVMLError as exc:
                box["error"] = code_name(exc.value)
                raise
            finally:
                box["seconds"] = time.perf_counter() - t0
                local.depth -= 1

        return run

    def _wrap_module_function(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        local = self._local

        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            if getattr(local, "depth", 0):  # inside a recorded call: pynvml calling itself
                return fn(*args, **kw)
            box: dict[str, Any] = {}
            try:
                return self._timed(fn, box)(*args, **kw)
            finally:
                self._add(name, name, None, fn, args, box.get("seconds", 0.0), box.get("error"))

        return wrapper

    @contextlib.contextmanager
    def active(self) -> Iterator[Recorder]:
        original_call = Reader.call
        recorder = self

        def call(reader: Reader, name: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
            key = kw.get("key") or name
            if key in reader.device.unsupported:
                return original_call(reader, name, fn, *args, **kw)  # not asked: no call made
            real = getattr(fn, "__wrapped__", fn)
            box: dict[str, Any] = {}
            try:
                return original_call(reader, name, recorder._timed(real, box), *args, **kw)
            finally:
                if "seconds" in box:
                    recorder._add(name, key, reader.device.index, real, args, box["seconds"], box.get("error"))

        saved = {
            n: f
            for n in dir(pynvml)
            if n.startswith("nvml") and callable(f := getattr(pynvml, n)) and hasattr(f, "__code__")
        }
        Reader.call = call  # type: ignore[method-assign,assignment]  # restored below; this process only
        for n, f in saved.items():
            setattr(pynvml, n, self._wrap_module_function(n, f))
        try:
            yield self
        finally:
            Reader.call = original_call  # type: ignore[method-assign]
            for n, f in saved.items():
                setattr(pynvml, n, f)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def call_costs(
    loader: Callable[[], None] | None, reps: int = 200, budget_s: float = 0.5, scrapes: int = 2
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs the exporter's service under the recorder (start, then ``scrapes`` collections) and
    times each call. Returns one row per call key and a summary per GPU per scrape."""
    rec = Recorder()
    with rec.active():
        service = ExporterService(collectors.enabled(), loader=loader, event_wait_ms=100)
        service.start(wait=30.0)
        if not service.nvml_up:
            service.stop()
            raise RuntimeError("NVML did not come up in the exporter's service")
        service.snapshot()  # first collection: identity, limits, thresholds (read once per GPU)
        rec.phase = "scrape"
        for _ in range(scrapes):
            service.snapshot()
    try:
        ngpus = len(service.sampler.devices) if service.sampler else 0
        rows = _time_calls(rec.calls, reps, budget_s)
    finally:
        service.stop()
        if service.xid is not None:
            service.xid.stop(join=2.0)
    for r in rows:  # calls made in the measured collections -> calls per GPU per scrape
        r["per_gpu_per_scrape"] = r["per_gpu_per_scrape"] / max(1, scrapes * ngpus)
    per_scrape = [r for r in rows if r["when"] == "per scrape"]
    summary = {
        "gpus": ngpus,
        "scrapes": scrapes,
        "calls_per_gpu_per_scrape": sum(r["per_gpu_per_scrape"] for r in per_scrape),
        "nvml_us_per_gpu_per_scrape": sum(r["median_us"] * r["per_gpu_per_scrape"] for r in per_scrape),
    }
    return rows, summary


def _time_calls(calls: list[Call], reps: int, budget_s: float) -> list[dict[str, Any]]:
    by_key: dict[str, list[Call]] = {}
    for c in calls:
        by_key.setdefault(c.key, []).append(c)
    rows: list[dict[str, Any]] = []
    for key, made in by_key.items():
        phases = {c.phase for c in made}
        when = "per scrape" if "scrape" in phases else ("xid watcher" if phases == {"xid watcher"} else "once")
        name = made[0].name
        errors = sorted({c.error for c in made if c.error})
        observed = [c.seconds for c in made]
        times: list[float] = []
        replay_errors: set[str] = set()
        if REPLAYABLE.match(name) and name not in BLOCKING:
            latest = {c.gpu: c for c in made}  # one per GPU: its own handle and arguments
            each = max(1, reps // len(latest))
            for c in latest.values():
                deadline = time.perf_counter() + budget_s / len(latest)
                for i in range(each + 2):
                    t0 = time.perf_counter()
                    try:
                        c.fn(*c.args)
                    except pynvml.NVMLError as exc:
                        replay_errors.add(code_name(exc.value))
                    dt = time.perf_counter() - t0
                    if i >= 2:  # two warm-ups
                        times.append(dt)
                    if time.perf_counter() > deadline and len(times) >= 5:
                        break
        source = times or observed
        rows.append(
            {
                "call": key,
                "entry": name,
                "when": when,
                "per_gpu_per_scrape": sum(1 for c in made if c.phase == "scrape"),
                "timed": "replayed" if times else ("made (blocks by design)" if name in BLOCKING else "as made"),
                "n": len(source),
                "median_us": statistics.median(source) * 1e6,
                "p99_us": _pct(source, 0.99) * 1e6,
                "result": ", ".join(sorted(set(errors) | replay_errors)) or "ok",
            }
        )
    order = {"per scrape": 0, "once": 1, "xid watcher": 2}
    rows.sort(key=lambda r: (order[r["when"]], r["call"]))
    return rows


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def system_info() -> dict[str, Any]:
    """Driver, NVML and CUDA driver versions and every GPU's identity (NVML initialised)."""

    def ask(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            return f"({code_name(exc.value)})"

    cuda = ask(pynvml.nvmlSystemGetCudaDriverVersion)
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        pci = ask(pynvml.nvmlDeviceGetPciInfo, h)
        gpus.append(
            {
                "index": i,
                "name": _text(ask(pynvml.nvmlDeviceGetName, h)),
                "uuid": _text(ask(pynvml.nvmlDeviceGetUUID, h)),
                "pci_bus_id": _text(pci.busId) if not isinstance(pci, str) else pci,
            }
        )
    return {
        "driver": _text(ask(pynvml.nvmlSystemGetDriverVersion)),
        "nvml": _text(ask(pynvml.nvmlSystemGetNVMLVersion)),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else cuda,
        "gpus": gpus,
    }


def xid_registration(inject: Callable[[int], None] | None = None, wait_ms: int = 200) -> dict[str, Any]:
    """An event set, every GPU registered for XidCriticalError, one short wait.

    ``inject(gpu)`` (simulation only) raises an XID on that GPU after registration, so the wait
    has something to deliver; on a real GPU the wait normally times out (no XID: healthy)."""
    out: dict[str, Any] = {"gpus": [], "wait_ms": wait_ms}
    t0 = time.perf_counter()
    try:
        es = pynvml.nvmlEventSetCreate()
    except pynvml.NVMLError as exc:
        out["event_set"] = f"nvmlEventSetCreate: {code_name(exc.value)}"
        return out
    out["event_set"] = "created"
    out["create_us"] = (time.perf_counter() - t0) * 1e6
    try:
        handles = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            entry: dict[str, Any] = {"gpu": i}
            try:
                entry["supported"] = bool(
                    pynvml.nvmlDeviceGetSupportedEventTypes(h) & pynvml.nvmlEventTypeXidCriticalError
                )
            except pynvml.NVMLError as exc:
                entry["supported"] = code_name(exc.value)
            t0 = time.perf_counter()
            try:
                pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
                entry["registered"] = "registered"
                handles[_handle_value(h)] = i
            except pynvml.NVMLError as exc:
                entry["registered"] = code_name(exc.value)
            entry["register_us"] = (time.perf_counter() - t0) * 1e6
            out["gpus"].append(entry)
        if inject is not None and handles:
            gpu = min(handles.values())
            inject(gpu)
            out["injected"] = {"gpu": gpu, "note": "simulated XID raised after registration"}
        t0 = time.perf_counter()
        try:
            data = pynvml.nvmlEventSetWait_v2(es, wait_ms)
            out["wait"] = {
                "event": "xid",
                "gpu": handles.get(_handle_value(data.device)),
                "xid": int(data.eventData),
            }
        except pynvml.NVMLError as exc:
            timeout = exc.value == pynvml.NVML_ERROR_TIMEOUT
            out["wait"] = {"event": f"none within {wait_ms} ms" if timeout else code_name(exc.value)}
        out["wait"]["waited_ms"] = (time.perf_counter() - t0) * 1e3
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlEventSetFree(es)
    return out


def _handle_value(h: Any) -> int | None:
    import ctypes

    return ctypes.cast(h, ctypes.c_void_p).value


def power_set_restore(step_watts: float = 10.0) -> dict[str, Any]:
    """As root: each GPU's limit lowered by ``step_watts`` (raised where already at the minimum)
    through the agent's own NVML actuator, read back, and restored in a ``finally``; the restore
    is read back too."""
    if os.geteuid() != 0:
        return {"status": "skipped: not root"}
    act, make_ref, failures, via = _power_backend()
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        ref = make_ref(_text(pynvml.nvmlDeviceGetUUID(h)), str(i))
        entry: dict[str, Any] = {"gpu": i}
        gpus.append(entry)
        try:
            limits = act.read(ref)
        except failures as exc:
            entry["status"] = f"cannot read the limit: {exc}"
            continue
        original = limits.current_watts
        entry.update(original_w=original, min_w=limits.min_watts, max_w=limits.max_watts)
        if original - step_watts >= limits.min_watts:
            target = original - step_watts
        elif original + step_watts <= limits.max_watts:
            target = original + step_watts
        else:
            entry["status"] = "skipped: min and max leave no room"
            continue
        entry["target_w"] = target
        try:
            t0 = time.perf_counter()
            act.set_limit(ref, target)
            entry["set_ms"] = (time.perf_counter() - t0) * 1e3
            entry["readback_w"] = act.read(ref).current_watts
            entry["enforced_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0  # NVML: milliwatts
            entry["set_ok"] = abs(entry["readback_w"] - target) < 0.5
        except failures as exc:
            entry["set_ok"] = False
            entry["error"] = str(exc)
        finally:
            # Never leave the GPU capped: restore whatever happened above (a failed set changed nothing).
            try:
                act.set_limit(ref, original)
            except failures as exc:
                entry["restore_error"] = str(exc)
            try:
                entry["restored_w"] = act.read(ref).current_watts
            except failures as exc:
                entry["restored_w"] = None
                entry["restore_error"] = str(exc)
            entry["restored_ok"] = entry["restored_w"] is not None and abs(entry["restored_w"] - original) < 0.5
            if not entry["restored_ok"]:
                print(
                    f"WARNING: GPU {i} power limit NOT restored (now {entry['restored_w']} W, was {original} W): "
                    f"run nvidia-smi -i {i} -pl {original:g}",
                    file=sys.stderr,
                    flush=True,
                )
        if "status" not in entry:
            entry["status"] = "set and restored" if entry.get("set_ok") and entry["restored_ok"] else "FAILED"
    return {"status": "run as root", "via": via, "step_w": step_watts, "gpus": gpus}


def _power_backend() -> tuple[Any, Callable[[str, str], Any], tuple[type[BaseException], ...], str]:
    """(actuator, GPU reference maker, the errors it raises, what it is): the agent's own NVML
    actuator, or the same calls made directly where the agent's package does not import."""
    try:
        from gpuwarden.scheduler_agent.remediation.actuators import GpuRef, NvmlActuator
        from gpuwarden.scheduler_agent.remediation.errors import ActuatorError
    except ImportError as exc:  # a bare GPU host without the agent's dependencies (jsonschema)
        return (
            _DirectPower(),
            _Ref,
            (pynvml.NVMLError,),
            f"pynvml directly (the agent's actuator did not import: {exc})",
        )
    return NvmlActuator(), GpuRef, (ActuatorError, pynvml.NVMLError), "the agent's NvmlActuator"


@dataclass(frozen=True)
class _Ref:
    uuid: str
    gpu: str = ""


@dataclass(frozen=True)
class _Limits:
    current_watts: float
    min_watts: float
    max_watts: float


class _DirectPower:
    """NvmlActuator's read and set, for a host where the agent's package does not import."""

    def read(self, ref: _Ref) -> _Limits:
        h = pynvml.nvmlDeviceGetHandleByUUID(ref.uuid)
        lo, hi = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)
        return _Limits(pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0, lo / 1000.0, hi / 1000.0)  # mW

    def set_limit(self, ref: _Ref, watts: float) -> None:
        pynvml.nvmlDeviceSetPowerManagementLimit(pynvml.nvmlDeviceGetHandleByUUID(ref.uuid), int(round(watts * 1000)))
