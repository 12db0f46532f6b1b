"""Fault kinds the simulator can inject (through scenarios or the control endpoint).

Every fault is a JSON object ``{"kind": ..., ...}``; docs/SIMULATION.md lists them. Faults change
one GPU's state; ``clear`` undoes the standing ones (counters keep their counts, as on a real GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .physics import SimGpu

XID_FALLEN_OFF_BUS = 79

# kind -> (required keys, optional keys)
FAULT_KINDS: dict[str, tuple[set[str], set[str]]] = {
    "lost": (set(), set()),
    "xid": ({"xid"}, {"lose_gpu"}),
    "hang": (set(), {"call", "seconds"}),
    "not_supported": ({"call"}, set()),
    "cooling": ({"factor"}, set()),
    "power_spike": ({"watts"}, set()),
    "ecc": (set(), {"correctable", "uncorrectable", "correctable_per_minute"}),
    "pcie_replays": (set(), {"count", "per_minute"}),
    "driver_reload": (set(), set()),
}


class FaultError(ValueError):
    """A fault document that cannot be applied; the message names the field."""


def check_fault(doc: Any) -> dict[str, Any]:
    """Validates one fault document, returning it; raises FaultError naming the bad field."""
    if not isinstance(doc, dict) or "kind" not in doc:
        raise FaultError('a fault is an object with a "kind" field, e.g. {"kind": "lost"}')
    kind = doc["kind"]
    if kind not in FAULT_KINDS:
        raise FaultError(f"kind: unknown fault kind {kind!r}; known kinds: {', '.join(sorted(FAULT_KINDS))}")
    required, optional = FAULT_KINDS[kind]
    keys = set(doc) - {"kind"}
    missing = required - keys
    if missing:
        raise FaultError(f"{sorted(missing)[0]}: required for fault kind {kind!r}")
    extra = keys - required - optional
    if extra:
        raise FaultError(
            f"{sorted(extra)[0]}: not a field of fault kind {kind!r} (fields: {sorted(required | optional)})"
        )
    for key in ("factor", "watts", "seconds", "correctable_per_minute", "per_minute"):
        if key in doc and (not isinstance(doc[key], (int, float)) or isinstance(doc[key], bool) or doc[key] < 0):
            raise FaultError(f"{key}: must be a non-negative number, got {doc[key]!r}")
    for key in ("xid", "correctable", "uncorrectable", "count"):
        if key in doc and (not isinstance(doc[key], int) or isinstance(doc[key], bool) or doc[key] < 0):
            raise FaultError(f"{key}: must be a non-negative integer, got {doc[key]!r}")
    if kind == "cooling" and doc["factor"] < 1:
        raise FaultError(f"factor: cooling factor must be >= 1 (1 = healthy), got {doc['factor']!r}")
    return doc


def apply_fault(gpu: SimGpu, doc: dict[str, Any], emit_xid: Callable[[SimGpu, int], None]) -> None:
    """Applies a validated fault to ``gpu``; XIDs go out through ``emit_xid``."""
    kind = doc["kind"]
    if kind == "lost":
        gpu.lost = True
    elif kind == "xid":
        emit_xid(gpu, int(doc["xid"]))
        if doc.get("lose_gpu", doc["xid"] == XID_FALLEN_OFF_BUS):
            gpu.lost = True
    elif kind == "hang":
        gpu.hang_calls.add(doc.get("call", "*"))
        gpu.hang_seconds = float(doc.get("seconds", 3600.0))
    elif kind == "not_supported":
        gpu.not_supported.add(str(doc["call"]))
    elif kind == "cooling":
        gpu.cooling_factor = float(doc["factor"])
    elif kind == "power_spike":
        gpu.extra_watts = float(doc["watts"])
    elif kind == "ecc":
        gpu.add_ecc(correctable=int(doc.get("correctable", 0)), uncorrectable=int(doc.get("uncorrectable", 0)))
        if "correctable_per_minute" in doc:
            gpu.ecc_correctable_per_s = float(doc["correctable_per_minute"]) / 60.0
    elif kind == "pcie_replays":
        gpu.pcie_replays += int(doc.get("count", 0))
        if "per_minute" in doc:
            gpu.pcie_replays_per_s = float(doc["per_minute"]) / 60.0
    elif kind == "driver_reload":
        # Volatile counters and energy start again from zero; a lost GPU comes back.
        gpu.ecc_correctable = gpu.ecc_uncorrectable = 0
        gpu.energy_mj = 0.0
        gpu.lost = False
    gpu.settle()


def clear_faults(gpu: SimGpu) -> None:
    """Undoes every standing fault on ``gpu`` (counts already made stay)."""
    gpu.lost = False
    gpu.cooling_factor = 1.0
    gpu.extra_watts = 0.0
    gpu.ecc_correctable_per_s = 0.0
    gpu.pcie_replays_per_s = 0.0
    gpu.not_supported.clear()
    gpu.hang_calls.clear()
    gpu.settle()
