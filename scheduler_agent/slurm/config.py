"""The ``slurm:`` section of the agent's config, validated by ``config.schema.json``.

Validation and defaults go through the shared foundation (``gpuwarden.config``); the schema's
``default``s are the only defaults.

Example (every key optional; the section's presence selects the Slurm backend)::

    slurm:
      scontrol: [sudo, -n, /usr/bin/scontrol]   # argv prefix; never run through a shell
      slurm_conf: /etc/slurm/slurm.conf
      timeout_seconds: 10
      attempts: 3                               # tries per command (transient failures only)
      backoff_seconds: 0.5                      # doubles after each failed try
      node_label: instance                      # or node, when relabelling adds one
      nodes: {"gpu01.example.org:9786": gpu01}  # only where the automatic match fails
      start_requeued_now: true
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpuwarden import config as foundation

from .errors import SlurmError


class SlurmConfigError(SlurmError, foundation.ConfigError):
    """The ``slurm:`` section is invalid (a ``SlurmError`` and the foundation's ``ConfigError``)."""


@dataclass(frozen=True)
class SlurmConfig:
    """The validated section; ``parse`` fills every field (defaults: config.schema.json)."""

    enabled: bool
    scontrol: tuple[str, ...]
    slurm_conf: str | None
    timeout_seconds: float
    attempts: int
    backoff_seconds: float
    node_label: str
    nodes: Mapping[str, str]
    start_requeued_now: bool


def _schema() -> foundation.Schema:
    return foundation.Schema.packaged("gpuwarden.scheduler_agent.slurm", "config.schema.json")


def schema() -> dict[str, Any]:
    return _schema().schema


def parse(section: Mapping[str, Any] | None, error: Callable[[str, str], Exception] | None = None) -> SlurmConfig:
    """Validates the section; ``error(field, message)`` builds the exception (the agent passes
    ``AgentConfig.error``, which names the file and line)."""
    make = error or foundation.section_error(SlurmConfigError)
    doc = foundation.check_section(section, _schema(), "slurm", make)
    return SlurmConfig(
        enabled=bool(doc["enabled"]),
        scontrol=tuple(doc["scontrol"]),
        slurm_conf=doc.get("slurm_conf"),
        timeout_seconds=float(doc["timeout_seconds"]),
        attempts=int(doc["attempts"]),
        backoff_seconds=float(doc["backoff_seconds"]),
        node_label=doc["node_label"],
        nodes=dict(doc["nodes"]),
        start_requeued_now=bool(doc["start_requeued_now"]),
    )
