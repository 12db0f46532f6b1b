"""The predictor's names for the shared Prometheus client (``gpuwarden.prom``): range queries
over urllib, errors translated into ``PrometheusUnavailable`` (try again next period, keep the
last result) and ``PrometheusQueryError`` (our query is wrong, say which)."""

from __future__ import annotations

from gpuwarden.prom import PrometheusClient, PrometheusError, PrometheusQueryError, PrometheusUnavailable, Series

__all__ = ["PrometheusClient", "PrometheusError", "PrometheusQueryError", "PrometheusUnavailable", "Series"]
