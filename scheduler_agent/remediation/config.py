"""The ``remediation:`` section of the agent's YAML config, validated by ``policy_schema.json``.

Validation and defaults go through the shared foundation (``gpuwarden.config``): the schema's
``default``s are the only defaults (a missing key means the default written there). Errors name
the source file, the line (in the agent) and the field path
(``remediation.budget.max_actions_per_minute: 0 is less than the minimum of 1``), every problem
at once.

Example (every key optional)::

    remediation:
      dry_run: false
      auth: {bearer_token_file: /etc/gpuwarden/webhook.token}
      max_body_bytes: 1048576
      actuator: {kind: sim, sim_url: "http://127.0.0.1:9788"}
      throttle: {fraction: 0.8, hold_down_seconds: 300}
      quarantine: {preempt_jobs: true}
      escalation: {enabled: true, count: 3, window_seconds: 3600}
      budget: {max_quarantined_ratio: 0.25, max_throttled_ratio: 0.5, max_actions_per_minute: 30}
      rules: {POWER_SPIKE: {action: notify}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpuwarden import config as foundation

from .errors import PolicyConfigError

ACTIONS = ("notify", "throttle", "preempt", "quarantine")


def _schema() -> foundation.Schema:
    return foundation.Schema.packaged("gpuwarden.scheduler_agent.remediation", "policy_schema.json")


def schema() -> dict[str, Any]:
    """The JSON Schema of the section (shipped as package data)."""
    return _schema().schema


@dataclass(frozen=True)
class Budget:
    max_quarantined_ratio: float
    max_throttled_ratio: float
    max_actions_per_minute: int


@dataclass(frozen=True)
class Escalation:
    enabled: bool
    count: int
    window_seconds: float


@dataclass(frozen=True)
class RemediationConfig:
    """The validated section; ``parse`` fills every field (defaults: policy_schema.json)."""

    dry_run: bool
    bearer_token_file: str | None
    basic_username: str | None
    basic_password_file: str | None
    max_body_bytes: int
    actuator: Mapping[str, Any]
    throttle_fraction: float | None  # None when throttle.watts is set
    throttle_watts: float | None
    hold_down_seconds: float
    quarantine_preempts: bool
    commands: Mapping[str, list[str]]
    rule_actions: Mapping[str, str]
    escalation: Escalation
    budget: Budget
    poll_interval_seconds: float
    start_delay_seconds: float


ErrorFactory = Callable[[str, str], Exception]


def parse(
    section: Mapping[str, Any] | None, source: str = "<config>", error: ErrorFactory | None = None
) -> RemediationConfig:
    """Validates the section (``None`` = all defaults) and returns the settings.

    ``error(field, message)`` builds the exception to raise (the agent passes
    ``AgentConfig.error``, which adds the file and line); by default ``PolicyConfigError``
    naming ``source`` and the field.
    """
    make = error or foundation.section_error(PolicyConfigError, source)
    doc = foundation.check_section(section, _schema(), "remediation", make)
    auth, throttle, worker = doc["auth"], doc["throttle"], doc["worker"]
    basic = auth.get("basic_auth", {})
    esc, budget = doc["escalation"], doc["budget"]
    return RemediationConfig(
        dry_run=bool(doc["dry_run"]),
        bearer_token_file=auth.get("bearer_token_file"),
        basic_username=basic.get("username"),
        basic_password_file=basic.get("password_file"),
        max_body_bytes=int(doc["max_body_bytes"]),
        actuator=dict(doc["actuator"]),
        # fraction's default applies unless watts is given (the schema refuses both).
        throttle_fraction=None if "watts" in throttle else float(throttle["fraction"]),
        throttle_watts=float(throttle["watts"]) if "watts" in throttle else None,
        hold_down_seconds=float(throttle["hold_down_seconds"]),
        quarantine_preempts=bool(doc["quarantine"]["preempt_jobs"]),
        commands={k: list(v) for k, v in doc["commands"].items()},
        rule_actions={k: v["action"] for k, v in doc["rules"].items()},
        escalation=Escalation(
            enabled=bool(esc["enabled"]), count=int(esc["count"]), window_seconds=float(esc["window_seconds"])
        ),
        budget=Budget(
            max_quarantined_ratio=float(budget["max_quarantined_ratio"]),
            max_throttled_ratio=float(budget["max_throttled_ratio"]),
            max_actions_per_minute=int(budget["max_actions_per_minute"]),
        ),
        poll_interval_seconds=float(worker["poll_interval_seconds"]),
        start_delay_seconds=float(worker["start_delay_seconds"]),
    )
