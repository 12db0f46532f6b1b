"""Remediation's Prometheus metrics: one custom collector, read from SQLite at scrape time.

Every figure is derived from the durable tables, so counters survive restarts (they never go
back, which is what ``rate()`` needs) and the metrics cannot disagree with ``/api/v1/actions``.
The queries use the tables' indexes; a scrape costs a few milliseconds.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class RemediationCollector(Collector):
    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock | None = None) -> None:
        self._conn = conn
        self._lock = lock or threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            c = self._conn
            triggered = c.execute(
                "SELECT rule, severity, count(*) FROM remediation_events WHERE status = 'firing' "
                "GROUP BY rule, severity").fetchall()
            active = c.execute(
                "SELECT count(*) FROM remediation_events f WHERE f.status = 'firing' AND NOT "
                "EXISTS (SELECT 1 FROM remediation_events r WHERE r.fingerprint = f.fingerprint "
                "AND r.starts_at = f.starts_at AND r.status = 'resolved')").fetchone()[0]
            actions = c.execute("SELECT action, outcome, count(*) FROM remediation_actions "
                                "GROUP BY action, outcome").fetchall()
            breaker_open = c.execute("SELECT state = 'open' FROM remediation_breaker "
                                     "WHERE id = 1").fetchone()[0]
            pending = c.execute("SELECT count(*) FROM remediation_events "
                                "WHERE processed_at IS NULL").fetchone()[0]
            deliveries = c.execute("SELECT coalesce(sum(deliveries), 0) FROM "
                                   "remediation_events").fetchone()[0]
            notes, truncated = c.execute(
                "SELECT count(*), coalesce(sum(truncated_alerts), 0) FROM "
                "remediation_notifications").fetchone()
            throttled = c.execute("SELECT count(*) FROM remediation_throttles").fetchone()[0]

        m = CounterMetricFamily("alerts_triggered", "Alert instances received firing, each "
                                "(fingerprint, startsAt) counted once.", labels=["rule", "severity"])
        for rule, severity, n in triggered:
            m.add_metric([rule, severity], n)
        yield m
        yield GaugeMetricFamily("alerts_active", "Alert instances firing and not yet resolved.",
                                value=active)
        m = CounterMetricFamily("remediation_actions", "Remediation decisions by action and "
                                "outcome (acted, recorded, noop, dry_run, skipped_budget, "
                                "skipped_breaker, failed, pending).", labels=["action", "outcome"])
        for action, outcome, n in actions:
            m.add_metric([action, outcome], n)
        yield m
        yield GaugeMetricFamily("remediation_breaker_open", "1 while the remediation budget's "
                                "breaker is open (nothing is acted on until a person resets it).",
                                value=breaker_open)
        yield GaugeMetricFamily("remediation_inbox_pending", "Accepted alert instances not yet "
                                "handled by the worker.", value=pending)
        yield CounterMetricFamily("remediation_alert_deliveries", "Alert instances delivered by "
                                  "Alertmanager, duplicates included.", value=deliveries)
        yield CounterMetricFamily("remediation_notifications", "Webhook notifications accepted.",
                                  value=notes)
        yield CounterMetricFamily("remediation_truncated_alerts", "Alerts Alertmanager left out "
                                  "of notifications (truncatedAlerts).", value=truncated)
        yield GaugeMetricFamily("remediation_gpus_throttled", "GPUs whose power limit the agent "
                                "lowered and has not restored yet.", value=throttled)
