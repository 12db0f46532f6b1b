"""The "GPU fleet" dashboard: the seed's panels, the forecasts and XID errors, as Grafana JSON.

One set of panel definitions, built for either metrics source (``gpuwarden.sources``): the GPU
series come from ``sources.signal`` (and, where a panel needs a range, ``sources.raw``), so this
module names no exporter metric of its own; each source's dashboard selects its scrape job the
way the rules do. Per-GPU series are aggregated ``by (instance, gpu)`` with ``max`` because
dcgm-exporter repeats a GPU's device fields on each MIG instance's (and pod's) series; for
gpuwarden-exporter, one series per GPU, the aggregation changes nothing.

Every per-GPU series is filtered by the ``instance`` and ``gpu`` variables: the exporter's, the
predictor's (risk, forecasts) and the agent's (gpu_state, gpu_allocation_info) all carry the
GPU's Prometheus ``instance`` (the agent's scrape job keeps them with ``honor_labels``). The
agent's series are matched by ``instance``, or else by ``uuid`` against the exporter's gpu_info:
a static inventory may name a node otherwise (``node-a`` for ``10.0.0.5:9835``) without saying
its instance, and the uuid is the same everywhere.

Threshold lines are each GPU's own: the recorded ``instance_gpu:gpu_alert_threshold:effective``
series of its rules (its model's profile), drawn dashed, never literals here. The rules config
(``Thresholds.from_rules``) must hold every rule the panels draw, and the default profile's values
are quoted in the panels' descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpuwarden import sources
from gpuwarden.rules.promql import THRESHOLD_RECORD

from . import grafana as g
from .grafana import Grid, Target, Threshold

# Per source: the dashboard's uid, title and tags (two dashboards may be provisioned side by side).
UID = {"gpuwarden": "gpuwarden-fleet", "dcgm-exporter": "gpuwarden-fleet-dcgm"}
TITLE = {"gpuwarden": "GPU fleet (gpuwarden)", "dcgm-exporter": "GPU fleet (gpuwarden on dcgm-exporter)"}
TAGS = {"gpuwarden": ["gpu", "gpuwarden", "nvml"], "dcgm-exporter": ["gpu", "gpuwarden", "dcgm-exporter"]}

# The agent's and the predictor's per-GPU series: scraped from the agent (its own job), they
# carry the GPU's instance (honor_labels), so only the variables select them.
GPU = '{instance=~"$instance", gpu=~"$gpu"}'
WHO = "{{instance}} GPU {{gpu}}"
AGENT_ACTIVE = "agent: alerts active"

# Colours named by Grafana's palette.
OK, INFO, WARN, CRIT = "green", "blue", "orange", "red"


class DashboardConfigError(Exception):
    """The rules config lacks something the dashboard draws (names the rule and what to do)."""


@dataclass(frozen=True)
class Reader:
    """How the panels read one source's GPU series: its scrape job plus the two variables."""

    source: str
    job_selector: str

    @property
    def matchers(self) -> str:
        return f'{self.job_selector}, instance=~"$instance", gpu=~"$gpu"'

    def signal(self, name: str) -> str:
        """``sources.signal`` for the selected GPUs (lowercase instance, gpu, uuid; our units)."""
        return sources.signal(self.source, name, self.matchers)

    def per_gpu(self, name: str) -> str:
        """One series per selected GPU of signal ``name``."""
        return f"max by (instance, gpu) ({self.signal(name)})"

    def over_range(self, function: str, metric: str, window: str, args: str = "", by: str = "instance, gpu") -> str:
        """``function(series[window]args)`` per GPU over gpuwarden-exporter's ``metric`` as the
        source names it (a range needs the raw selector: ``signal`` is an expression)."""
        raw = sources.raw(self.source, metric)
        if raw.sum_of:
            raise ValueError(f"{metric} is a sum of series in {self.source}: no range over it")
        sel = sources.selector(raw.names, self.matchers, raw.matchers)
        expr = f"{function}({sel}[{window}]{args})"
        if raw.blank is not None:
            # A range cannot drop DCGM's blank samples; a field blank now is one the GPU lacks.
            expr = f"({expr} and {sel} < {sources.number(raw.blank)})"
        if raw.scale != 1:
            expr = f"{expr} * {sources.number(raw.scale)}"
        return f"max by ({by}) ({expr})"

    def xid_events(self) -> str:
        """XID events per ``$__rate_interval`` per GPU and XID code. gpuwarden-exporter counts
        them (``xid`` label); dcgm-exporter's field is the GPU's last XID, a gauge: there an
        event is a change of it, labelled with the value it changed to (0, no XID yet, left out)."""
        if self.source == "gpuwarden":
            return self.over_range("increase", "gpu_xid_errors_total", "$__rate_interval", by="instance, gpu, xid")
        raw = sources.raw(self.source, "gpu_xid_errors_total")
        last = sources.selector(raw.names, self.matchers)
        valid = f"{last} > 0" if raw.blank is None else f"({last} > 0) < {sources.number(raw.blank)}"
        return (
            f"max by (instance, gpu, xid) (changes({last}[$__rate_interval]) "
            f'* ignoring (xid) group_left (xid) count_values without () ("xid", {valid}))'
        )

    def series_selector(self, matchers: str) -> str:
        """A series selector of every GPU the exporter reports (Grafana's ``label_values`` takes
        selectors, not expressions): gpu_info, or dcgm-exporter's always-present fields."""
        names = ("gpu_info",) if self.source == "gpuwarden" else sources.DCGM_PRESENCE
        return sources.selector(names, matchers)

    def agent_gpu(self, metric: str) -> str:
        """The agent's per-GPU ``metric`` for the selected GPUs: by its ``instance``, or, where a
        static inventory did not say a node's instance, by ``uuid`` against the exporter's GPUs
        (``or`` keeps a GPU matched both ways once)."""
        return f"({metric}{GPU} or {metric} * on (uuid) group_left () group by (uuid) ({self.signal('identity')}))"

    def thresholds(self, *rules: str) -> str:
        """Each selected GPU's recorded threshold of ``rules`` (its own profile's), one series per
        GPU and rule (dcgm-exporter's records repeat per MIG instance)."""
        return f'max by (instance, gpu, rule) ({THRESHOLD_RECORD}{{rule=~"{"|".join(rules)}", {self.matchers}}})'

    def own_thresholds(self, *rules: str) -> Target:
        return Target(self.thresholds(*rules), WHO + " {{rule}}")

    def reads(self, *metrics: str) -> str:
        """For dcgm-exporter, a sentence naming the fields a panel reads (several are not in its
        default counters); nothing for gpuwarden-exporter, whose names the queries show."""
        if self.source == "gpuwarden":
            return ""
        names = sorted({n for m in metrics for r in [sources.raw(self.source, m)] for n in (*r.names, *r.sum_of)})
        return f" dcgm-exporter fields: {', '.join(names)}."


def _with_threshold_style(panel: dict[str, Any], colours: dict[str, str]) -> dict[str, Any]:
    """Draws the threshold series of ``own_thresholds`` dashed, coloured by rule."""
    for rule, colour in colours.items():
        panel["fieldConfig"]["overrides"].append(
            {
                "matcher": {"id": "byRegexp", "options": f".* {rule}$"},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": colour}},
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    {"id": "custom.lineWidth", "value": 1},
                ],
            }
        )
    return panel


@dataclass(frozen=True)
class Thresholds:
    """The alert thresholds the dashboard draws as lines, in the metrics' base units."""

    temperature_warning: float  # THERMAL_WARNING, °C
    temperature_critical: float  # THERMAL_CRITICAL, °C
    power_warning: float  # POWER_SPIKE, W
    power_critical: float  # POWER_CRITICAL, W
    memory_pressure: float  # MEMORY_PRESSURE, used/total ratio

    RULES = {
        "temperature_warning": "THERMAL_WARNING",
        "temperature_critical": "THERMAL_CRITICAL",
        "power_warning": "POWER_SPIKE",
        "power_critical": "POWER_CRITICAL",
        "memory_pressure": "MEMORY_PRESSURE",
    }

    @classmethod
    def from_rules(cls, config: Any, source: str = "rules/thresholds.yaml") -> Thresholds:
        """Reads each line's value from ``config.alerts[rule].threshold`` (a rules.config.RulesConfig)."""
        values: dict[str, float] = {}
        for name, rule in cls.RULES.items():
            alert = config.alerts.get(rule)
            if alert is None:
                raise DashboardConfigError(
                    f"{source}: no alert {rule!r}; the dashboard draws its {name.replace('_', ' ')} "
                    f"line from it. Restore the rule or change dashboards/fleet.py."
                )
            values[name] = float(alert.threshold)
        return cls(**values)


def build(th: Thresholds, source: str = "gpuwarden", job_selector: str | None = None) -> dict[str, Any]:
    """The whole dashboard model for ``source`` (its exporter's scrape job: ``job_selector``, by
    default the source's usual one); equal inputs give equal output (the committed file is diffed)."""
    src = Reader(sources.check(source), job_selector or sources.default_job_selector(source))
    grid = Grid()
    panels: list[dict[str, Any]] = []

    def section(title: str) -> None:
        if grid.x:
            grid.newline()
        panels.append(g.row(title, grid.place(24, 1)))
        grid.newline()

    # 1. Cluster GPU status (four stats) + 6. job queue status (three stats) + firing alerts.
    section("Fleet")
    panels += [
        # The agent exports the seed's cluster_gpus_total as the gauge cluster_gpus (a gauge
        # may not end in _total).
        g.stat(
            "GPUs total",
            "GPUs the agent's scheduler knows about.",
            grid.place(3, 4),
            Target("sum(cluster_gpus)", instant=True),
            thresholds=[Threshold(None, INFO)],
        ),
        g.stat(
            "GPUs available",
            "GPUs free for new jobs: healthy, not quarantined, not allocated.",
            grid.place(3, 4),
            Target("sum(cluster_gpus_available)", instant=True),
            thresholds=[Threshold(None, WARN), Threshold(1, OK)],
        ),
        g.stat(
            "GPUs allocated",
            "GPUs running jobs.",
            grid.place(3, 4),
            Target("sum(cluster_gpus_allocated)", instant=True),
            thresholds=[Threshold(None, INFO)],
        ),
        g.stat(
            "GPUs unhealthy",
            "GPUs quarantined or with a firing critical alert.",
            grid.place(3, 4),
            Target("sum(cluster_gpus_unhealthy)", instant=True),
            thresholds=[Threshold(None, OK), Threshold(1, CRIT)],
        ),
        g.stat(
            "Jobs pending",
            "Jobs waiting in the queue, preempted jobs included.",
            grid.place(3, 4),
            Target("sum(jobs_pending)", instant=True),
            thresholds=[Threshold(None, OK), Threshold(10, WARN)],
        ),
        g.stat(
            "Jobs running",
            "Jobs holding GPUs now.",
            grid.place(3, 4),
            Target("sum(jobs_running)", instant=True),
            thresholds=[Threshold(None, INFO)],
        ),
        g.stat(
            "Jobs failed",
            "Jobs that exited with an error in the selected time range.",
            grid.place(3, 4),
            Target("sum(increase(jobs_failed_total[$__range]))", instant=True),
            thresholds=[Threshold(None, OK), Threshold(1, CRIT)],
        ),
        g.stat(
            "Alerts firing",
            "GPU alerts firing in Prometheus now (0 when none).",
            grid.place(3, 4),
            Target('count(ALERTS{alertstate="firing", rule!="", instance=~"$instance"}) or vector(0)', instant=True),
            thresholds=[Threshold(None, OK), Threshold(1, CRIT)],
        ),
    ]

    # 2. Temperature trends + 3. power consumption, threshold lines from the alert rules.
    section("Thermals and power")
    panels += [
        _with_threshold_style(
            g.timeseries(
                "Temperature",
                f"GPU core temperature, and dashed each GPU's own THERMAL_WARNING and THERMAL_CRITICAL "
                f"thresholds (its model's profile; the default profile's: >= {th.temperature_warning:g} °C "
                f"and > {th.temperature_critical:g} °C).{src.reads('gpu_temperature_celsius')}",
                grid.place(12, 8),
                [
                    Target(src.per_gpu("temperature_celsius"), WHO),
                    src.own_thresholds("THERMAL_WARNING", "THERMAL_CRITICAL"),
                ],
                "celsius",
            ),
            {"THERMAL_WARNING": WARN, "THERMAL_CRITICAL": CRIT},
        ),
        _with_threshold_style(
            _with_limit_style(
                g.timeseries(
                    "Power",
                    f"Board power draw, the enforced power limit (a throttle lowers it), and dashed "
                    f"each GPU's own POWER_SPIKE and POWER_CRITICAL thresholds (the default profile's: "
                    f"> {th.power_warning:g} W and >= {th.power_critical:g} W)."
                    f"{src.reads('gpu_power_watts', 'gpu_power_limit_watts')}",
                    grid.place(12, 8),
                    [
                        Target(src.per_gpu("power_watts"), WHO),
                        Target(src.per_gpu("power_limit_watts"), WHO + " limit"),
                        src.own_thresholds("POWER_SPIKE", "POWER_CRITICAL"),
                    ],
                    "watt",
                )
            ),
            {"POWER_SPIKE": WARN, "POWER_CRITICAL": CRIT},
        ),
        # The same thresholds as a share: which GPU is closest to its own line.
        g.bargauge(
            "Share of its own critical threshold",
            "Each GPU's temperature and power as a share "
            "of the THERMAL_CRITICAL and POWER_CRITICAL thresholds its own alerts use (its model's "
            "profile, relative to its own limits: instance_gpu:gpu_alert_threshold:effective). "
            "100 % is where the alert's condition holds.",
            grid.place(24, 6),
            Target(
                " or ".join(
                    f"{src.per_gpu(signal)} / on (instance, gpu) group_left (rule) {src.thresholds(rule)}"
                    for signal, rule in (
                        ("temperature_celsius", "THERMAL_CRITICAL"),
                        ("power_watts", "POWER_CRITICAL"),
                    )
                ),
                WHO + " {{rule}}",
                instant=True,
            ),
            "percentunit",
            thresholds=[Threshold(None, OK), Threshold(0.9, WARN), Threshold(1, CRIT)],
            minimum=0,
            maximum=1.1,
        ),
    ]

    # 4. Utilization + 5. memory pressure.
    section("Load")
    panels += [
        g.timeseries(
            "Utilization",
            f"Share of time a kernel ran on the GPU.{src.reads('gpu_utilization_ratio')}",
            grid.place(8, 8),
            [Target(src.per_gpu("utilization_ratio"), WHO)],
            "percentunit",
            minimum=0,
            maximum=1,
        ),
        _with_threshold_style(
            g.timeseries(
                "Memory pressure",
                f"Framebuffer memory used / total, and dashed each GPU's own MEMORY_PRESSURE threshold "
                f"(the default profile's: >= {th.memory_pressure:.0%})."
                f"{src.reads('gpu_memory_used_bytes', 'gpu_memory_total_bytes')}",
                grid.place(8, 8),
                [
                    # The ratio per series first: a MIG instance's memory is its own.
                    Target(
                        f"max by (instance, gpu) ({src.signal('memory_used_bytes')} / "
                        f"{src.signal('memory_total_bytes')})",
                        WHO,
                    ),
                    src.own_thresholds("MEMORY_PRESSURE"),
                ],
                "percentunit",
                minimum=0,
                maximum=1,
            ),
            {"MEMORY_PRESSURE": WARN},
        ),
        g.timeseries(
            "Memory used",
            "Framebuffer memory in use (per GPU; in MIG mode, the largest instance's)."
            f"{src.reads('gpu_memory_used_bytes')}",
            grid.place(8, 8),
            [Target(src.per_gpu("memory_used_bytes"), WHO)],
            "bytes",
            minimum=0,
        ),
    ]

    # 9. ECC errors trending + XID errors + throttling.
    section("Reliability")
    panels += [
        g.timeseries(
            "ECC errors",
            "New ECC errors per interval (volatile counts; a driver reload resets "
            "them). Any uncorrectable error quarantines the GPU."
            f"{src.reads('gpu_ecc_errors_correctable_total', 'gpu_ecc_errors_uncorrectable_total')}",
            grid.place(8, 8),
            [
                Target(src.over_range("increase", f"gpu_ecc_errors_{kind}_total", "$__rate_interval"), f"{WHO} {kind}")
                for kind in ("correctable", "uncorrectable")
            ],
            "short",
            minimum=0,
        ),
        g.timeseries(
            "XID errors",
            "NVIDIA driver XID events per interval, by XID code (e.g. 48 double-bit ECC, 79 fallen off the bus)."
            + (
                ""
                if src.source == "gpuwarden"
                else " dcgm-exporter reports each GPU's last XID only (DCGM_FI_DEV_XID_ERRORS): an event here "
                "is a change of it, so the same XID twice in a row shows once."
            ),
            grid.place(8, 8),
            [Target(src.xid_events(), WHO + " XID {{xid}}")],
            "short",
            minimum=0,
            bars=True,
        ),
        g.timeseries(
            "Throttling",
            "1 while any clock-event reason that means throttling is active on the GPU "
            f"({', '.join(sources.THROTTLING_REASONS)}); the THROTTLING alert fires when it stays 1. "
            + (
                "gpu_throttle_active{reason} on the node says which."
                if src.source == "gpuwarden"
                else f"The reasons are bits of {' or '.join(sources.raw(src.source, 'gpu_throttle_active').names)}."
            ),
            grid.place(8, 8),
            [Target(src.per_gpu("throttle_active"), WHO)],
            "short",
            minimum=0,
            maximum=1,
        ),
    ]

    # 8. Active alerts.
    section("Alerts")
    panels += [
        g.timeseries(
            "Active alerts",
            "Firing alerts in Prometheus by rule, and the alerts the agent "
            "holds active (after intake; a gap between them means webhooks are not arriving).",
            grid.place(12, 8),
            [
                Target(
                    'count by (rule, severity) (ALERTS{alertstate="firing", rule!="", '
                    'instance=~"$instance", gpu=~"$gpu"})',
                    "{{rule}} ({{severity}})",
                ),
                Target("sum(alerts_active)", AGENT_ACTIVE),
            ],
            "short",
            minimum=0,
            stack=True,
        ),
    ]
    panels[-1]["fieldConfig"]["overrides"].append(
        {  # the agent's count is a total, not a layer
            "matcher": {"id": "byName", "options": AGENT_ACTIVE},
            "properties": [
                {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            ],
        }
    )
    panels += [
        g.table(
            "Firing alerts",
            "Every firing alert with its GPU and the action it asks the agent for.",
            grid.place(12, 8),
            Target(
                'ALERTS{alertstate="firing", rule!="", instance=~"$instance", gpu=~"$gpu"}', instant=True, table=True
            ),
            hidden=["Time", "Value", "__name__", "alertstate", "job"],
        ),
    ]

    # 7. Job execution time + 10. GPU state distribution.
    section("Jobs")
    panels += [
        g.timeseries(
            "Job execution time",
            "Run time of finished jobs (quantiles of job_duration_seconds).",
            grid.place(12, 8),
            [
                Target(
                    f"histogram_quantile({q}, sum by (le) (rate(job_duration_seconds_bucket[$__rate_interval])))",
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            "s",
            minimum=0,
        ),
        g.bargauge(
            "Job execution time distribution",
            "Finished jobs per run-time bucket in the selected time range.",
            grid.place(6, 8),
            Target(
                "sum by (le) (increase(job_duration_seconds_bucket[$__range]))", "{{le}}", instant=True, heatmap=True
            ),
            "short",
            thresholds=[Threshold(None, INFO)],
            minimum=0,
        ),
        g.piechart(
            "GPU state distribution",
            "GPUs per scheduler state (the agent's gpu_state), matched to the selected nodes by "
            "instance, or by uuid where a static inventory names a node otherwise.",
            grid.place(6, 8),
            Target(f"sum by (state) ({src.agent_gpu('gpu_state')})", "{{state}}", instant=True),
        ),
        g.table(
            "GPU allocations",
            "Which job holds which GPU (the agent's gpu_allocation_info: the embedded scheduler's "
            "jobs and, with the Slurm backend, Slurm's).",
            grid.place(24, 7),
            Target(src.agent_gpu("gpu_allocation_info"), instant=True, table=True),
            hidden=["Time", "Value", "__name__", "job"],
        ),
    ]

    # Forecasts: the agent's predictor and Prometheus' own linear extrapolation.
    section("Forecasts")
    panels += [
        g.bargauge(
            "Time to threshold",
            "The agent's predicted time until each trending metric crosses its alert threshold.",
            grid.place(8, 8),
            Target(
                f"min by (instance, gpu, metric) (gpu_predicted_seconds_to_threshold{GPU})",
                WHO + " {{metric}}",
                instant=True,
            ),
            "s",
            thresholds=[Threshold(None, CRIT), Threshold(900, WARN), Threshold(3600, OK)],
            minimum=0,
        ),
        g.timeseries(
            "Failure risk",
            "The agent's 0-1 failure risk score per GPU (trend, alerts and error history).",
            grid.place(8, 8),
            [Target(f"max by (instance, gpu) (gpu_failure_risk_score{GPU})", WHO)],
            "percentunit",
            minimum=0,
            maximum=1,
        ),
        _with_threshold_style(
            g.timeseries(
                "Temperature in 15 minutes",
                "predict_linear over the last 10 minutes, 15 minutes ahead; lines as on the temperature panel.",
                grid.place(8, 8),
                [
                    Target(src.over_range("predict_linear", "gpu_temperature_celsius", "10m", ", 900"), WHO),
                    src.own_thresholds("THERMAL_WARNING", "THERMAL_CRITICAL"),
                ],
                "celsius",
            ),
            {"THERMAL_WARNING": WARN, "THERMAL_CRITICAL": CRIT},
        ),
    ]

    for i, panel in enumerate(panels, start=1):
        panel["id"] = i
    nodes = src.series_selector(src.job_selector)
    node_gpus = src.series_selector(f'{src.job_selector}, instance=~"$instance"')

    return {
        "uid": UID[src.source],
        "title": TITLE[src.source],
        "description": f"GPUs read from {src.source} ({src.job_selector}). Generated by dashboards/generate.py "
        "from rules/thresholds.yaml; edit those, not this file, and run `python -m gpuwarden.dashboards.generate`.",
        "tags": TAGS[src.source],
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: line an alert up with temperature and power
        "refresh": "5s",
        "schemaVersion": g.SCHEMA_VERSION,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "version": 1,
        "annotations": {
            "list": [
                g.builtin_annotation(),
                g.annotation(
                    "Firing alerts",
                    'ALERTS{alertstate="firing", rule!="", instance=~"$instance", gpu=~"$gpu"}',
                    "{{rule}} ({{severity}})",
                    "GPU {{gpu}} on {{instance}}: {{action}}",
                    "red",
                ),
            ]
        },
        "templating": {
            "list": [
                g.datasource_variable(),
                g.query_variable("instance", "Node", f"label_values({nodes}, instance)"),
                g.query_variable("gpu", "GPU", f"label_values({node_gpus}, gpu)"),
            ]
        },
        "panels": panels,
    }


def _with_limit_style(panel: dict[str, Any]) -> dict[str, Any]:
    """Draws the power-limit series dashed so a throttle reads as the limit stepping down."""
    panel["fieldConfig"]["overrides"].append(
        {
            "matcher": {"id": "byRegexp", "options": ".* limit$"},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
        }
    )
    return panel
