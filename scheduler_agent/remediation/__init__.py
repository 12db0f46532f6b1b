"""Alertmanager webhook intake and remediation (throttle, preempt, quarantine).

Flow: ``intake`` (auth, v4 validation, durable inbox keyed by (fingerprint, startsAt, status))
→ ``worker`` (policy, escalation, ``budget`` breaker, dry-run) → the scheduler through the
``port.SchedulerPort`` operations and the power-limit ``actuators`` → the audit trail
(``remediation_actions``, ``GET /api/v1/actions``), ``metrics`` and ``alert.<rule>`` spans.
``service.Remediation`` assembles the parts; ``config`` validates the ``remediation:`` section.
"""
