"""XID errors from NVML's event API.

One thread creates an event set, registers every GPU that supports XID events, and blocks in
``nvmlEventSetWait_v2`` (with a timeout, so it can stop). Each event bumps a count by (board, XID),
the board named by its UUID: after a rescan an index may name another board, whose count starts
at zero; the xid collector exports the counts. A GPU that cannot register is logged and skipped.

A GPU is registered once its reader has its handle and identity: one that did not answer at
start (a hung call) is registered between waits once it does, so it never holds back the others.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Sequence

import pynvml

from .nvml import Device, ErrorLog, code_name

log = logging.getLogger(__name__)

WAIT_MS = 1000


class XidWatcher:
    """``devices`` returns the GPUs now served (it changes when GPUs are added or removed)."""

    def __init__(
        self,
        devices: Callable[[], Sequence[Device]],
        errors: ErrorLog,
        wait_ms: int = WAIT_MS,
        counts: dict[str, dict[str, int]] | None = None,
    ) -> None:
        self._wait_ms = wait_ms
        self._source = devices
        self._devices: dict[int | None, Device] = {}  # handle value -> registered GPU
        self._tried: set[int] = set()  # ids of Devices asked to register (once each)
        self._errors = errors
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = counts if counts is not None else {}  # by uuid
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

    def counts(self, uuid: str) -> dict[str, float]:
        """{xid: count} for the board ``uuid``."""
        with self._lock:
            return {xid: float(n) for xid, n in self._counts.get(uuid, {}).items()}

    def all_counts(self) -> dict[str, dict[str, int]]:
        """Every count so far (a watcher replacing this one after a rescan carries them on)."""
        with self._lock:
            return {uuid: dict(c) for uuid, c in self._counts.items()}

    def _register_ready(self, event_set: object) -> None:
        """Registers the GPUs that have answered (handle and UUID read) and were not tried yet."""
        for dev in self._source():
            if id(dev) in self._tried or dev.handle is None or not dev.uuid:
                continue
            self._tried.add(id(dev))
            try:
                pynvml.nvmlDeviceRegisterEvents(dev.handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
            except pynvml.NVMLError as exc:
                self._errors.add("nvmlDeviceRegisterEvents", exc.value)
                log.warning("GPU %d: no XID events (%s)", dev.index, code_name(exc.value))
                continue
            self._devices[dev.handle_value] = dev
            self.registered.append(dev.index)

    def _run(self) -> None:
        try:
            event_set: object = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            self._errors.add("nvmlEventSetCreate", exc.value)
            log.warning("XID events unavailable: nvmlEventSetCreate: %s", code_name(exc.value))
            return
        self._register_ready(event_set)
        self.running = True
        try:
            while not self._stop.is_set():
                self._register_ready(event_set)
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
                dev = self._devices.get(ctypes.cast(data.device, ctypes.c_void_p).value)
                if dev is None:
                    continue
                xid = str(int(data.eventData))
                log.warning("GPU %d: XID %s", dev.index, xid, extra={"gpu": dev.index, "uuid": dev.uuid, "xid": xid})
                with self._lock:
                    per_gpu = self._counts.setdefault(dev.uuid, {})
                    per_gpu[xid] = per_gpu.get(xid, 0) + 1
        finally:
            self.running = False
            try:
                pynvml.nvmlEventSetFree(event_set)
            except pynvml.NVMLError:
                pass
