"""Which raw series each generated alert needs from the configured source, one place for the
dcgm-exporter counters CSV (which field each rule needs) and for ``gpuwarden-rules doctor``
(whether those series exist in a given Prometheus).

A ``Need`` is one series a rule reads, as alternatives (dcgm-exporter's throttle field has two
names across DCGM versions); ``optional`` marks a series whose absence only changes the figure
used (a profile's relative limit falls back to its absolute threshold), never whether the rule
can fire; ``on_event`` marks a series that first appears with the event it counts
(gpuwarden-exporter's ``gpu_xid_errors_total{xid}``, one series per XID seen): its absence means
no such event yet, as long as the exporter declares the family (its metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuwarden import sources

from . import promql
from .config import AlertRule, Forecast, MonitoringAlert, RulesConfig

Alert = AlertRule | Forecast | MonitoringAlert


@dataclass(frozen=True)
class Need:
    names: tuple[str, ...]
    optional: bool = False
    why: str = ""
    on_event: bool = False

    def shown(self) -> str:
        return " or ".join(self.names)


def _metric(cfg: RulesConfig, metric: str, matchers: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, ...]]:
    r = sources.raw(cfg.source, metric, matchers)
    return [(n,) for n in r.sum_of] if r.sum_of else [r.names]


def _rule_needs(cfg: RulesConfig, rule: AlertRule) -> list[Need]:
    needs = [Need(n) for n in _metric(cfg, rule.metric)]
    if rule.denominator:
        needs += [Need(n) for n in _metric(cfg, rule.denominator) if Need(n) not in needs]
    if rule.relative is not None:
        why = f"profile {rule.profile} reads each GPU's own limit; without it, the fallback {rule.threshold:g}"
        needs += [Need(n, optional=True, why=why) for n in _metric(cfg, rule.relative.metric, rule.relative.matchers)]
    return needs


def needs(cfg: RulesConfig, a: Alert) -> list[Need]:
    """The raw series alert ``a`` reads (its profiles' versions included for a threshold rule)."""
    if isinstance(a, AlertRule):
        out: list[Need] = []
        for version in cfg.versions(a):
            out += [n for n in _rule_needs(cfg, version) if n not in out]
        return out
    if isinstance(a, Forecast):
        return _rule_needs(cfg, a.target)
    kind = a.kind
    if kind == "target_down":
        return [Need(("up",), why="Prometheus' own series of the scrape job")]
    if kind == "series_absent":
        return []  # fires exactly when its series is missing
    if kind == "series_vanished":
        return [Need((promql.presence(cfg),))]
    if kind == "nvml_down":
        return [Need(("gpuwarden_exporter_nvml_up",))]
    if kind == "gpu_down":
        return [Need(("gpu_up",))]
    if kind == "fatal_xid":
        if cfg.source == "gpuwarden":
            return [Need(("gpu_xid_errors_total",), on_event=True, why="a series appears with a GPU's first XID")]
        return [Need(n) for n in _metric(cfg, "gpu_xid_errors_total")]
    raise ValueError(f"unknown monitoring kind {kind!r}")


def alerts(cfg: RulesConfig) -> list[Alert]:
    """Every alert the generator emits for the source, in file order (one entry per rule id)."""
    return [a for a in cfg.all_alerts() if not isinstance(a, MonitoringAlert) or promql.supported(cfg, a)]


# dcgm-exporter counters CSV: field -> (Prometheus type, help). Types as dcgm-exporter's own CSV
# declares them (its ECC counts are counters, the XID field a gauge holding the last XID).
_DCGM_FIELDS = {
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": ("gauge", "Enforced power limit (in W)."),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT_DEF": ("gauge", "Default power management limit (in W)."),
    "DCGM_FI_DEV_SLOWDOWN_TEMP": ("gauge", "Slowdown temperature (in C)."),
    "DCGM_FI_DEV_SHUTDOWN_TEMP": ("gauge", "Shutdown temperature (in C)."),
    "DCGM_FI_DEV_GPU_MAX_OP_TEMP": ("gauge", "Maximum operating temperature (in C)."),
    "DCGM_FI_DEV_MEM_MAX_OP_TEMP": ("gauge", "Maximum memory operating temperature (in C)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("counter", "Total number of single-bit volatile ECC errors."),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("counter", "Total number of double-bit volatile ECC errors."),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("gauge", "Current clock throttle reasons (bitmask)."),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("gauge", "Current clock event reasons (bitmask)."),
    "DCGM_FI_DEV_XID_ERRORS": ("gauge", "Value of the last XID error encountered."),
}
# Read by the agent's inventory/predictor and the dashboard, not by a rule.
_DCGM_READERS = {
    "DCGM_FI_DEV_GPU_UTIL": "the dashboard and the predictor (utilization_ratio)",
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": "the dashboard and the agent's throttle (power_limit_watts)",
}
CSV_FILE = "dcgm-exporter-counters.csv"


def counters_csv(cfg: RulesConfig, header: str) -> str:
    """A dcgm-exporter collectors file (``-f``/``--collectors``) enabling every field the
    generated rules read, each preceded by the rules that read it. The throttle field is listed
    by its DCGM >= 3.3 name; with an older DCGM write DCGM_FI_DEV_CLOCK_THROTTLE_REASONS instead
    (the rules read either)."""
    readers: dict[str, list[str]] = {}
    for a in alerts(cfg):
        for need in needs(cfg, a):
            name = need.names[-1]
            if name in _DCGM_FIELDS:
                readers.setdefault(name, []).append(a.rule + (" (optional: per-GPU limit)" if need.optional else ""))
    for name, who in _DCGM_READERS.items():
        readers.setdefault(name, []).append(who)
    lines = [
        header.rstrip("\n"),
        "# dcgm-exporter collectors file: dcgm-exporter -f <this file> (or the GPU Operator's",
        "# dcgmExporter.config ConfigMap). Format: DCGM FIELD, Prometheus metric type, help message.",
        "# Each field lists what reads it; add dcgm-exporter's other default fields as you need them.",
        "",
    ]
    for name in _DCGM_FIELDS:
        if name not in readers:
            continue
        kind, text = _DCGM_FIELDS[name]
        lines.append(f"# needed by: {', '.join(dict.fromkeys(readers[name]))}")
        lines.append(f"{name}, {kind}, {text}")
    return "\n".join(lines) + "\n"
