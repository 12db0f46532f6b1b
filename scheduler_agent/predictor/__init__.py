"""Predictive health: robust trends over Prometheus range queries, time to threshold, risk.

Modules: ``models`` (the per-kind forecast models, fitted to a whole fleet at once, and why),
``trend`` (the Theil–Sen estimator the report's slope interval uses), ``forecast`` (time to threshold, confidence, risk),
``prom`` (query_range client), ``specs`` (which series, which threshold from rules/thresholds.yaml),
``report`` (the seed's text report), ``service`` (periodic runner, metrics, migration), ``cli``.
"""
