"""The simulated NVML entry points, one Python function per C function.

Each is declared with its C argument types (``@_c(...)``); ``library.SimLibrary`` wraps them in
``ctypes.CFUNCTYPE`` callables. Output arguments arrive as addresses and get C values written
into them, as the real library would. Each takes the library's state first (``LibraryState``:
what it reads and writes of a ``SimLibrary``), so this module never imports ``library``.
"""

from __future__ import annotations

import ctypes
import itertools
import struct
import threading
import time
from collections.abc import Callable
from ctypes import c_char_p, c_int, c_uint, c_ulonglong, c_void_p, memmove
from typing import Any, Protocol

import pynvml

from . import physics
from .fleet import Fleet
from .physics import SimGpu


class LibraryState(Protocol):
    """What an entry point uses of the library it is called on (``library.SimLibrary``)."""

    fleet: Fleet
    initialized: int


SUCCESS = 0
ERROR_UNINITIALIZED = 1
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_NOT_FOUND = 6
ERROR_INSUFFICIENT_SIZE = 7
ERROR_TIMEOUT = 10
ERROR_GPU_IS_LOST = 15
ERROR_ARGUMENT_VERSION_MISMATCH = 25
ERROR_UNKNOWN = 999

HANDLE_BASE = 0x6770_0000  # handle of GPU i is HANDLE_BASE + 16 * i (any non-null value works)
EVENT_SET_BASE = 0x6771_0000
SUPPORTED_EVENTS = 0x8  # nvmlEventTypeXidCriticalError

# name -> (argument types, python function, is it a device call (first arg a handle)?)
FUNCTIONS: dict[str, tuple[tuple[Any, ...], Callable[..., int], bool]] = {}


def _c(
    *argtypes: Any, device: bool = True, names: tuple[str, ...] = ()
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Declares a C entry point (named like the function, plus aliases in ``names``)."""

    def deco(fn: Callable[..., int]) -> Callable[..., int]:
        for n in (fn.__name__,) + names:
            FUNCTIONS[n] = (argtypes, fn, device)
        return fn

    return deco


def _put(ctype: Any, addr: int | None, value: Any) -> None:
    if addr:
        ctype.from_address(addr).value = value


def _put_str(addr: int | None, size: int, text: str) -> int:
    data = text.encode() + b"\0"
    if not addr or len(data) > size:
        return ERROR_INSUFFICIENT_SIZE
    memmove(addr, data, len(data))
    return SUCCESS


# ---- library-wide calls ---------------------------------------------------------------------
@_c(c_uint, device=False)
def nvmlInitWithFlags(lib: LibraryState, flags: int) -> int:
    lib.initialized += 1
    return SUCCESS


@_c(device=False, names=("nvmlInit",))
def nvmlInit_v2(lib: LibraryState) -> int:
    lib.initialized += 1
    return SUCCESS


@_c(device=False)
def nvmlShutdown(lib: LibraryState) -> int:
    if not lib.initialized:
        return ERROR_UNINITIALIZED
    lib.initialized -= 1
    return SUCCESS


@_c(c_void_p, c_uint, device=False)
def nvmlSystemGetDriverVersion(lib: LibraryState, buf: int, size: int) -> int:
    return _put_str(buf, size, lib.fleet.driver_version)


@_c(c_void_p, c_uint, device=False)
def nvmlSystemGetNVMLVersion(lib: LibraryState, buf: int, size: int) -> int:
    return _put_str(buf, size, "12." + lib.fleet.driver_version)


@_c(c_void_p, device=False, names=("nvmlSystemGetCudaDriverVersion_v2",))
def nvmlSystemGetCudaDriverVersion(lib: LibraryState, out: int) -> int:
    _put(c_int, out, 12040)
    return SUCCESS


@_c(c_void_p, device=False, names=("nvmlDeviceGetCount",))
def nvmlDeviceGetCount_v2(lib: LibraryState, out: int) -> int:
    _put(c_uint, out, len(lib.fleet.gpus))
    return SUCCESS


@_c(c_uint, c_void_p, device=False, names=("nvmlDeviceGetHandleByIndex",))
def nvmlDeviceGetHandleByIndex_v2(lib: LibraryState, index: int, out: int) -> int:
    gpus = lib.fleet.gpus
    if index >= len(gpus):
        return ERROR_INVALID_ARGUMENT
    release = lib.fleet.hang_for(gpus[index], "nvmlDeviceGetHandleByIndex_v2")
    if release is not None:
        release.wait(gpus[index].hang_seconds)  # a wedged GPU can block even this call
    _put(c_void_p, out, HANDLE_BASE + 16 * index)
    return SUCCESS


@_c(c_char_p, c_void_p, device=False)
def nvmlDeviceGetHandleByUUID(lib: LibraryState, uuid: bytes, out: int) -> int:
    for g in lib.fleet.gpus:
        if g.uuid.encode() == uuid:
            _put(c_void_p, out, HANDLE_BASE + 16 * g.index)
            return SUCCESS
    return ERROR_NOT_FOUND


# ---- identity -------------------------------------------------------------------------------
@_c(c_void_p, c_void_p)
def nvmlDeviceGetIndex(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, g.index)
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetMinorNumber(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, g.index)
    return SUCCESS


@_c(c_void_p, c_void_p, c_uint)
def nvmlDeviceGetName(lib: LibraryState, g: SimGpu, buf: int, size: int) -> int:
    return _put_str(buf, size, g.model.name)


@_c(c_void_p, c_void_p, c_uint)
def nvmlDeviceGetUUID(lib: LibraryState, g: SimGpu, buf: int, size: int) -> int:
    return _put_str(buf, size, g.uuid)


@_c(c_void_p, c_void_p, c_uint)
def nvmlDeviceGetSerial(lib: LibraryState, g: SimGpu, buf: int, size: int) -> int:
    return _put_str(buf, size, g.serial)


@_c(c_void_p, c_void_p, names=("nvmlDeviceGetPciInfo_v2",))
def nvmlDeviceGetPciInfo_v3(lib: LibraryState, g: SimGpu, out: int) -> int:
    info = pynvml.nvmlPciInfo_t.from_address(out)
    bus = g.pci_bus_id.encode()
    info.busId = bus
    info.busIdLegacy = bus[-12:]  # the legacy 16-byte field holds the short form
    info.domain, info.bus, info.device = 0, int(g.pci_bus_id[9:11], 16), 0
    info.pciDeviceId = 0x233010DE
    info.pciSubSystemId = 0x16C110DE
    return SUCCESS


# ---- sensors --------------------------------------------------------------------------------
@_c(c_void_p, c_uint, c_void_p)
def nvmlDeviceGetTemperature(lib: LibraryState, g: SimGpu, sensor: int, out: int) -> int:
    if sensor != 0:
        return ERROR_INVALID_ARGUMENT
    _put(c_uint, out, int(g.temperature))
    return SUCCESS


@_c(c_void_p, c_uint, c_void_p)
def nvmlDeviceGetTemperatureThreshold(lib: LibraryState, g: SimGpu, kind: int, out: int) -> int:
    values = {0: g.model.hw_slowdown_celsius + 5, 1: g.model.slowdown_celsius, 2: 95.0, 3: g.model.slowdown_celsius - 3}
    if kind not in values:
        return ERROR_NOT_SUPPORTED
    _put(c_uint, out, int(values[kind]))
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetPowerUsage(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, int(g.power_watts * 1000))  # milliwatts
    return SUCCESS


@_c(c_void_p, c_void_p, names=("nvmlDeviceGetPowerManagementLimit",))
def nvmlDeviceGetEnforcedPowerLimit(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, int(g.power_limit_watts * 1000))
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetPowerManagementDefaultLimit(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, int(g.model.default_limit_watts * 1000))
    return SUCCESS


@_c(c_void_p, c_void_p, c_void_p)
def nvmlDeviceGetPowerManagementLimitConstraints(lib: LibraryState, g: SimGpu, lo: int, hi: int) -> int:
    _put(c_uint, lo, int(g.model.min_limit_watts * 1000))
    _put(c_uint, hi, int(g.model.max_limit_watts * 1000))
    return SUCCESS


@_c(c_void_p, c_uint)
def nvmlDeviceSetPowerManagementLimit(lib: LibraryState, g: SimGpu, milliwatts: int) -> int:
    try:
        with lib.fleet.lock:
            lib.fleet.sync(force=True)
            g.set_power_limit(milliwatts / 1000.0)
    except ValueError:
        return ERROR_INVALID_ARGUMENT
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetTotalEnergyConsumption(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_ulonglong, out, int(g.energy_mj))
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetUtilizationRates(lib: LibraryState, g: SimGpu, out: int) -> int:
    u = pynvml.c_nvmlUtilization_t.from_address(out)
    u.gpu = int(round(g.utilization * 100))
    u.memory = int(round(g.utilization * 60))  # memory controller busy share tracks the load
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetMemoryInfo(lib: LibraryState, g: SimGpu, out: int) -> int:
    m = pynvml.c_nvmlMemory_t.from_address(out)
    m.total, m.used = g.memory_total, g.memory_used
    m.free = m.total - m.used
    return SUCCESS


class _Memory_v2(ctypes.Structure):
    _fields_ = pynvml.c_nvmlMemory_v2_t._fields_  # without pynvml's per-attribute hooks


@_c(c_void_p, c_void_p)
def nvmlDeviceGetMemoryInfo_v2(lib: LibraryState, g: SimGpu, out: int) -> int:
    m = _Memory_v2.from_address(out)
    if m.version != pynvml.nvmlMemory_v2:
        return ERROR_ARGUMENT_VERSION_MISMATCH
    m.total, m.used, m.reserved = g.memory_total, g.memory_used, g.memory_reserved
    m.free = g.memory_free  # v2: what is left after what is used and what the driver reserves
    return SUCCESS


@_c(c_void_p, c_void_p, names=("nvmlDeviceGetCurrentClocksThrottleReasons",))
def nvmlDeviceGetCurrentClocksEventReasons(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_ulonglong, out, g.reasons)
    return SUCCESS


@_c(c_void_p, c_void_p, names=("nvmlDeviceGetSupportedClocksThrottleReasons",))
def nvmlDeviceGetSupportedClocksEventReasons(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_ulonglong, out, 0x1FF)
    return SUCCESS


@_c(c_void_p, c_uint, c_void_p)
def nvmlDeviceGetClockInfo(lib: LibraryState, g: SimGpu, kind: int, out: int) -> int:
    if kind in (0, 1):  # graphics, SM
        _put(c_uint, out, g.sm_clock_mhz)
    elif kind == 2:  # memory
        _put(c_uint, out, g.model.mem_mhz)
    elif kind == 3:  # video
        _put(c_uint, out, int(g.sm_clock_mhz * 0.9))
    else:
        return ERROR_INVALID_ARGUMENT
    return SUCCESS


@_c(c_void_p, c_uint, c_void_p)
def nvmlDeviceGetMaxClockInfo(lib: LibraryState, g: SimGpu, kind: int, out: int) -> int:
    _put(c_uint, out, g.model.mem_mhz if kind == 2 else g.model.max_sm_mhz)
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetFanSpeed(lib: LibraryState, g: SimGpu, out: int) -> int:
    if not g.model.has_fan:
        return ERROR_NOT_SUPPORTED
    _put(c_uint, out, g.fan_percent)
    return SUCCESS


@_c(c_void_p, c_uint, c_void_p)
def nvmlDeviceGetFanSpeed_v2(lib: LibraryState, g: SimGpu, fan: int, out: int) -> int:
    if not g.model.has_fan:
        return ERROR_NOT_SUPPORTED
    if fan != 0:
        return ERROR_INVALID_ARGUMENT
    _put(c_uint, out, g.fan_percent)
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetNumFans(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, 1 if g.model.has_fan else 0)
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetPerformanceState(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, 8 if g.reasons & 0x1 else 0)
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetPersistenceMode(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, 1)
    return SUCCESS


@_c(
    c_void_p,
    c_void_p,
    c_void_p,
    names=(
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
    ),
)
def nvmlDeviceGetComputeRunningProcesses_v3(lib: LibraryState, g: SimGpu, count: int, infos: int) -> int:
    _put(c_uint, count, 0)  # the simulator runs no processes of its own
    return SUCCESS


def _video(g: SimGpu, share: float, util: int, period_us: int) -> int:
    if not g.model.has_video:
        return ERROR_NOT_SUPPORTED
    _put(c_uint, util, int(round(share * 100)))  # percent
    _put(c_uint, period_us, 167000)
    return SUCCESS


@_c(c_void_p, c_void_p, c_void_p)
def nvmlDeviceGetEncoderUtilization(lib: LibraryState, g: SimGpu, util: int, period_us: int) -> int:
    return _video(g, g.encoder_utilization, util, period_us)


@_c(c_void_p, c_void_p, c_void_p)
def nvmlDeviceGetDecoderUtilization(lib: LibraryState, g: SimGpu, util: int, period_us: int) -> int:
    return _video(g, g.decoder_utilization, util, period_us)


@_c(c_void_p, c_uint, c_void_p)
def nvmlDeviceGetPcieThroughput(lib: LibraryState, g: SimGpu, counter: int, out: int) -> int:
    if counter not in (0, 1):  # TX, RX
        return ERROR_INVALID_ARGUMENT
    rate = physics.PCIE_TX_BYTES_PER_S if counter == 0 else physics.PCIE_RX_BYTES_PER_S
    _put(c_uint, out, int(g.utilization * rate / 1024))  # KB/s over the last 20 ms; tracks the load
    return SUCCESS


# ---- ECC and memory repair ------------------------------------------------------------------
@_c(c_void_p, c_void_p, c_void_p)
def nvmlDeviceGetEccMode(lib: LibraryState, g: SimGpu, current: int, pending: int) -> int:
    _put(c_uint, current, 1)
    _put(c_uint, pending, 1)
    return SUCCESS


@_c(c_void_p, c_uint, c_uint, c_void_p)
def nvmlDeviceGetTotalEccErrors(lib: LibraryState, g: SimGpu, error_type: int, counter: int, out: int) -> int:
    if error_type not in (0, 1) or counter not in (0, 1):
        return ERROR_INVALID_ARGUMENT
    _put(c_ulonglong, out, g.ecc_correctable if error_type == 0 else g.ecc_uncorrectable)
    return SUCCESS


@_c(c_void_p, c_uint, c_void_p, c_void_p)
def nvmlDeviceGetRetiredPages(lib: LibraryState, g: SimGpu, cause: int, count: int, addrs: int | None) -> int:
    if g.model.memory_repair != "retirement":
        return ERROR_NOT_SUPPORTED
    n = g.retired_sbe if cause == 0 else g.retired_dbe
    room = ctypes.c_uint.from_address(count).value
    if addrs:
        pages = (c_ulonglong * room).from_address(addrs)
        for i in range(min(room, n)):
            pages[i] = 0x1000 * (i + 1)
    _put(c_uint, count, n)
    return SUCCESS if (addrs is None or room >= n) else ERROR_INSUFFICIENT_SIZE


@_c(c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)
def nvmlDeviceGetRemappedRows(lib: LibraryState, g: SimGpu, corr: int, unc: int, pending: int, failure: int) -> int:
    if g.model.memory_repair != "remapping":
        return ERROR_NOT_SUPPORTED
    _put(c_uint, corr, g.remapped_correctable)
    _put(c_uint, unc, g.remapped_uncorrectable)
    _put(c_uint, pending, 1 if g.remapped_uncorrectable else 0)
    _put(c_uint, failure, 1 if g.remap_failure else 0)
    return SUCCESS


@_c(c_void_p, c_void_p)
def nvmlDeviceGetPcieReplayCounter(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_uint, out, g.pcie_replays)
    return SUCCESS


# ---- field values ---------------------------------------------------------------------------
_UI, _ULL = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG


def _remapping(g: SimGpu) -> bool:
    return g.model.memory_repair == "remapping"


def _retirement(g: SimGpu) -> bool:
    return g.model.memory_repair != "remapping"


def _always(g: SimGpu) -> bool:
    return True


# field id -> (does the board have it?, NVML value type, value in NVML's unit (nvml.h)). A dict,
# not a chain of ifs: the simulator's cost per field lands in the benchmark, a C library's does not.
_FIELDS: dict[int, tuple[Callable[[SimGpu], bool], int, Callable[[SimGpu], int]]] = {
    1: (_always, _UI, lambda g: 1),  # ECC mode current
    2: (_always, _UI, lambda g: 1),  # ECC mode pending
    3: (_always, _ULL, lambda g: g.ecc_correctable),
    4: (_always, _ULL, lambda g: g.ecc_uncorrectable),
    29: (_retirement, _ULL, lambda g: g.retired_sbe),
    30: (_retirement, _ULL, lambda g: g.retired_dbe),
    142: (_remapping, _UI, lambda g: g.remapped_correctable),
    143: (_remapping, _UI, lambda g: g.remapped_uncorrectable),
    144: (_remapping, _UI, lambda g: 1 if g.remapped_uncorrectable else 0),  # pending
    145: (_remapping, _UI, lambda g: 1 if g.remap_failure else 0),
    197: (lambda g: g.model.pcie_byte_counters, _ULL, lambda g: int(g.pcie_tx_bytes)),
    198: (lambda g: g.model.pcie_byte_counters, _ULL, lambda g: int(g.pcie_rx_bytes)),
    138: (lambda g: g.model.nvlink_links > 0, _ULL, lambda g: int(g.nvlink_tx_bytes / 1024)),  # KiB, all links
    139: (lambda g: g.model.nvlink_links > 0, _ULL, lambda g: int(g.nvlink_rx_bytes / 1024)),
    82: (_always, _UI, lambda g: int(g.memory_temperature)),  # °C
    83: (_always, _ULL, lambda g: int(g.energy_mj)),  # mJ since the driver loaded
    191: (_always, _ULL, lambda g: int(g.energy_mj)),  # NVML_FI_DEV_ENERGY: the same counter
    185: (_always, _UI, lambda g: int(g.power_watts * 1000)),  # mW (the model has no 1 s average)
    186: (_always, _UI, lambda g: int(g.power_watts * 1000)),  # mW, instantaneous
    187: (_always, _UI, lambda g: int(g.model.min_limit_watts * 1000)),  # mW
    188: (_always, _UI, lambda g: int(g.model.max_limit_watts * 1000)),
    189: (_always, _UI, lambda g: int(g.model.default_limit_watts * 1000)),
    190: (_always, _UI, lambda g: int(g.power_limit_watts * 1000)),  # enforced
    94: (_always, _UI, lambda g: g.pcie_replays),
}


# nvmlFieldValue_t, 40 bytes: fieldId, scopeId (uint each), timestamp, latencyUsec (int64 each),
# valueType, nvmlReturn (uint each), value (an 8-byte union). Read and written with struct, one
# call per slot (a ctypes attribute per member was most of the simulator's cost of this call).
_SLOT_SIZE = ctypes.sizeof(pynvml.c_nvmlFieldValue_t)
_FIELD_ID = struct.Struct("<I")
_ANSWER = struct.Struct("<qqIIQ")  # from offset 8: timestamp, latencyUsec, valueType, nvmlReturn, value
assert _SLOT_SIZE == 40 and pynvml.c_nvmlFieldValue_t.timestamp.offset == 8


@_c(c_void_p, c_int, c_void_p)
def nvmlDeviceGetFieldValues(lib: LibraryState, g: SimGpu, count: int, values: int) -> int:
    mem = (ctypes.c_char * (_SLOT_SIZE * count)).from_address(values)
    stamp = int(time.time() * 1e6)
    unpack, pack = _FIELD_ID.unpack_from, _ANSWER.pack_into
    for off in range(0, _SLOT_SIZE * count, _SLOT_SIZE):
        entry = _FIELDS.get(unpack(mem, off)[0])
        if entry is None or not entry[0](g):
            pack(mem, off + 8, stamp, 0, 0, ERROR_NOT_SUPPORTED, 0)
        else:  # the union's low bytes hold a uint (little-endian), all 8 an unsigned long long
            pack(mem, off + 8, stamp, 0, entry[1], SUCCESS, entry[2](g))
    return SUCCESS


# ---- GPM (GPU performance monitoring, Hopper and later) ----------------------------------------
GPM_SAMPLE_BASE = 0x6772_0000
_gpm_lock = threading.Lock()
_gpm_ids = itertools.count(1)
# sample address -> (GPU index, its activity integrals when taken); None until nvmlGpmSampleGet
_gpm_samples: dict[int, tuple[int, tuple[float, ...]] | None] = {}

# GPM metric id -> index into the integrals after gpm_elapsed_s
_GPM_METRICS = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: 0,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 1,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 2,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 3,
}


@_c(c_void_p, c_void_p)
def nvmlGpmQueryDeviceSupport(lib: LibraryState, g: SimGpu, out: int) -> int:
    support = pynvml.c_nvmlGpmSupport_t.from_address(out)
    if support.version != pynvml.NVML_GPM_SUPPORT_VERSION:
        return ERROR_ARGUMENT_VERSION_MISMATCH
    support.isSupportedDevice = 1 if g.model.gpm else 0
    return SUCCESS


@_c(c_void_p, device=False)
def nvmlGpmSampleAlloc(lib: LibraryState, out: int) -> int:
    with _gpm_lock:
        addr = GPM_SAMPLE_BASE + 16 * next(_gpm_ids)
        _gpm_samples[addr] = None
    _put(c_void_p, out, addr)
    return SUCCESS


@_c(c_void_p, device=False)
def nvmlGpmSampleFree(lib: LibraryState, sample: int | None) -> int:
    with _gpm_lock:
        return SUCCESS if _gpm_samples.pop(sample or 0, 0) != 0 else ERROR_INVALID_ARGUMENT


@_c(c_void_p, c_void_p)
def nvmlGpmSampleGet(lib: LibraryState, g: SimGpu, sample: int | None) -> int:
    if not g.model.gpm:
        return ERROR_NOT_SUPPORTED
    with _gpm_lock:
        if (sample or 0) not in _gpm_samples:
            return ERROR_INVALID_ARGUMENT
        _gpm_samples[sample or 0] = (
            g.index,
            (g.gpm_elapsed_s, g.sm_active_s, g.sm_occupancy_s, g.tensor_active_s, g.dram_active_s),
        )
    return SUCCESS


class _GpmMetric(ctypes.Structure):
    _fields_ = pynvml.c_nvmlGpmMetric_t._fields_


class _GpmMetricsGet(ctypes.Structure):
    """nvmlGpmMetricsGet_t without pynvml's per-attribute hooks (C pays no such cost)."""

    _fields_ = [
        ("version", c_uint),
        ("numMetrics", c_uint),
        ("sample1", c_void_p),
        ("sample2", c_void_p),
        ("metrics", _GpmMetric * pynvml.NVML_GPM_METRIC_MAX),
    ]


@_c(c_void_p, device=False)
def nvmlGpmMetricsGet(lib: LibraryState, addr: int) -> int:
    req = _GpmMetricsGet.from_address(addr)
    if req.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
        return ERROR_ARGUMENT_VERSION_MISMATCH
    with _gpm_lock:
        s1 = _gpm_samples.get(req.sample1 or 0)
        s2 = _gpm_samples.get(req.sample2 or 0)
    if s1 is None or s2 is None or s1[0] != s2[0] or req.numMetrics > len(req.metrics):
        return ERROR_INVALID_ARGUMENT
    (t1, *a1), (t2, *a2) = s1[1], s2[1]
    dt = t2 - t1
    for i in range(req.numMetrics):
        m = req.metrics[i]
        slot = _GPM_METRICS.get(m.metricId)
        if slot is None:
            m.nvmlReturn = ERROR_NOT_SUPPORTED
            continue
        m.value = 100.0 * (a2[slot] - a1[slot]) / dt if dt > 0 else 0.0  # percent over the interval
        m.nvmlReturn = SUCCESS
    return SUCCESS


# ---- events ---------------------------------------------------------------------------------
@_c(c_void_p, device=False)
def nvmlEventSetCreate(lib: LibraryState, out: int) -> int:
    _put(c_void_p, out, EVENT_SET_BASE + lib.fleet.event_set_create())
    return SUCCESS


@_c(c_void_p, c_ulonglong, c_void_p)
def nvmlDeviceRegisterEvents(lib: LibraryState, g: SimGpu, types: int, event_set: int | None) -> int:
    if types & ~SUPPORTED_EVENTS:
        return ERROR_NOT_SUPPORTED
    ok = lib.fleet.event_set_register((event_set or 0) - EVENT_SET_BASE, g.index, types)
    return SUCCESS if ok else ERROR_INVALID_ARGUMENT


@_c(c_void_p, c_void_p)
def nvmlDeviceGetSupportedEventTypes(lib: LibraryState, g: SimGpu, out: int) -> int:
    _put(c_ulonglong, out, SUPPORTED_EVENTS)
    return SUCCESS


@_c(c_void_p, c_void_p, c_uint, device=False, names=("nvmlEventSetWait",))
def nvmlEventSetWait_v2(lib: LibraryState, event_set: int | None, out: int, timeout_ms: int) -> int:
    got = lib.fleet.event_set_wait(
        (event_set or 0) - EVENT_SET_BASE, timeout_ms / 1000.0, time.monotonic() + timeout_ms / 1000.0
    )
    if got is None:
        return ERROR_TIMEOUT
    gpu, etype, data = got
    ev = pynvml.c_nvmlEventData_t.from_address(out)
    c_void_p.from_address(out).value = HANDLE_BASE + 16 * gpu  # .device is the first member
    ev.eventType, ev.eventData = etype, data
    ev.gpuInstanceId = ev.computeInstanceId = 0xFFFFFFFF
    return SUCCESS


@_c(c_void_p, device=False)
def nvmlEventSetFree(lib: LibraryState, event_set: int | None) -> int:
    return SUCCESS if lib.fleet.event_set_free((event_set or 0) - EVENT_SET_BASE) else ERROR_INVALID_ARGUMENT
