"""XID errors from NVML's event API.

One thread creates an event set, registers every GPU that supports XID events, and blocks in
``nvmlEventSetWait_v2`` (with a timeout, so it can stop). Each event bumps a count by (GPU, XID);
the xid collector exports the counts. A GPU that cannot register is logged and skipped.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence

import pynvml

from .nvml import Device, ErrorLog, code_name

log = logging.getLogger(__name__)

WAIT_MS = 1000


class XidWatcher:
    def __init__(self, devices: Sequence[Device], errors: ErrorLog, wait_ms: int = WAIT_MS) -> None:
        self._wait_ms = wait_ms
        self._devices = {d.handle_value: d.index for d in devices if d.handle is not None}
        self._handles = [(d.index, d.handle) for d in devices if d.handle is not None]
        self._errors = errors
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xid-events", daemon=True)
        self.registered: list[int] = []
        self.running = False

    def start(self) -> XidWatcher:
        self._thread.start()
        return self

    def stop(self, join: float = 0.0) -> None:
        self._stop.set()
        if join and self._thread.is_alive():
            self._thread.join(join)

    def counts(self, gpu: int) -> dict[str, float]:
        with self._lock:
            return {xid: float(n) for xid, n in self._counts.get(gpu, {}).items()}

    def _register(self) -> object | None:
        try:
            event_set: object = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            self._errors.add("nvmlEventSetCreate", exc.value)
            log.warning("XID events unavailable: nvmlEventSetCreate: %s", code_name(exc.value))
            return None
        for index, handle in self._handles:
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
                self.registered.append(index)
            except pynvml.NVMLError as exc:
                self._errors.add("nvmlDeviceRegisterEvents", exc.value)
                log.warning("GPU %d: no XID events (%s)", index, code_name(exc.value))
        return event_set

    def _run(self) -> None:
        event_set = self._register()
        if event_set is None:
            return
        self.running = True
        try:
            while not self._stop.is_set():
                try:
                    data = pynvml.nvmlEventSetWait_v2(event_set, self._wait_ms)
                except pynvml.NVMLError as exc:
                    if exc.value == pynvml.NVML_ERROR_TIMEOUT:
                        continue
                    self._errors.add("nvmlEventSetWait_v2", exc.value)
                    if exc.value in (
                        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                        pynvml.NVML_ERROR_NOT_SUPPORTED,
                        pynvml.NVML_ERROR_UNINITIALIZED,
                    ):
                        log.warning("XID events stopped: nvmlEventSetWait_v2: %s", code_name(exc.value))
                        return
                    self._stop.wait(1.0)  # e.g. a lost GPU answering at once: do not spin
                    continue
                if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                    continue
                index = self._devices.get(ctypes.cast(data.device, ctypes.c_void_p).value)
                if index is None:
                    continue
                xid = str(int(data.eventData))
                log.warning("GPU %d: XID %s", index, xid)
                with self._lock:
                    per_gpu = self._counts.setdefault(index, {})
                    per_gpu[xid] = per_gpu.get(xid, 0) + 1
        finally:
            self.running = False
            try:
                pynvml.nvmlEventSetFree(event_set)
            except pynvml.NVMLError:
                pass
