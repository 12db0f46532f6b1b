"""Predictive health: per-kind models over Prometheus range queries, time to threshold, risk.

Modules: ``models`` (the per-kind forecast models, fitted to a whole fleet at once, and why),
``forecast`` (time to threshold, confidence, confirmation, risk),
``health`` (risk and migration decisions), ``migrations``, ``specs`` (which series, which threshold from rules/thresholds.yaml),
``report`` (the seed's text report), ``service`` (periodic runner, metrics, migration), ``cli``.
"""
