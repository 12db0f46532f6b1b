"""The ``slurm:`` section of the agent's config, validated by ``config.schema.json``.

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

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Mapping

import jsonschema

from .errors import SlurmError


@dataclass(frozen=True)
class SlurmConfig:
    enabled: bool = True
    scontrol: tuple[str, ...] = ("scontrol",)
    slurm_conf: str | None = None
    timeout_seconds: float = 10.0
    attempts: int = 3
    backoff_seconds: float = 0.5
    node_label: str = "instance"
    nodes: Mapping[str, str] = field(default_factory=dict)
    start_requeued_now: bool = True


def schema() -> dict[str, Any]:
    text = resources.files("gpuwarden.scheduler_agent.slurm").joinpath("config.schema.json").read_text()
    return json.loads(text)


def parse(section: Mapping[str, Any], error: Callable[[str, str], Exception] | None = None
          ) -> SlurmConfig:
    """Validates the section; ``error(field, message)`` builds the exception (the agent passes
    ``AgentConfig.error``, which names the file and line)."""
    make = error or (lambda f, m: SlurmError(f"{f}: {m}"))
    err = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema()).iter_errors(dict(section)))
    if err is not None:
        raise make(".".join(["slurm", *map(str, err.absolute_path)]), err.message)
    return SlurmConfig(
        enabled=bool(section.get("enabled", True)),
        scontrol=tuple(section.get("scontrol", ["scontrol"])),
        slurm_conf=section.get("slurm_conf"),
        timeout_seconds=float(section.get("timeout_seconds", 10)),
        attempts=int(section.get("attempts", 3)),
        backoff_seconds=float(section.get("backoff_seconds", 0.5)),
        node_label=section.get("node_label", "instance"),
        nodes=dict(section.get("nodes", {})),
        start_requeued_now=bool(section.get("start_requeued_now", True)),
    )
