"""Scenario files: YAML, validated against scenario.schema.json, played on a Fleet.

A scenario is a timeline of steps (``at`` seconds after it starts, a GPU, one action) and an
optional ``expect`` block saying which alert condition it produces, on which GPU, and from when
to when; tests and end-to-end runs read that block instead of repeating the timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpuwarden import config as foundation
from gpuwarden.config import Document, LineIndex
from gpuwarden.durations import seconds

__all__ = [
    "ACTIONS",
    "Expectation",
    "Scenario",
    "ScenarioError",
    "from_doc",
    "load",
    "parse",
    "play",
    "seconds",
    "shipped",
]

ACTIONS = ("load", "power_limit", "fault", "clear_faults", "release_load")


class ScenarioError(foundation.ConfigError, ValueError):
    """A scenario that cannot be played; each line names the file, line and field."""


@dataclass(frozen=True)
class Expectation:
    rule: str
    gpu: int
    holds_from: float
    holds_until: float


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    gpus: int | None
    model: str | None
    steps: tuple[tuple[float, int | str, str, dict[str, Any]], ...]
    expect: Expectation | None = None
    source: str = "<scenario>"
    doc: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _schema() -> foundation.Schema:
    return foundation.Schema.packaged("gpuwarden.exporter.sim", "scenario.schema.json")


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Parses and validates a scenario document; raises ScenarioError naming what is wrong."""
    doc = foundation.parse_yaml(text, source, ScenarioError)
    return from_doc(doc.data, source, doc.lines)


def from_doc(data: Any, source: str = "<scenario>", lines: LineIndex | None = None) -> Scenario:
    """Validates an already-parsed document (a POST body, for instance); ``lines`` is the YAML
    line index when there is one. Every schema problem is reported at once."""
    doc = Document(source, data, lines or LineIndex())
    problems = _schema().problems(data, doc)
    if problems:
        raise ScenarioError(problems)
    steps = []
    for i, step in enumerate(data["steps"]):
        acts = [a for a in ACTIONS if a in step]
        if len(acts) != 1:
            raise ScenarioError(
                doc.problem(("steps", i), f"needs exactly one of {', '.join(ACTIONS)}; found {acts or 'none'}")
            )
        act = acts[0]
        args = step[act] if isinstance(step[act], dict) else {}
        gpu = step["gpu"]
        if isinstance(gpu, int) and "gpus" in data and gpu >= data["gpus"]:
            raise ScenarioError(
                doc.problem(("steps", i, "gpu"), f"GPU {gpu} does not exist in a fleet of {data['gpus']}")
            )
        steps.append((seconds(step["at"]), gpu, act, dict(args)))
    expect = None
    if "expect" in data:
        e = data["expect"]
        expect = Expectation(e["rule"], e["gpu"], seconds(e["holds_from"]), seconds(e["holds_until"]))
    return Scenario(
        name=data["name"],
        description=data.get("description", ""),
        gpus=data.get("gpus"),
        model=data.get("model"),
        steps=tuple(steps),
        expect=expect,
        source=source,
        doc=data,
    )


def load(path: Path | str) -> Scenario:
    """Reads a scenario file; errors name the file, line and field."""
    doc = foundation.read_yaml(path, ScenarioError)
    return from_doc(doc.data, doc.file, doc.lines)


def shipped() -> dict[str, Path]:
    """The scenario files shipped in exporter/sim/scenarios, by name (file stem)."""
    folder = Path(str(resources.files("gpuwarden.exporter.sim").joinpath("scenarios")))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def play(fleet: Any, scenario: Scenario) -> None:
    """Schedules ``scenario`` on ``fleet``, starting now."""
    fleet.schedule(scenario.steps)
