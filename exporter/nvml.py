"""The NVML boundary: error codes, per-(GPU, call) memory of what a GPU cannot answer, and the
session that initialises NVML with backoff and discovers GPUs.

Everything here runs off the scrape thread: a call into libnvidia-ml may block for seconds (or
forever on a wedged GPU), so only worker threads ever call it.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml

from .exposition import LabelSet

log = logging.getLogger(__name__)

# Answers that will not change until the driver changes: ask once, then never again.
UNSUPPORTED_CODES = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    }
)

_CODE_NAMES = {
    getattr(pynvml, n): n[len("NVML_ERROR_") :].lower()
    for n in dir(pynvml)
    if n.startswith("NVML_ERROR_") and isinstance(getattr(pynvml, n), int)
}


def code_name(code: int) -> str:
    """``15`` -> ``gpu_is_lost``: the label value used in gpuwarden_exporter_nvml_errors_total."""
    return _CODE_NAMES.get(code, str(code))


class FieldValue(ctypes.Structure):
    """nvmlFieldValue_t with pynvml's exact layout, as a plain ctypes struct.

    pynvml's own struct class routes every attribute access through Python-level
    __getattribute__/__setattr__ hooks; with ten fields per GPU per scrape that was a third of
    the read cost. Same memory layout, so the C library cannot tell the difference.
    """

    _fields_ = pynvml.c_nvmlFieldValue_t._fields_


# valueType, nvmlReturn and the value union's 8 bytes of one nvmlFieldValue_t, little-endian (every
# platform NVML ships for is): one C-level unpack per slot instead of a ctypes attribute per member.
_SLOT = struct.Struct("<24xIIQ")
assert _SLOT.size == ctypes.sizeof(FieldValue)


def field_number(value_type: int, raw: int) -> float:
    """The number in a field slot's value union (``raw``: its 8 bytes as an unsigned integer),
    read as the member its valueType names (nvmlValueType_t)."""
    if value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG or value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return raw
    if value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
        return raw & 0xFFFF_FFFF
    if value_type == pynvml.NVML_VALUE_TYPE_DOUBLE:
        number: float = struct.unpack("<d", raw.to_bytes(8, "little"))[0]
        return number
    if value_type == pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return raw - (1 << 64) if raw >> 63 else raw
    if value_type == pynvml.NVML_VALUE_TYPE_SIGNED_INT:
        raw &= 0xFFFF_FFFF
        return raw - (1 << 32) if raw >> 31 else raw
    return raw & 0xFFFF  # NVML_VALUE_TYPE_UNSIGNED_SHORT


class FieldBatch:
    """A reusable nvmlFieldValue_t array for one GPU's field ids.

    Before each call the array is reset from a template in one copy (field ids set, every
    nvmlReturn UNKNOWN, so a library that skips a slot does not pass it as success); after it,
    the slots are read back with one unpack each. Touching a dozen ctypes members per slot was
    most of our own cost of a field-values call.
    """

    def __init__(self, field_ids: Sequence[int]) -> None:
        self.buf = (FieldValue * len(field_ids))()
        for slot, fid in zip(self.buf, field_ids, strict=True):
            slot.fieldId = fid
            slot.nvmlReturn = pynvml.NVML_ERROR_UNKNOWN
        self._template = bytes(self.buf)
        self._count = ctypes.c_int32(len(field_ids))

    def __call__(self, handle: Any) -> Iterator[tuple[int, int, int]]:
        """nvmlDeviceGetFieldValues (the C entry point, called like pynvml calls it); yields each
        slot's (valueType, nvmlReturn, raw value) in field-id order."""
        fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
        ctypes.memmove(self.buf, self._template, len(self._template))
        pynvml._nvmlCheckReturn(fn(handle, self._count, ctypes.byref(self.buf)))
        return self.results()

    def results(self) -> Iterator[tuple[int, int, int]]:
        """Each slot's (valueType, nvmlReturn, raw value) as the array holds them now."""
        return _SLOT.iter_unpack(self.buf)


class GpuLost(Exception):
    """The GPU answered NVML_ERROR_GPU_IS_LOST: stop reading it for this collection."""


class ErrorLog:
    """Counts NVML errors by (call, code) for gpuwarden_exporter_nvml_errors_total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, call: str, code: int) -> None:
        key = (call, code_name(code))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


@dataclass
class Device:
    """One GPU as the exporter knows it. Only its own worker thread mutates it."""

    index: int
    handle: Any
    uuid: str = ""
    name: str = ""
    pci_bus_id: str = ""
    unsupported: set[str] = field(default_factory=set)  # call keys answered NOT_SUPPORTED & co
    field_fallback: set[str] = field(default_factory=set)  # sample keys the field API cannot give
    static: dict[str, Any] = field(default_factory=dict)  # fixed figures (limits, thresholds): read once
    # Which fields this GPU is asked for in its field-values call, and their reusable buffer
    # (sampler.FieldPlan); rebuilt when a field turns out unsupported or a fixed figure answers.
    field_plan: Any = field(default=None, repr=False)
    calls: int = 0  # NVML calls made for this GPU
    lost: bool = False  # answered GPU_IS_LOST last time; the loss is counted once, not per scrape
    _labels: dict[str, str] | None = field(default=None, repr=False)
    _labels_with: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict, repr=False)

    def labels(self) -> dict[str, str]:
        """{"gpu", "uuid"}, built once per identity and shared by every sample (never mutate it)."""
        lab = self._labels
        if lab is None or lab["uuid"] != self.uuid:
            lab = self._labels = LabelSet({"gpu": str(self.index), "uuid": self.uuid})
            self._labels_with.clear()
        return lab

    def labels_with(self, name: str, value: str) -> dict[str, str]:
        """labels() plus one more label, cached the same way."""
        base = self.labels()
        lab = self._labels_with.get((name, value))
        if lab is None:
            lab = self._labels_with[(name, value)] = LabelSet({**base, name: value})
        return lab

    @property
    def handle_value(self) -> int | None:
        import ctypes

        return ctypes.cast(self.handle, ctypes.c_void_p).value


class Reader:
    """One collection of one GPU: makes NVML calls, remembers what is unsupported.

    ``call`` returns None when the value cannot be had (unsupported, or an error that is counted
    and logged) and raises GpuLost when the GPU is gone, ending the read.
    """

    def __init__(self, device: Device, errors: ErrorLog) -> None:
        self.device = device
        self.errors = errors
        self.failures = 0
        self.successes = 0

    def call(self, name: str, fn: Callable[..., Any], *args: Any, key: str | None = None) -> Any:
        key = key or name
        dev = self.device
        if key in dev.unsupported:
            return None
        dev.calls += 1
        try:
            value = fn(*args)
        except pynvml.NVMLError as exc:
            self.note_error(name, exc.value, key)
            return None
        self.successes += 1
        return value

    def note_error(self, name: str, code: int, key: str | None = None) -> None:
        """Records an NVML error code for call ``name``; raises GpuLost for a lost GPU.

        A lost GPU answers GPU_IS_LOST on every collection until it comes back: that is one
        event, counted (and logged) when the GPU goes, not once per scrape while it stays gone.
        """
        if code in UNSUPPORTED_CODES:
            self.errors.add(name, code)
            self.device.unsupported.add(key or name)
            log.debug("GPU %d: %s answered %s; not asking again", self.device.index, key or name, code_name(code))
            return
        if code == pynvml.NVML_ERROR_GPU_IS_LOST:
            if not self.device.lost:
                self.device.lost = True
                self.errors.add(name, code)
                log.warning("GPU %d: lost (%s answered gpu_is_lost)", self.device.index, name)
            raise GpuLost()
        self.errors.add(name, code)
        self.failures += 1
        log.warning("GPU %d: %s failed: %s", self.device.index, name, code_name(code))


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read_handle(reader: Reader) -> bool:
    """The GPU's handle, asked on its reader thread (on a wedged GPU even this call can block).
    False when NVML gives none; retried each collection."""
    dev = reader.device
    if dev.handle is None:
        handle = reader.call("nvmlDeviceGetHandleByIndex", pynvml.nvmlDeviceGetHandleByIndex, dev.index)
        if handle is None:
            return False
        dev.handle = handle
    return True


def read_identity(reader: Reader) -> None:
    """Name, UUID and PCI bus id, read once (retried each collection until they answer)."""
    dev = reader.device
    h = dev.handle
    if not dev.uuid:
        uuid = reader.call("nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, h)
        dev.uuid = _text(uuid) if uuid is not None else ""
    if not dev.name:
        name = reader.call("nvmlDeviceGetName", pynvml.nvmlDeviceGetName, h)
        dev.name = _text(name) if name is not None else ""
    if not dev.pci_bus_id:
        pci = reader.call("nvmlDeviceGetPciInfo", pynvml.nvmlDeviceGetPciInfo, h)
        dev.pci_bus_id = _text(pci.busId) if pci is not None else ""


@dataclass
class Discovery:
    driver_version: str
    devices: list[Device]


def init_and_discover(errors: ErrorLog) -> Discovery:
    """nvmlInit, the driver version and a (not yet read) Device per GPU. Raises NVMLError when
    NVML is unusable.

    Only library-wide calls happen here. Handles and identity are read by each GPU's reader
    under the collection deadline, like every other reading: a GPU whose calls block at start
    would otherwise hold back discovery, and with it every other GPU.
    """
    pynvml.nvmlInit()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError as exc:
        errors.add("nvmlSystemGetDriverVersion", exc.value)
        driver = ""
    count = pynvml.nvmlDeviceGetCount()
    return Discovery(driver_version=driver, devices=[Device(index=i, handle=None) for i in range(count)])


def shutdown_quietly() -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pass
