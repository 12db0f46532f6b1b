"""The ``remediation:`` section of the agent's YAML config, validated by ``policy_schema.json``.

Defaults live here, once; a missing key means the default. Errors name the source file and the
field path (``remediation.budget.max_actions_per_minute: 0 is less than the minimum of 1``).

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

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Mapping

import jsonschema

from .errors import PolicyConfigError

ACTIONS = ("notify", "throttle", "preempt", "quarantine")


def schema() -> dict[str, Any]:
    """The JSON Schema of the section (shipped as package data)."""
    text = resources.files("gpuwarden.scheduler_agent.remediation").joinpath("policy_schema.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class Budget:
    max_quarantined_ratio: float = 0.25
    max_throttled_ratio: float = 0.5
    max_actions_per_minute: int = 30


@dataclass(frozen=True)
class Escalation:
    enabled: bool = True
    count: int = 3
    window_seconds: float = 3600.0


@dataclass(frozen=True)
class RemediationConfig:
    dry_run: bool = False
    bearer_token_file: str | None = None
    basic_username: str | None = None
    basic_password_file: str | None = None
    max_body_bytes: int = 1 << 20
    actuator: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    throttle_fraction: float | None = 0.8
    throttle_watts: float | None = None
    hold_down_seconds: float = 300.0
    quarantine_preempts: bool = True
    commands: Mapping[str, list[str]] = field(default_factory=dict)
    rule_actions: Mapping[str, str] = field(default_factory=dict)
    escalation: Escalation = Escalation()
    budget: Budget = Budget()
    poll_interval_seconds: float = 0.5
    start_delay_seconds: float = 0.0


def _where(error: jsonschema.ValidationError) -> str:
    """The field's dotted path (``remediation.commands.quarantine.0``), as the agent's config
    errors spell it so that its line lookup finds it."""
    return ".".join(["remediation", *map(str, error.absolute_path)])


ErrorFactory = Callable[[str, str], Exception]


def parse(section: Mapping[str, Any] | None, source: str = "<config>",
          error: ErrorFactory | None = None) -> RemediationConfig:
    """Validates the section (``None`` = all defaults) and returns the settings.

    ``error(field, message)`` builds the exception to raise (the agent passes
    ``AgentConfig.error``, which adds the file and line); by default ``PolicyConfigError``
    naming ``source`` and the field.
    """
    make = error or (lambda f, m: PolicyConfigError(f"{source}: {f}: {m}"))
    doc = {} if section is None else section
    if not isinstance(doc, Mapping):
        raise make("remediation", f"expected a mapping, got {type(doc).__name__}")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(dict(doc)), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        first = errors[0]
        more = "".join(f"; also {_where(e)}: {e.message}" for e in errors[1:5])
        raise make(_where(first), first.message + more)
    auth = doc.get("auth", {})
    basic = auth.get("basic_auth", {})
    throttle = doc.get("throttle", {})
    worker = doc.get("worker", {})
    if "watts" in throttle:
        fraction, watts = None, float(throttle["watts"])
    else:
        fraction, watts = float(throttle.get("fraction", 0.8)), None
    return RemediationConfig(
        dry_run=bool(doc.get("dry_run", False)),
        bearer_token_file=auth.get("bearer_token_file"),
        basic_username=basic.get("username"),
        basic_password_file=basic.get("password_file"),
        max_body_bytes=int(doc.get("max_body_bytes", 1 << 20)),
        actuator=dict(doc.get("actuator", {"kind": "none"})),
        throttle_fraction=fraction,
        throttle_watts=watts,
        hold_down_seconds=float(throttle.get("hold_down_seconds", 300.0)),
        quarantine_preempts=bool(doc.get("quarantine", {}).get("preempt_jobs", True)),
        commands={k: list(v) for k, v in doc.get("commands", {}).items()},
        rule_actions={k: v["action"] for k, v in doc.get("rules", {}).items()},
        escalation=Escalation(**doc.get("escalation", {})),
        budget=Budget(**doc.get("budget", {})),
        poll_interval_seconds=float(worker.get("poll_interval_seconds", 0.5)),
        start_delay_seconds=float(worker.get("start_delay_seconds", 0.0)),
    )
