"""Predictive health: robust trends over Prometheus range queries, time to threshold, risk.

Modules: ``trend`` (the estimator and why), ``forecast`` (time to threshold, confidence, risk),
``prom`` (query_range client), ``specs`` (which series, which threshold from rules/thresholds.yaml),
``report`` (the seed's text report), ``service`` (periodic runner, metrics, migration), ``cli``.
"""
