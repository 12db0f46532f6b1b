"""The simulated libnvidia-ml: ctypes callables that pynvml calls as if they were the C library.

pynvml reads every C entry point with ``getattr(pynvml.nvmlLib, name)`` (cached in
``_nvmlGetFunctionPointer_cache``) and calls it with ctypes arguments. ``install(lib)`` puts a
``SimLibrary`` there: each attribute is a ``ctypes.CFUNCTYPE`` built from a Python function, so
pynvml's wrappers, structs and error classes run unchanged and only the bottom layer is fake.
Output arguments arrive as addresses (``c_void_p``); we write C values into them. A function the
library lacks raises AttributeError, which pynvml turns into NVML_ERROR_FUNCTION_NOT_FOUND.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from ctypes import CFUNCTYPE, c_int
from typing import Any

import pynvml

from .fleet import Fleet
from .nvml_api import (
    ERROR_GPU_IS_LOST,
    ERROR_INVALID_ARGUMENT,
    ERROR_NOT_SUPPORTED,
    ERROR_UNINITIALIZED,
    ERROR_UNKNOWN,
    FUNCTIONS,
    HANDLE_BASE,
)

log = logging.getLogger(__name__)


class SimLibrary:
    """A libnvidia-ml look-alike over ``fleet``.

    ``missing`` names entry points to leave out (as an older driver would); ``latency_s`` is
    added to every device call; ``calls`` counts calls by entry point (for the benchmark).
    """

    def __init__(self, fleet: Fleet, missing: frozenset[str] | set[str] = frozenset(), latency_s: float = 0.0) -> None:
        self.fleet = fleet
        self.latency_s = latency_s
        self.initialized = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.missing = frozenset(missing)
        unknown = self.missing - set(FUNCTIONS)
        if unknown:
            raise ValueError(f"missing= names functions the simulator does not have: {sorted(unknown)}")
        for name, (argtypes, fn, device) in FUNCTIONS.items():
            if name not in self.missing:
                proto = CFUNCTYPE(c_int, *argtypes)
                setattr(self, name, proto(self._wrap(name, fn, device)))

    def _wrap(self, name: str, fn: Callable[..., int], device: bool) -> Callable[..., int]:
        fleet, calls = self.fleet, self.calls

        def library_call(*args: Any) -> int:
            calls[name] += 1
            try:
                if name.startswith("nvmlInit") or self.initialized:
                    return fn(self, *args)
                return ERROR_UNINITIALIZED
            except Exception:
                log.exception("simulated %s failed", name)
                return ERROR_UNKNOWN

        def device_call(handle: int | None, *args: Any) -> int:
            calls[name] += 1
            try:
                if not self.initialized:
                    return ERROR_UNINITIALIZED
                index, rem = divmod((handle or 0) - HANDLE_BASE, 16)
                gpus = fleet.gpus  # read each call: GPUs come and go (Fleet.resize)
                if rem or not 0 <= index < len(gpus):
                    return ERROR_INVALID_ARGUMENT
                g = gpus[index]
                fleet.sync()
                release = fleet.hang_for(g, name)
                if release is not None:
                    release.wait(g.hang_seconds)  # blocks like a wedged driver call would
                if self.latency_s:
                    time.sleep(self.latency_s)
                if g.lost:
                    return ERROR_GPU_IS_LOST
                if name in g.not_supported:
                    return ERROR_NOT_SUPPORTED
                return fn(self, g, *args)
            except Exception:
                log.exception("simulated %s failed", name)
                return ERROR_UNKNOWN

        return device_call if device else library_call


@contextlib.contextmanager
def installed(lib: SimLibrary) -> Iterator[SimLibrary]:
    """Makes pynvml use ``lib`` inside the block, restoring what was there after."""
    previous = pynvml.nvmlLib
    install(lib)
    try:
        yield lib
    finally:
        pynvml.nvmlLib = previous
        pynvml._nvmlGetFunctionPointer_cache.clear()


def install(lib: Any) -> None:
    """Points pynvml at ``lib`` (call before nvmlInit); clears its function-pointer cache."""
    with pynvml.libLoadLock:
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
