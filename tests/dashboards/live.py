"""What the live dashboard tests share: run every query of a dashboard the way its panel does."""

from __future__ import annotations

import math
import time
from typing import Any

from gpuwarden.dashboards import queries
from gpuwarden.prom import PrometheusClient, Series

# $__rate_interval as Grafana would compute it for 1 s scrapes (4 x scrape interval, rounded up).
VALUES = {"instance": ".*", "gpu": ".*", "__rate_interval": "10s", "__interval": "1s", "__range": "5m"}


def has_data(result: list[Series]) -> bool:
    """True when some sample is a number (NaN, e.g. a quantile of nothing, is not data)."""
    return any(not math.isnan(float(v)) for s in result for v in s.values)


def empty_queries(url: str, dashboard: dict[str, Any], since: float) -> list[str]:
    """Where each query returned no data, evaluated like its panel (instant, or over the range)."""
    prom = PrometheusClient(url)
    empty = []
    now = time.time()
    for q in queries.panel_queries(dashboard):
        expr = queries.substitute(q.expr, VALUES)
        if q.target and q.target.get("instant"):
            result = prom.query(expr, at=now)
        else:
            result = prom.query_range(expr, since, now, 1)
        if not has_data(result):
            empty.append(f"{q.where}: {expr}")
    for q in queries.annotation_queries(dashboard):
        expr = queries.substitute(q.expr, VALUES)
        if not has_data(prom.query_range(expr, since, now, 1)):
            empty.append(f"{q.where}: {expr}")
    for name, selector, label in queries.variable_selectors(dashboard):
        values = prom.label_values(label, [queries.substitute(selector, VALUES)])
        if not values:
            empty.append(f"variable ${name}: label_values({selector}, {label})")
    return empty
