"""Where GPU metrics come from: the one module that knows each source's metric names and labels.

gpuwarden reads its GPUs from one of two exporters (``SOURCES``): its own, ``gpuwarden-exporter``
(base units, lowercase ``gpu``/``uuid``, identity on ``gpu_info``), or NVIDIA's ``dcgm-exporter``
(DCGM field names, framebuffer in MiB, utilisation in %, throttling as a bitmask, the GPU's UUID
in ``UUID``, its model in ``modelName`` on every series). ``signal(source, name)`` answers one
PromQL expression per signal whose series carry lowercase ``instance``, ``gpu`` and ``uuid`` in
gpuwarden's units (bytes, watts, °C, ratio 0-1), so the predictor, the dashboard and the
inventory read either source the same way. The rule generator needs more than an instant
expression (ranges for ``predict_linear``, a join on the model label), so the raw names and
their scale are public too (``raw``, ``MODEL_LABEL``, ``THROTTLE_BITS``).

dcgm-exporter facts (its ``etc/default-counters.csv``, DCGM's ``dcgm_fields.h``):
``DCGM_FI_DEV_FB_USED``/``_FREE`` are MiB; ``DCGM_FI_DEV_POWER_USAGE`` watts;
``DCGM_FI_DEV_GPU_UTIL`` percent; ``DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`` (DCGM < 3.3; renamed
``DCGM_FI_DEV_CLOCKS_EVENT_REASONS``) a bitmask gauge with NVML's reason bits;
``DCGM_FI_DEV_ECC_{SBE,DBE}_VOL_TOTAL`` volatile counts (not in the default CSV);
``DCGM_FI_DEV_XID_ERRORS`` the value of the last XID, a gauge, not a count.

DCGM writes a sentinel where it has no value for a field (``dcgm_structs.h``: its type's BLANK,
or BLANK + 1..3 for not found / not supported / not permissioned; ``DCGM_*_IS_BLANK(v)`` is
``v >= BLANK``). dcgm-exporter since 4.5.2 drops them; older ones export them as values
(2147483632 for a temperature, 2**47 watts), which would cross any threshold. ``instant`` (so
every signal and every rule comparison) keeps only values below the field's lowest sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("gpuwarden", "dcgm-exporter")
SIGNALS = (
    "temperature_celsius",
    "power_watts",
    "power_limit_watts",
    "memory_used_bytes",
    "memory_total_bytes",
    "utilization_ratio",
    "ecc_correctable_total",
    "ecc_uncorrectable_total",
    "throttle_active",
    "identity",
    "gpu_up",
)
MIB = 1048576
# DCGM's blank sentinels (dcgm_structs.h). An INT64 field may carry the INT32 ones too
# (dcgm-exporter's isInt64Blank checks both), and every INT64 sentinel is above them.
DCGM_INT32_BLANK = 0x7FFFFFF0
DCGM_INT64_BLANK = 0x7FFFFFFFFFFFFFF0
DCGM_FP64_BLANK = 140737488355328.0  # 2**47
# The label that names a GPU's model on the source's identity series.
MODEL_LABEL = {"gpuwarden": "name", "dcgm-exporter": "modelName"}
# NVML's clock-event reasons (snake_case, as gpuwarden-exporter labels them) -> their bit in
# DCGM_CLOCKS_EVENT_REASON_* / nvmlClocksEventReason*.
THROTTLE_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
# The reasons that mean "throttled" (DESIGN.md, metric contract).
THROTTLING_REASONS = (
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)
# Series present for every GPU a dcgm-exporter reports (all three are in its default CSV).
DCGM_PRESENCE = ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED")


@dataclass(frozen=True)
class Raw:
    """Raw series of one quantity: ``names`` are alternatives (a field renamed between versions),
    ``scale`` converts the source's unit to gpuwarden's; ``sum_of`` (dcgm memory total) adds two
    series; ``label`` matchers narrow the series (gpuwarden's temperature thresholds); ``blank``
    is the field's lowest DCGM sentinel (values at or above it are no value), None for
    gpuwarden's own series."""

    names: tuple[str, ...]
    scale: float = 1.0
    sum_of: tuple[str, ...] = ()
    matchers: tuple[tuple[str, str], ...] = ()
    blank: float | None = None


def _int(*names: str, scale: float = 1.0, sum_of: tuple[str, ...] = ()) -> Raw:
    """A DCGM_FT_INT64 field."""
    return Raw(names, scale, sum_of, blank=DCGM_INT32_BLANK)


def _fp(*names: str) -> Raw:
    """A DCGM_FT_DOUBLE field."""
    return Raw(names, blank=DCGM_FP64_BLANK)


# gpuwarden-exporter metric name -> the same quantity in dcgm-exporter. gpuwarden's own are
# themselves (scale 1). Keys are gpuwarden's names because rules/thresholds.yaml uses them.
_DCGM: dict[str, Raw] = {
    "gpu_temperature_celsius": _int("DCGM_FI_DEV_GPU_TEMP"),
    "gpu_power_watts": _fp("DCGM_FI_DEV_POWER_USAGE"),
    "gpu_power_limit_watts": _fp("DCGM_FI_DEV_ENFORCED_POWER_LIMIT"),
    "gpu_power_limit_default_watts": _fp("DCGM_FI_DEV_POWER_MGMT_LIMIT_DEF"),
    "gpu_memory_used_bytes": _int("DCGM_FI_DEV_FB_USED", scale=MIB),
    # used + free: what applications can have (reserved framebuffer is the driver's).
    "gpu_memory_total_bytes": _int(
        "DCGM_FI_DEV_FB_USED", scale=MIB, sum_of=("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE")
    ),
    "gpu_utilization_ratio": _int("DCGM_FI_DEV_GPU_UTIL", scale=0.01),
    "gpu_ecc_errors_correctable_total": _int("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"),
    "gpu_ecc_errors_uncorrectable_total": _int("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    "gpu_throttle_active": _int("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"),
    "gpu_xid_errors_total": _int("DCGM_FI_DEV_XID_ERRORS"),
}
# gpu_temperature_threshold_celsius{threshold=...} in dcgm-exporter: one field per threshold.
_DCGM_TEMPERATURE_THRESHOLDS = {
    "slowdown": "DCGM_FI_DEV_SLOWDOWN_TEMP",
    "shutdown": "DCGM_FI_DEV_SHUTDOWN_TEMP",
    "gpu_max": "DCGM_FI_DEV_GPU_MAX_OP_TEMP",
    "memory_max": "DCGM_FI_DEV_MEM_MAX_OP_TEMP",
}
# Signal name -> gpuwarden-exporter metric it is made of.
_SIGNAL_METRIC = {
    "temperature_celsius": "gpu_temperature_celsius",
    "power_watts": "gpu_power_watts",
    "power_limit_watts": "gpu_power_limit_watts",
    "memory_used_bytes": "gpu_memory_used_bytes",
    "memory_total_bytes": "gpu_memory_total_bytes",
    "utilization_ratio": "gpu_utilization_ratio",
    "ecc_correctable_total": "gpu_ecc_errors_correctable_total",
    "ecc_uncorrectable_total": "gpu_ecc_errors_uncorrectable_total",
}


def check(source: str) -> str:
    """``source`` itself, or ValueError naming the known ones."""
    if source not in SOURCES:
        raise ValueError(f"unknown metrics source {source!r} (known: {', '.join(SOURCES)})")
    return source


def default_job_selector(source: str) -> str:
    """The scrape job matcher of a source's exporter, as its usual deployments name it (the GPU
    Operator calls dcgm-exporter's job nvidia-dcgm-exporter)."""
    if check(source) == "gpuwarden":
        return 'job="gpuwarden-exporter"'
    return 'job=~"(nvidia-)?dcgm-exporter"'


def raw(source: str, metric: str, matchers: tuple[tuple[str, str], ...] = ()) -> Raw:
    """The raw series of gpuwarden-exporter's ``metric`` in ``source`` (KeyError if it has none).
    ``matchers`` are the gpuwarden series' own (``threshold="slowdown"``): dcgm-exporter has one
    field per threshold instead."""
    if check(source) == "gpuwarden" or metric.startswith("DCGM_"):
        return Raw((metric,), matchers=matchers)
    if metric == "gpu_temperature_threshold_celsius":
        which = dict(matchers).get("threshold", "")
        if which not in _DCGM_TEMPERATURE_THRESHOLDS:
            raise KeyError(f"{metric}{{threshold={which!r}}}")
        return _int(_DCGM_TEMPERATURE_THRESHOLDS[which])
    return _DCGM[metric]


def has(source: str, metric: str, matchers: tuple[tuple[str, str], ...] = ()) -> bool:
    try:
        raw(source, metric, matchers)
    except KeyError:
        return False
    return True


def selector(names: tuple[str, ...], job_selector: str, matchers: tuple[tuple[str, str], ...] = ()) -> str:
    """``name{job..., k="v"}``, or ``{__name__=~"a|b", ...}`` for alternatives."""
    parts = [job_selector, *(f'{k}="{v}"' for k, v in matchers)]
    if len(names) == 1:
        return f"{names[0]}{{{', '.join(parts)}}}"
    return "{" + ", ".join([f'__name__=~"{"|".join(names)}"', *parts]) + "}"


def number(value: float) -> str:
    """A float as PromQL prints it: 80 not 80.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def instant(source: str, metric: str, job_selector: str, matchers: tuple[tuple[str, str], ...] = ()) -> str:
    """gpuwarden-exporter's ``metric`` as read from ``source``, in gpuwarden's unit, labels as the
    source has them (no ``uuid`` copy: see ``signal``); a DCGM blank is no sample."""
    r = raw(source, metric, matchers)

    def valid(sel: str) -> str:
        return sel if r.blank is None else f"({sel} < {number(r.blank)})"

    if r.sum_of:
        expr = "(" + " + ".join(valid(selector((n,), job_selector, r.matchers)) for n in r.sum_of) + ")"
    elif len(r.names) > 1:
        # Either name, never both as two series per GPU (a version upgrade mid-range).
        expr = valid(f"max without () ({selector(r.names, job_selector, r.matchers)})")
    else:
        expr = valid(selector(r.names, job_selector, r.matchers))
    return f"{expr} * {number(r.scale)}" if r.scale != 1 else expr


def throttle_expr(source: str, reasons: tuple[str, ...], job_selector: str) -> str:
    """1 while any of ``reasons`` is active, 0 otherwise, per GPU, labels as the source has them
    (gpuwarden: max over its per-reason 0/1 series; dcgm-exporter: the reasons' bits decoded
    from the bitmask with floor and modulo, PromQL having no bitwise operators)."""
    if check(source) == "gpuwarden":
        return f'max without (reason) (gpu_throttle_active{{{job_selector}, reason=~"{"|".join(reasons)}"}})'
    mask = instant(source, "gpu_throttle_active", job_selector)
    terms = [f"floor({mask} / {low}) % {span}" for low, span in bit_runs(reasons)]
    return f"clamp_max({' + '.join(terms)}, 1)"


def bit_runs(reasons: tuple[str, ...]) -> list[tuple[int, int]]:
    """The reasons' bits as runs of adjacent bits, (lowest bit, 2**length): the mask has one
    of a run's bits set exactly when floor(mask / lowest) % 2**length > 0, so the five
    throttling reasons read the mask twice (0x4-0x8, 0x20-0x80) instead of five times."""
    runs: list[tuple[int, int]] = []
    for bit in sorted({THROTTLE_BITS[r] for r in reasons}):
        if runs and runs[-1][0] * runs[-1][1] == bit:
            runs[-1] = (runs[-1][0], runs[-1][1] * 2)
        else:
            runs.append((bit, 2))
    return runs


def uuid_lowercase(source: str, expr: str) -> str:
    """``expr`` with dcgm-exporter's ``UUID`` copied to ``uuid`` (gpuwarden's already is)."""
    if check(source) == "gpuwarden":
        return expr
    return f'label_replace({expr}, "uuid", "$1", "UUID", "(.+)")'


def identity(source: str, job_selector: str, model_matchers: tuple[str, ...] = ()) -> str:
    """One series per GPU with ``instance``, ``gpu`` and the model label (``name`` for gpuwarden,
    ``modelName`` for dcgm-exporter); ``model_matchers`` are extra PromQL matchers on the model
    label (``modelName=~"NVIDIA A100.*"``). Without the uuid copy (see ``signal``)."""
    if check(source) == "gpuwarden":
        return "gpu_info{" + ", ".join([job_selector, *model_matchers]) + "}"
    presence = "{" + ", ".join([f'__name__=~"{"|".join(DCGM_PRESENCE)}"', job_selector, *model_matchers]) + "}"
    return f"group by (job, instance, gpu, UUID, modelName) ({presence})"


def signal(source: str, name: str, job_selector: str | None = None) -> str:
    """A PromQL expression for signal ``name`` read from ``source``: series with lowercase
    ``instance``, ``gpu`` and ``uuid`` in gpuwarden's units. ``identity`` has one series per
    GPU (value 1) with ``model`` too; ``gpu_up`` is 1 per GPU that works (dcgm-exporter has no
    per-GPU health by default: a GPU it still reports counts as up)."""
    check(source)
    job = job_selector or default_job_selector(source)
    if name == "throttle_active":
        return uuid_lowercase(source, throttle_expr(source, THROTTLING_REASONS, job))
    if name == "identity":
        label = MODEL_LABEL[source]
        return f'label_replace({uuid_lowercase(source, identity(source, job))}, "model", "$1", "{label}", "(.*)")'
    if name == "gpu_up":
        if source == "gpuwarden":
            return f"gpu_up{{{job}}}"
        return uuid_lowercase(source, identity(source, job))
    if name not in _SIGNAL_METRIC:
        raise ValueError(f"unknown signal {name!r} (known: {', '.join(SIGNALS)})")
    return uuid_lowercase(source, instant(source, _SIGNAL_METRIC[name], job))
