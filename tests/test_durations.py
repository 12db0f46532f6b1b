"""gpuwarden.durations: the one duration grammar (Prometheus'), used by the thresholds file, the
agent's config, scenarios, the exporter's --collector.timeout and the dashboards' renderer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from gpuwarden import durations

# text -> seconds: what Prometheus' model.ParseDuration accepts.
VALID = [
    ("0", 0.0),
    ("0s", 0.0),
    ("90s", 90.0),
    ("500ms", 0.5),
    ("1m", 60.0),
    ("1h30m", 5400.0),
    ("2d", 172800.0),
    ("1w", 604800.0),
    ("1y", 31536000.0),
    ("1w2d", 777600.0),
    ("1m30s500ms", 90.5),
    ("1y1w1d1h1m1s1ms", 31536000 + 604800 + 86400 + 3600 + 60 + 1 + 0.001),
    ("15s", 15.0),
    ("10m", 600.0),
    ("1500ms", 1.5),
    ("007s", 7.0),
]
# Everything else, including what the three parsers it replaced used to accept (``1.5h`` in
# scenarios and the dashboards' renderer, units in any order in the renderer).
INVALID = [
    "",
    " ",
    "5 minutes",
    "1.5h",
    "0.5s",
    "30m1h",
    "1s1s",
    "1h 30m",
    "ms",
    "s",
    "-1s",
    "+1s",
    "1",
    "10",
    "1H",
    "1sec",
    "90s\n",
    "1d1y",
    "∞",
    "1e3s",
]


@pytest.mark.parametrize("text,seconds", VALID)
def test_valid_durations(text: str, seconds: float) -> None:
    assert durations.parse(text) == pytest.approx(seconds, abs=1e-9)
    assert durations.seconds(text) == pytest.approx(seconds, abs=1e-9)
    assert re.search(durations.PATTERN, text), "the schema pattern accepts what parse accepts"


@pytest.mark.parametrize("text", INVALID)
def test_invalid_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="expected e.g. 15s"):
        durations.parse(text)
    if text != "90s\n":  # JSON Schema's "$" also matches before a final newline; parse() refuses it
        assert not re.search(durations.PATTERN, text), "the schema pattern refuses what parse refuses"


@pytest.mark.parametrize("value,seconds", [(0, 0.0), (30, 30.0), (2.5, 2.5), ("90s", 90.0), ("1w2d", 777600.0)])
def test_numbers_are_seconds_where_configs_accept_numbers(value: Any, seconds: float) -> None:
    assert durations.seconds(value) == seconds


@pytest.mark.parametrize("value", [True, False, float("nan"), float("inf"), None, [1]])
def test_seconds_refuses_what_is_not_a_duration(value: Any) -> None:
    with pytest.raises(ValueError):
        durations.seconds(value)


@pytest.mark.parametrize(
    "seconds,text",
    [
        (600, "10m"),
        (90, "90s"),
        (86400, "1d"),
        (3600.0, "1h"),
        (0, "0s"),
        (604800, "7d"),
        (0.5, "500ms"),
        (1.5, "1500ms"),
        (300, "5m"),
        (45, "45s"),
    ],
)
def test_format_is_the_shortest_exact_duration(seconds: float, text: str) -> None:
    assert durations.format_seconds(seconds) == text
    assert durations.parse(text) == seconds


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


SCHEMAS = [
    ("gpuwarden.rules", "schema.json"),
    ("gpuwarden.exporter.sim", "scenario.schema.json"),
    ("gpuwarden.scheduler_agent", "config.schema.json"),
]


@pytest.mark.parametrize("package,name", SCHEMAS)
def test_every_shipped_schema_spells_durations_with_the_one_pattern(package: str, name: str) -> None:
    schema = json.loads(resources.files(package).joinpath(name).read_text())
    # A duration pattern names units; every one of them must be the grammar's own.
    found = [p for p in _patterns(schema) if re.search(r"\bms\b|\(ms\||[0-9]\+[smhdwy]", p)]
    assert found and set(found) == {durations.PATTERN}, found
