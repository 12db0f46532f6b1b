"""``gpuwarden-rules doctor``: whether each generated alert can fire in a given Prometheus.

For each alert: the raw series it reads (``needs``) are looked up under the configured job
selector, per GPU (``instance``, ``gpu``); the alert covers the GPUs that have all of them. An
alert that covers none of the GPUs the exporter reports cannot fire, and the report says why
and what to change: the series exist under another job (fix the job selector), or nowhere
(enable the field in dcgm-exporter's counters CSV, or name the gpuwarden-exporter flag of the
collector that exports it). A series that only appears with its first event (an XID) counts as
there while the exporter declares its family. The exit status is 1 when a critical alert cannot
fire on some reported GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuwarden import sources
from gpuwarden.prom import PrometheusClient

from . import needs as needs_mod
from .config import RulesConfig

Gpu = tuple[str, str]


@dataclass
class Finding:
    rule: str
    alert: str
    severity: str
    covered: set[Gpu] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_gpu: bool = True

    def can_fire(self, fleet: set[Gpu]) -> bool:
        if self.problems:
            return False
        return not self.per_gpu or not fleet or fleet <= self.covered


def _regex(names: tuple[str, ...]) -> str:
    return "|".join(names)


def _gpus(prom: PrometheusClient, expr: str) -> set[Gpu]:
    return {(s.labels.get("instance", ""), s.labels.get("gpu", "")) for s in prom.query(expr)}


def _per_gpu(have: set[Gpu], fleet: set[Gpu]) -> set[Gpu]:
    """``have`` with a series of a whole exporter (no ``gpu`` label: gpuwarden_exporter_nvml_up)
    standing for every GPU of its instance."""
    instances = {i for i, g in have if g == ""}
    return {x for x in have if x[1] != ""} | {x for x in fleet if x[0] in instances}


def collector_of(metric: str) -> str | None:
    """The gpuwarden-exporter collector (``--collector.<name>``) that exports ``metric``."""
    # Here, not at the top: the exporter's collectors load pynvml, which `gpuwarden-rules
    # generate` and `check` (this module's CLI neighbours) never need.
    from gpuwarden.exporter.collectors import COLLECTORS

    for name, c in COLLECTORS.items():
        if any(m.name == metric for m in c.metrics):
            return name
    return None


def _fix(cfg: RulesConfig, need: needs_mod.Need) -> str:
    if cfg.source == "dcgm-exporter":
        return f"enable it in the counters CSV (rules/generated/dcgm-exporter/{needs_mod.CSV_FILE})"
    if need.names == ("up",):
        return "add a scrape job for the exporter matching the selector"
    collector = collector_of(need.names[0])
    if collector is None:
        return "gpuwarden-exporter exports it when its collector is on (see gpuwarden-exporter --help)"
    return (
        f"gpuwarden-exporter exports it from its {collector} collector: start it with --collector.{collector} "
        f"(it is off under --no-collector.{collector}, or where the GPU's driver does not support it)"
    )


def _declared(prom: PrometheusClient, job: str, need: needs_mod.Need) -> bool:
    """Whether a target under the job selector declares (HELP/TYPE) the family of an event
    series: Prometheus keeps a target's metadata also for a family without samples."""
    return any(
        prom.get("/api/v1/targets/metadata", {"match_target": f"{{{job}}}", "metric": name}, "target metadata")
        for name in need.names
    )


def diagnose(cfg: RulesConfig, prom: PrometheusClient) -> tuple[list[Finding], set[Gpu]]:
    """The findings for every alert, and the GPUs the source reports (its identity series)."""
    job = cfg.job_selector
    fleet = _gpus(prom, f"count by (instance, gpu) ({sources.identity(cfg.source, job)})")
    cache: dict[tuple[str, ...], set[Gpu]] = {}
    findings = []
    for a in needs_mod.alerts(cfg):
        f = Finding(a.rule, a.alert, a.severity)
        reads = needs_mod.needs(cfg, a)
        f.per_gpu = any(n.names != ("up",) for n in reads)
        covered: set[Gpu] | None = None
        for need in reads:
            if need.names not in cache:
                cache[need.names] = _per_gpu(
                    _gpus(prom, f'count by (instance, gpu) ({{__name__=~"{_regex(need.names)}", {job}}})'), fleet
                )
            have = cache[need.names]
            if not have:
                if need.optional:
                    f.notes.append(f"no {need.shown()} series: {need.why}")
                    continue
                if need.on_event and _declared(prom, job, need):
                    f.notes.append(f"no {need.shown()} series yet ({need.why}); the exporter declares it")
                    continue
                # Only for a missing series: which other scrape jobs have it.
                elsewhere = sorted(
                    s.labels.get("job", "")
                    for s in prom.query(f'count by (job) ({{__name__=~"{_regex(need.names)}"}})')
                )
                if elsewhere and fleet:
                    # The selector matches an exporter that reports GPUs: this one lacks the series.
                    f.problems.append(
                        f"no {need.shown()} series under {job} (job {', '.join(elsewhere)} has them): {_fix(cfg, need)}"
                    )
                elif elsewhere:
                    f.problems.append(
                        f"no {need.shown()} series under {job}, but under job {', '.join(elsewhere)}: "
                        "set settings.job_selector in the thresholds file to match"
                    )
                else:
                    f.problems.append(f"no {need.shown()} series: {_fix(cfg, need)}")
                continue
            if need.optional:
                continue
            if need.names == ("up",):
                continue
            covered = set(have) if covered is None else covered & have
        f.covered = covered if covered is not None else set(fleet)
        findings.append(f)
    return findings, fleet


def _where(gpus: set[Gpu]) -> str:
    shown = sorted(gpus)[:5]
    more = f" and {len(gpus) - len(shown)} more" if len(gpus) > len(shown) else ""
    return ", ".join(f"{i} gpu {g}" for i, g in shown) + more


def report(cfg: RulesConfig, findings: list[Finding], fleet: set[Gpu]) -> tuple[str, int]:
    """The report's text and the exit status (1 when a critical alert cannot fire somewhere)."""
    lines = [f"source {cfg.source}, {cfg.job_selector}: {len(fleet)} GPUs reported"]
    status = 0
    if not fleet:
        lines.append(
            f"  no GPU series under {cfg.job_selector}: is the exporter scraped, and does the job selector match it?"
        )
    for f in findings:
        ok = f.can_fire(fleet)
        head = f"{'ok  ' if ok else 'FAIL'} {f.rule} ({f.alert}, {f.severity})"
        if f.problems:
            lines.append(f"{head} cannot fire: {'; '.join(f.problems)}")
        elif f.per_gpu:
            line = f"{head}: covers {len(f.covered & fleet)}/{len(fleet)} GPUs"
            missing = fleet - f.covered
            if missing:
                line += f"; cannot fire on {_where(missing)} (its series are missing there)"
            lines.append(line)
        else:
            lines.append(f"{head}: can fire")
        lines += [f"     note: {n}" for n in f.notes]
        if not ok and f.severity == "critical":
            status = 1
    return "\n".join(lines) + "\n", status
