"""Remediation's Prometheus metrics: one custom collector, read from SQLite at scrape time.

Every figure is durable, so counters survive restarts (they never go back, which is what
``rate()`` needs). The counts come from ``remediation_counters``, which triggers keep as rows
are written (see ``store``): a scrape reads a few rows whatever the number of stored events, and
pruning old rows (``database.retention``) does not make a counter go back. Label values are
bounded when counted: a ``rule``, ``severity`` or ``action`` the agent does not know (from the
shipped rules and its actions) is counted under ``other``, so alerts with made-up values cannot
add series.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import store


class RemediationCollector(Collector):
    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock | None = None) -> None:
        self._conn = conn
        self._lock = lock or threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            c = self._conn
            counts = store.counters(c)
            breaker_open = c.execute("SELECT state = 'open' FROM remediation_breaker WHERE id = 1").fetchone()[0]
            pending = c.execute("SELECT count(*) FROM remediation_events WHERE processed_at IS NULL").fetchone()[0]
            throttled = c.execute("SELECT count(*) FROM remediation_throttles").fetchone()[0]

        m = CounterMetricFamily(
            "alerts_triggered",
            "Alert instances received firing, each (fingerprint, startsAt) counted once.",
            labels=["rule", "severity"],
        )
        for rule, severity, n in sorted(counts.get("alerts_triggered", [])):
            m.add_metric([rule, severity], n)
        yield m
        yield GaugeMetricFamily(
            "alerts_active", "Alert instances firing and not yet resolved.", value=_total(counts, "alerts_active")
        )
        m = CounterMetricFamily(
            "remediation_actions",
            "Remediation decisions by action and "
            "outcome (acted, recorded, noop, dry_run, skipped_budget, "
            "skipped_breaker, failed, uncertain, pending).",
            labels=["action", "outcome"],
        )
        for action, outcome, n in sorted(counts.get("actions", [])):
            m.add_metric([action, outcome], n)
        yield m
        yield GaugeMetricFamily(
            "remediation_breaker_open",
            "1 while the remediation budget's breaker is open (nothing is acted on until a person resets it).",
            value=breaker_open,
        )
        yield GaugeMetricFamily(
            "remediation_inbox_pending", "Accepted alert instances not yet handled by the worker.", value=pending
        )
        yield CounterMetricFamily(
            "remediation_alert_deliveries",
            "Alert instances delivered by Alertmanager, duplicates included.",
            value=_total(counts, "alert_deliveries"),
        )
        yield CounterMetricFamily(
            "remediation_notifications", "Webhook notifications accepted.", value=_total(counts, "notifications")
        )
        yield CounterMetricFamily(
            "remediation_truncated_alerts",
            "Alerts Alertmanager left out of notifications (truncatedAlerts).",
            value=_total(counts, "truncated_alerts"),
        )
        yield GaugeMetricFamily(
            "remediation_gpus_throttled",
            "GPUs whose power limit the agent lowered and has not restored yet.",
            value=throttled,
        )


def _total(counts: dict[str, list[tuple[str, str, int]]], name: str) -> int:
    return sum(n for _a, _b, n in counts.get(name, []))
