"""Small builders for the Grafana 10 dashboard model (plain dicts, ready for ``json.dumps``).

Only the fields Grafana needs to render a panel the way we want are set; Grafana fills in its
defaults on import. Every panel and every target names the datasource through the ``datasource``
template variable, so one dashboard file works against any Prometheus the operator picks.
Grid positions are given by the caller (``Grid`` places panels left to right, row by row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Grafana 10.4 writes schemaVersion 39; older Grafanas migrate up, never down.
SCHEMA_VERSION = 39
GRID_COLUMNS = 24

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

Json = dict[str, Any]


@dataclass(frozen=True)
class Threshold:
    """A coloured step: values at or above ``value`` take ``color`` (``None`` = the base step)."""

    value: float | None
    color: str


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel. ``instant`` queries feed stats, pies and tables."""

    expr: str
    legend: str = "__auto"
    instant: bool = False
    table: bool = False
    heatmap: bool = False


@dataclass
class Grid:
    """Hands out gridPos boxes left to right, wrapping at 24 columns, so panels never overlap."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    boxes: list[Json] = field(default_factory=list)

    def place(self, w: int, h: int) -> Json:
        if not 0 < w <= GRID_COLUMNS:
            raise ValueError(f"panel width {w} must be between 1 and {GRID_COLUMNS} columns")
        if self.x + w > GRID_COLUMNS:
            self.newline()
        box = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        self.boxes.append(box)
        return box

    def newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0


def _targets(targets: list[Target]) -> list[Json]:
    out = []
    for i, t in enumerate(targets):
        ref = chr(ord("A") + i)
        tgt: Json = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": t.expr,
            "legendFormat": t.legend,
            "range": not t.instant,
            "instant": t.instant,
            "refId": ref,
        }
        if t.table:
            tgt["format"] = "table"
        elif t.heatmap:
            tgt["format"] = "heatmap"
        out.append(tgt)
    return out


def _thresholds(steps: list[Threshold]) -> Json:
    return {"mode": "absolute", "steps": [{"color": s.color, "value": s.value} for s in steps]}


def _panel(
    kind: str,
    title: str,
    description: str,
    grid: Json,
    targets: list[Target],
    unit: str,
    thresholds: list[Threshold],
    options: Json,
    custom: Json | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    decimals: int | None = None,
) -> Json:
    defaults: Json = {
        "unit": unit,
        "color": {"mode": "thresholds" if kind in ("stat", "bargauge") else "palette-classic"},
        "thresholds": _thresholds(thresholds or [Threshold(None, "green")]),
    }
    if custom is not None:
        defaults["custom"] = custom
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": _targets(targets),
    }


def stat(
    title: str,
    description: str,
    grid: Json,
    target: Target,
    unit: str = "short",
    thresholds: list[Threshold] | None = None,
    decimals: int | None = 0,
) -> Json:
    """A single big number (last value), coloured by ``thresholds``."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background",
        "graphMode": "area",
        "justifyMode": "center",
        "textMode": "value",
        "orientation": "auto",
    }
    return _panel("stat", title, description, grid, [target], unit, thresholds or [], options, decimals=decimals)


def timeseries(
    title: str,
    description: str,
    grid: Json,
    targets: list[Target],
    unit: str,
    thresholds: list[Threshold] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    stack: bool = False,
    bars: bool = False,
) -> Json:
    """A graph over time; non-empty ``thresholds`` are drawn as dashed lines across it."""
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
    }
    options = {
        "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    base = [Threshold(None, "green")] + list(thresholds or [])
    return _panel(
        "timeseries",
        title,
        description,
        grid,
        targets,
        unit,
        base if thresholds else [],
        options,
        custom=custom,
        minimum=minimum,
        maximum=maximum,
    )


def piechart(title: str, description: str, grid: Json, target: Target) -> Json:
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "pieType": "donut",
        "displayLabels": ["name", "value"],
        "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "values": ["value", "percent"]},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return _panel("piechart", title, description, grid, [target], "short", [], options)


def bargauge(
    title: str,
    description: str,
    grid: Json,
    target: Target,
    unit: str,
    thresholds: list[Threshold] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Json:
    """Horizontal bars, one per series (last value): a histogram when fed ``le`` buckets."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
    }
    return _panel(
        "bargauge",
        title,
        description,
        grid,
        [target],
        unit,
        thresholds or [],
        options,
        minimum=minimum,
        maximum=maximum,
    )


def table(title: str, description: str, grid: Json, target: Target, hidden: list[str]) -> Json:
    """Instant query shown as rows, one per series, with ``hidden`` columns left out."""
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    panel = _panel("table", title, description, grid, [target], "short", [], options)
    panel["transformations"] = [
        {
            "id": "organize",
            "options": {"excludeByName": {name: True for name in hidden}, "renameByName": {}},
        }
    ]
    return panel


def row(title: str, grid: Json) -> Json:
    """A collapsible section header (rows take no datasource)."""
    return {"type": "row", "title": title, "collapsed": False, "gridPos": grid, "panels": []}


def datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "regex": "",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "includeAll": False,
        "multi": False,
        "options": [],
    }


def query_variable(name: str, label: str, query: str) -> Json:
    """A multi-select ``label_values(...)`` variable whose "All" matches every value (``.*``)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change, so GPUs that appear later show up
        "regex": "",
        "sort": 3,  # numerical ascending: GPU 2 before GPU 10
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "hide": 0,
        "options": [],
    }


def annotation(name: str, expr: str, title: str, text: str, color: str) -> Json:
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "expr": expr,
        "step": "15s",
        "titleFormat": title,
        "textFormat": text,
        "useValueForTime": False,
    }


def builtin_annotation() -> Json:
    """Grafana's own annotations and alerts, kept so hand-made annotations still show."""
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
