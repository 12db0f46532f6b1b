"""Exported values against a reference read just before and just after the scrape.

The reference is ``nvidia-smi --query-gpu`` on a real host; against the simulator it is the
simulator's own state (its control endpoint), rendered into the same nvidia-smi field names and
units, so one mapping and one comparison serve both. Values move between the reads (power within
milliseconds, utilization is a sampled average), so a value passes when it lies inside the
bracket [min(before, after) - tol, max(before, after) + tol]; each field states its tolerance and
why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.exporter.collectors.throttle import REASONS

MIB = 1024**2
Value = float | str | None
RefRows = dict[str, dict[str, Value]]  # GPU UUID -> nvidia-smi field -> value (nvidia-smi's units)


@dataclass(frozen=True)
class FieldMap:
    """One exported per-GPU series and the nvidia-smi field that reports the same quantity.

    ``exported = nvidia_smi * scale``; ``smi`` lists the field's names, newest first (a driver
    that does not know one is asked the next). Tolerances are in the exported unit.
    """

    metric: str
    smi: tuple[str, ...]
    scale: float = 1.0
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()
    why: str = ""

    @property
    def key(self) -> str:
        if not self.labels:
            return self.metric
        return self.metric + "{" + ",".join(f'{k}="{v}"' for k, v in self.labels) + "}"

    def tolerance(self, ref: float) -> float:
        return self.abs_tol + self.rel_tol * abs(ref)

    def describe_tolerance(self) -> str:
        parts = []
        if self.abs_tol or not self.rel_tol:
            parts.append(_fmt(self.abs_tol, self.metric))
        if self.rel_tol:
            parts.append(f"{self.rel_tol * 100:g}%")
        return " + ".join(parts)


def _fmt(v: float, metric: str) -> str:
    if metric.endswith("_bytes"):
        return f"{v / MIB:g} MiB"
    if metric.endswith("_hertz"):
        return f"{v / 1e6:g} MHz"
    return f"{v:g}"


# Throttle reasons: nvidia-smi names them with the exporter's words (clocks_event_reasons.* since
# driver 535, clocks_throttle_reasons.* before, kept there as aliases).

FIELDS: tuple[FieldMap, ...] = (
    FieldMap("gpu_temperature_celsius", ("temperature.gpu",), 1.0, 1.0, why="whole degrees on both sides"),
    FieldMap("gpu_memory_temperature_celsius", ("temperature.memory",), 1.0, 1.0, why="whole degrees"),
    FieldMap(
        "gpu_power_watts",
        ("power.draw.instant", "power.draw"),
        1.0,
        5.0,
        0.05,
        why="draw moves within milliseconds; older drivers only have power.draw (a 1 s average)",
    ),
    FieldMap(
        "gpu_power_limit_watts", ("enforced.power.limit", "power.limit"), 1.0, 0.5, why="nvidia-smi prints 2 decimals"
    ),
    FieldMap("gpu_power_limit_default_watts", ("power.default_limit",), 1.0, 0.5, why="2 decimals"),
    FieldMap("gpu_power_limit_min_watts", ("power.min_limit",), 1.0, 0.5, why="2 decimals"),
    FieldMap("gpu_power_limit_max_watts", ("power.max_limit",), 1.0, 0.5, why="2 decimals"),
    FieldMap("gpu_memory_used_bytes", ("memory.used",), MIB, 1.0 * MIB, why="nvidia-smi prints whole MiB"),
    FieldMap("gpu_memory_total_bytes", ("memory.total",), MIB, 1.0 * MIB, why="whole MiB"),
    FieldMap("gpu_memory_free_bytes", ("memory.free",), MIB, 1.0 * MIB, why="whole MiB"),
    FieldMap("gpu_memory_reserved_bytes", ("memory.reserved",), MIB, 1.0 * MIB, why="whole MiB"),
    FieldMap("gpu_encoder_utilization_ratio", ("utilization.encoder",), 0.01, 0.05, why="a sampled average"),
    FieldMap("gpu_decoder_utilization_ratio", ("utilization.decoder",), 0.01, 0.05, why="a sampled average"),
    FieldMap("gpu_remapped_rows_pending", ("remapped_rows.pending",), why="a flag: exact"),
    FieldMap("gpu_remapped_rows_failure", ("remapped_rows.failure",), why="a flag: exact"),
    FieldMap("gpu_utilization_ratio", ("utilization.gpu",), 0.01, 0.05, why="an average over NVML's sample period"),
    FieldMap("gpu_memory_utilization_ratio", ("utilization.memory",), 0.01, 0.05, why="likewise"),
    FieldMap("gpu_sm_clock_hertz", ("clocks.sm",), 1e6, 15e6, 0.02, why="boost moves the clock between reads"),
    FieldMap("gpu_memory_clock_hertz", ("clocks.mem",), 1e6, 1e6, why="whole MHz"),
    FieldMap("gpu_fan_speed_ratio", ("fan.speed",), 0.01, 0.01, why="whole percent"),
    FieldMap("gpu_ecc_errors_correctable_total", ("ecc.errors.corrected.volatile.total",), why="a count: exact"),
    FieldMap("gpu_ecc_errors_uncorrectable_total", ("ecc.errors.uncorrected.volatile.total",), why="a count: exact"),
    FieldMap(
        "gpu_retired_pages",
        ("retired_pages.single_bit_ecc.count", "retired_pages.sbe"),
        labels=(("cause", "single_bit"),),
    ),
    FieldMap(
        "gpu_retired_pages", ("retired_pages.double_bit.count", "retired_pages.dbe"), labels=(("cause", "double_bit"),)
    ),
    FieldMap("gpu_remapped_rows", ("remapped_rows.correctable",), labels=(("cause", "correctable"),)),
    FieldMap("gpu_remapped_rows", ("remapped_rows.uncorrectable",), labels=(("cause", "uncorrectable"),)),
    *(
        FieldMap(
            "gpu_throttle_active",
            (f"clocks_event_reasons.{r}", f"clocks_throttle_reasons.{r}"),
            labels=(("reason", r),),
            why="0/1: equal to one of the two reads",
        )
        for r, _bit in REASONS
    ),
)
BY_KEY = {f.key: f for f in FIELDS}
IDENTITY = ("uuid", "name", "pci.bus_id", "driver_version")  # compared with gpu_info's labels
_INFO_LABEL = {"name": "name", "pci.bus_id": "pci_bus_id", "driver_version": "driver_version"}
GPU_LABELS = ("gpu", "uuid")


# -- the exporter's side ----------------------------------------------------------------------
def exported(text: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]], list[dict[str, Any]]]:
    """From one /metrics page: per GPU UUID, ``{series key: value}``; gpu_info labels per UUID;
    and the exporter's own NVML error counts (call, code, count)."""
    values: dict[str, dict[str, float]] = {}
    info: dict[str, dict[str, str]] = {}
    errors: list[dict[str, Any]] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "gpuwarden_exporter_nvml_errors_total":
                errors.append({"call": s.labels.get("call", ""), "code": s.labels.get("code", ""), "count": s.value})
                continue
            uuid = s.labels.get("uuid")
            if not uuid:
                continue
            if s.name == "gpu_info":
                info[uuid] = dict(s.labels)
                continue
            extra = sorted((k, v) for k, v in s.labels.items() if k not in GPU_LABELS)
            key = s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in extra) + "}" if extra else "")
            values.setdefault(uuid, {})[key] = s.value
    return values, info, errors


# -- references -------------------------------------------------------------------------------
class Reference(Protocol):
    name: str

    def read(self) -> RefRows: ...


def parse_smi_value(text: str) -> Value:
    """One nvidia-smi CSV cell (``--format=csv,noheader,nounits``) as a number, 0/1, or None."""
    t = text.strip()
    if not t or t.startswith("[") or t in ("N/A", "Unknown Error"):
        return None  # [N/A], [Not Supported], [Unknown Error], [Insufficient Permissions]
    if t == "Active":
        return 1.0
    if t in ("Not Active", "No"):
        return 0.0
    if t == "Yes":
        return 1.0
    try:
        return float(t)
    except ValueError:
        return t


_INVALID_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query')


class NvidiaSmi:
    """``nvidia-smi --query-gpu=...``; fields this driver does not know are dropped (and listed)."""

    name = "nvidia-smi"

    def __init__(self, path: str, fields: Iterable[str], timeout: float = 30.0) -> None:
        self.path = path
        self.fields = list(dict.fromkeys(["uuid", *IDENTITY, *fields]))
        self.unknown: list[str] = []
        self.timeout = timeout

    def read(self) -> RefRows:
        while True:
            res = subprocess.run(
                [self.path, f"--query-gpu={','.join(self.fields)}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
            bad = _INVALID_FIELD.search(res.stdout + res.stderr)
            if res.returncode != 0 and bad and bad.group(1) in self.fields and bad.group(1) != "uuid":
                self.fields.remove(bad.group(1))
                self.unknown.append(bad.group(1))
                continue
            if res.returncode != 0:
                raise RuntimeError(f"nvidia-smi exited {res.returncode}: {(res.stderr or res.stdout).strip()[:300]}")
            return self.parse(res.stdout)

    def parse(self, out: str) -> RefRows:
        rows: RefRows = {}
        for line in out.splitlines():
            if not line.strip():
                continue
            cells = [c.strip() for c in line.split(",")]
            if len(cells) != len(self.fields):
                raise RuntimeError(f"nvidia-smi printed {len(cells)} columns for {len(self.fields)} fields: {line!r}")
            row: dict[str, Value] = {}
            for f, c in zip(self.fields, cells, strict=True):
                row[f] = c if f in IDENTITY else parse_smi_value(c)
            rows[str(row["uuid"])] = row
        return rows


class SimState:
    """The simulator's state (``GET /api/v1/gpus`` on its control endpoint) in nvidia-smi's
    field names and units: the reference when no real GPU is read. Only what the state holds."""

    name = "simulator state"

    def __init__(self, control_url: str) -> None:
        self.url = control_url.rstrip("/") + "/api/v1/gpus"

    def read(self) -> RefRows:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            doc = json.load(resp)
        rows: RefRows = {}
        for g in doc["gpus"]:
            bits = int(g["throttle_reasons"])
            row: dict[str, Value] = {
                "uuid": g["uuid"],
                "name": g["name"],
                "pci.bus_id": g["pci_bus_id"],
                "temperature.gpu": g["temperature_celsius"],
                "power.draw.instant": g["power_watts"],
                "enforced.power.limit": g["power_limit_watts"],
                "utilization.gpu": g["utilization"] * 100.0,
                "ecc.errors.corrected.volatile.total": g["ecc_correctable"],
                "ecc.errors.uncorrected.volatile.total": g["ecc_uncorrectable"],
            }
            for reason, bit in REASONS:
                row[f"clocks_event_reasons.{reason}"] = 1.0 if bits & bit else 0.0
            rows[g["uuid"]] = row
        return rows


def find_nvidia_smi(path: str) -> str | None:
    return shutil.which(path)


# -- the comparison ---------------------------------------------------------------------------
@dataclass
class Row:
    key: str  # exported series, e.g. gpu_throttle_active{reason="sw_power_cap"}
    field: str  # the reference field compared ("" when there is none)
    tolerance: str
    why: str
    gpus: int = 0  # GPUs where both sides had a value
    ok: int = 0
    max_excess: float = 0.0  # largest distance outside the bracket plus tolerance
    sample: str = ""  # GPU 0 (first compared): exported, reference before -> after
    result: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _pick(fm: FieldMap, before: Mapping[str, Value], after: Mapping[str, Value]) -> tuple[str, Value, Value]:
    """The first of the field's names that the reference answered with a number."""
    for name in fm.smi:
        b, a = before.get(name), after.get(name)
        if isinstance(b, float | int) or isinstance(a, float | int):
            return name, b, a
    return (fm.smi[0], None, None)


def compare(
    values: Mapping[str, Mapping[str, float]],
    info: Mapping[str, Mapping[str, str]],
    before: RefRows,
    after: RefRows,
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Every exported per-GPU series, each against its reference field where there is one.

    Returns one row per series key (aggregated over GPUs) and the identity checks per GPU.
    """
    rows: dict[str, Row] = {}
    uuids = [u for u in values if u in before or u in after]
    keys = sorted({k for u in values for k in values[u]})
    for key in keys:
        fm = BY_KEY.get(key)
        if fm is None:
            rows[key] = Row(key, "", "", "", result="no reference field")
            continue
        row = rows[key] = Row(key, "", fm.describe_tolerance(), fm.why)
        for u in uuids:
            v = values[u].get(key)
            name, b, a = _pick(fm, before.get(u, {}), after.get(u, {}))
            row.field = row.field or name
            refs = [float(x) * fm.scale for x in (b, a) if isinstance(x, float | int)]
            if v is None or not refs:
                continue
            lo, hi = min(refs), max(refs)
            tol = fm.tolerance(max(abs(lo), abs(hi)))
            excess = max(0.0, lo - tol - v, v - hi - tol)
            row.gpus += 1
            row.ok += excess == 0.0
            row.max_excess = max(row.max_excess, excess)
            if not row.sample:
                row.sample = f"{_fmt(v, fm.metric)} vs {_fmt(refs[0], fm.metric)} -> {_fmt(refs[-1], fm.metric)}"
        if not row.field:
            row.field = fm.smi[0]
        if row.gpus == 0:
            row.result = "not reported by the reference"
        else:
            row.result = "ok" if row.ok == row.gpus else "DIFF"
            row.result += f" ({row.ok}/{row.gpus} GPUs)"
    # Fields the reference reports that the exporter did not export: a gap on our side.
    for fm in FIELDS:
        if fm.key in rows:
            continue
        for u in uuids:
            name, b, a = _pick(fm, before.get(u, {}), after.get(u, {}))
            if isinstance(b, float | int):
                rows[fm.key] = Row(fm.key, name, fm.describe_tolerance(), fm.why, result="MISSING: reference has it")
                break
    identity = []
    for u in uuids:
        ref = before.get(u) or after.get(u) or {}
        labels = info.get(u, {})
        for f, label in _INFO_LABEL.items():
            want = ref.get(f)
            if want is None or label not in labels:
                continue
            got = labels[label]
            identity.append(
                {"uuid": u, "field": f, "exported": got, "reference": str(want), "ok": got.lower() == str(want).lower()}
            )
    return list(rows.values()), identity
