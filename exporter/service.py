"""The exporter's moving parts: NVML initialisation with backoff, the sampler, the XID watcher.

NVML missing or failing to initialise never stops the exporter: /metrics keeps answering with
``gpuwarden_exporter_nvml_up 0`` while a background thread retries (1 s, doubling, capped).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import pynvml

from .collectors.base import Collector
from .events import XidWatcher
from .nvml import Discovery, ErrorLog, code_name, init_and_discover, shutdown_quietly
from .sampler import Sampler, Snapshot

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # below Prometheus' default 10 s scrape timeout


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
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"collection timeout must be positive, got {timeout}")
        self.collectors = list(collectors)
        self.timeout = timeout
        self.errors = ErrorLog()
        self.discovery: Discovery | None = None
        self.sampler: Sampler | None = None
        self.xid: XidWatcher | None = None
        self._loader = loader
        self._retry = (retry_initial, retry_max)
        self._event_wait_ms = event_wait_ms
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
            if any(c.name == "xid" for c in self.collectors):
                self.xid = XidWatcher(disc.devices, self.errors, self._event_wait_ms).start()
            self.sampler = Sampler(disc.devices, self.collectors, self.errors, self.timeout)
            self._first_attempt.set()
            return

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
            shutdown_quietly()
