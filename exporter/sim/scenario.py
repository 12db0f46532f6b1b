"""Scenario files: YAML, validated against scenario.schema.json, played on a Fleet.

A scenario is a timeline of steps (``at`` seconds after it starts, a GPU, one action) and an
optional ``expect`` block saying which alert condition it produces, on which GPU, and from when
to when; tests and end-to-end runs read that block instead of repeating the timings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ACTIONS = ("load", "power_limit", "fault", "clear_faults", "release_load")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ScenarioError(ValueError):
    """A scenario that cannot be played; the message names the file, line and field."""


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


def seconds(value: float | int | str) -> float:
    """Seconds in a number or a duration string like ``90s`` / ``2m``."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r} (use seconds, or 500ms, 90s, 2m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _schema() -> dict[str, Any]:
    return json.loads(resources.files("gpuwarden.exporter.sim").joinpath("scenario.schema.json").read_text())


_VALIDATOR: jsonschema.protocols.Validator | None = None


def _validator() -> jsonschema.protocols.Validator:
    global _VALIDATOR  # a cache of a constant (the shipped schema), not mutable state
    if _VALIDATOR is None:
        schema = _schema()
        cls = jsonschema.validators.validator_for(schema)
        _VALIDATOR = cls(schema)
    return _VALIDATOR


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _line(node: yaml.Node | None, parts: list[Any]) -> int | None:
    """1-based line of the YAML node at ``parts`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for p in parts:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == p), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(p, int) and p < len(node.value):
            nxt = node.value[p]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Parses and validates a scenario document; raises ScenarioError naming what is wrong."""
    try:
        doc = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from exc
    return from_doc(doc, source, node)


def from_doc(doc: Any, source: str = "<scenario>", node: yaml.Node | None = None) -> Scenario:
    """Validates an already-parsed document (a POST body, for instance)."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # The deepest error is the most specific one ("steps[2].fault.factor"), report it first.
        err = max(errors, key=lambda e: len(e.absolute_path))
        where = _path(err.absolute_path)
        line = _line(node, list(err.absolute_path))
        at = f"{source}:{line}" if line else source
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ScenarioError(f"{at}: {where}: {err.message}{more}")
    steps = []
    for i, step in enumerate(doc["steps"]):
        acts = [a for a in ACTIONS if a in step]
        if len(acts) != 1:
            line = _line(node, ["steps", i])
            at = f"{source}:{line}" if line else source
            raise ScenarioError(f"{at}: steps[{i}]: needs exactly one of {', '.join(ACTIONS)}; found {acts or 'none'}")
        act = acts[0]
        args = step[act] if isinstance(step[act], dict) else {}
        gpu = step["gpu"]
        if isinstance(gpu, int) and "gpus" in doc and gpu >= doc["gpus"]:
            line = _line(node, ["steps", i, "gpu"])
            raise ScenarioError(f"{source}:{line}: steps[{i}].gpu: GPU {gpu} does not exist in a fleet of {doc['gpus']}")
        steps.append((seconds(step["at"]), gpu, act, dict(args)))
    expect = None
    if "expect" in doc:
        e = doc["expect"]
        expect = Expectation(e["rule"], e["gpu"], seconds(e["holds_from"]), seconds(e["holds_until"]))
    return Scenario(name=doc["name"], description=doc.get("description", ""), gpus=doc.get("gpus"),
                    model=doc.get("model"), steps=tuple(steps), expect=expect, source=source, doc=doc)


def load(path: Path | str) -> Scenario:
    """Reads a scenario file; errors name the file, line and field."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read scenario file: {exc.strerror}") from exc
    return parse(text, str(p))


def shipped() -> dict[str, Path]:
    """The scenario files shipped in exporter/sim/scenarios, by name (file stem)."""
    folder = Path(str(resources.files("gpuwarden.exporter.sim").joinpath("scenarios")))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def play(fleet: Any, scenario: Scenario) -> None:
    """Schedules ``scenario`` on ``fleet``, starting now."""
    fleet.schedule(scenario.steps)
