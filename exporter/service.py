"""The exporter's moving parts: NVML initialisation with backoff, the sampler, the XID watcher.

NVML missing or failing to initialise never stops the exporter: /metrics keeps answering with
``gpuwarden_exporter_nvml_up 0`` while a background thread retries (1 s, doubling, capped).

Once up, the same thread rescans every ``rescan_interval`` seconds: a changed GPU count (hot-plug)
is served from the next collection on, and when every GPU answers GPU_IS_LOST (a driver reload
takes them all) NVML is initialised again, which is how a real driver re-enumerates its GPUs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import pynvml

from .collectors.base import Collector
from .events import XidWatcher
from .nvml import Device, Discovery, ErrorLog, code_name, init_and_discover, shutdown_quietly
from .sampler import Sampler, Snapshot

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # below Prometheus' default 10 s scrape timeout
DEFAULT_RESCAN = 10.0  # seconds between checks for GPUs added or removed


class ExporterService:
    """Owns NVML for the process. ``loader`` (optional) installs the library before nvmlInit
    (the simulator passes one; None lets pynvml load libnvidia-ml.so.1 the usual way)."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        timeout: float = DEFAULT_TIMEOUT,
        loader: Callable[[], None] | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        event_wait_ms: int = 1000,
        rescan_interval: float = DEFAULT_RESCAN,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"collection timeout must be positive, got {timeout}")
        if rescan_interval <= 0:
            raise ValueError(f"rescan interval must be positive, got {rescan_interval}")
        self.collectors = list(collectors)
        self.timeout = timeout
        self.errors = ErrorLog()
        self.discovery: Discovery | None = None
        self.sampler: Sampler | None = None
        self.xid: XidWatcher | None = None
        self._loader = loader
        self._retry = (retry_initial, retry_max)
        self._event_wait_ms = event_wait_ms
        self.rescan_interval = rescan_interval
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="nvml-init", daemon=True)

    @property
    def nvml_up(self) -> bool:
        return self.sampler is not None

    def start(self, wait: float = 2.0) -> ExporterService:
        """Starts initialising NVML; waits up to ``wait`` seconds for the first attempt."""
        self._thread.start()
        self._first_attempt.wait(wait)
        return self

    def _supervise(self) -> None:
        delay, cap = self._retry
        while not self._stop.is_set():
            try:
                if self._loader is not None:
                    self._loader()
                disc = init_and_discover(self.errors)
            except pynvml.NVMLError as exc:
                self.errors.add("nvmlInit", exc.value)
                log.warning(
                    "NVML unavailable (%s); exporting nvml_up 0, retrying in %.0fs", code_name(exc.value), delay
                )
                self._first_attempt.set()
                self._stop.wait(delay)
                delay = min(delay * 2, cap)
                continue
            self.discovery = disc
            log.info("NVML up: driver %s, %d GPU(s)", disc.driver_version or "?", len(disc.devices))
            self.sampler = Sampler(disc.devices, self.collectors, self.errors, self.timeout)
            # The first collection reads handles and identity, each GPU under the deadline: a GPU
            # that does not answer is served as down and the rest are up from the first scrape.
            self.sampler.collect()
            self._start_xid()
            self._first_attempt.set()
            self._watch()
            return

    def _start_xid(self, counts: dict[str, dict[str, int]] | None = None) -> None:
        sampler = self.sampler
        if sampler is not None and any(c.name == "xid" for c in self.collectors):
            self.xid = XidWatcher(lambda: sampler.devices, self.errors, self._event_wait_ms, counts).start()

    def _watch(self) -> None:
        """Rescans for GPUs added or removed until stopped."""
        while not self._stop.wait(self.rescan_interval):
            try:
                self.rescan()
            except pynvml.NVMLError as exc:
                self.errors.add("nvmlDeviceGetCount", exc.value)
                log.warning("GPU rescan failed: %s", code_name(exc.value))

    def rescan(self) -> bool:
        """Checks the GPU count (re-initialising NVML first when every GPU is lost); serves the new
        set when it changed. Returns whether it did. Runs on the supervisor thread."""
        sampler, disc = self.sampler, self.discovery
        if sampler is None or disc is None:
            return False
        devices = sampler.devices
        reinit = bool(devices) and all(d.lost for d in devices)
        if reinit:
            sampler.release(devices)  # GPM samples belong to the library session that ends here
            shutdown_quietly()
            pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count == len(devices):
            if not reinit:
                return False
            # Same GPUs, new library state: handles are asked again; each keeps its lost flag, so
            # GPUs that stay lost are not counted lost again.
            for d in devices:
                d.handle = None
        else:
            log.info("GPUs changed: %d -> %d", len(devices), count)
            # Indices may now name other GPUs: every Device is new, read again under the deadline.
            fresh = [Device(index=i, handle=None) for i in range(count)]
            disc.devices = fresh
            sampler.set_devices(fresh)
        old = self.xid
        if old is not None:
            old.stop()
            self._start_xid(old.all_counts())  # handles changed; XIDs counted so far stay, by board (uuid)
        return True

    def snapshot(self) -> Snapshot | None:
        """A collection (shared with concurrent scrapes), or None while NVML is down."""
        sampler = self.sampler
        return sampler.collect() if sampler is not None else None

    def stop(self) -> None:
        self._stop.set()
        if self.xid is not None:
            self.xid.stop()  # returns from its wait within event_wait_ms
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler.release(self.sampler.devices)
            shutdown_quietly()
