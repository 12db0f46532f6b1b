"""The one duration grammar of the project: Prometheus' own.

A duration is ``0`` or units from largest to smallest, each at most once, each a whole number:
``1y`` (365 days), ``1w``, ``1d``, ``1h``, ``1m``, ``1s``, ``1ms``; so ``1h30m``, ``90s``,
``500ms``, ``2d``, ``1w2d``. This is ``model.ParseDuration`` of prometheus/common, what
Prometheus accepts in ``for:``, range selectors and its configuration; a thresholds file's
durations go into the generated rules verbatim, so nothing looser may be accepted there.

Where a config accepts a number today (the agent's ``database.retention``, a scenario's ``at``,
``--collector.timeout``) ``seconds()`` also takes a plain number of seconds. JSON Schemas that
describe a duration string use ``PATTERN`` (a test checks that every shipped schema does).
"""

from __future__ import annotations

import math
import re

# The regular expression of prometheus/common's model.ParseDuration, plus "0" (which it accepts
# too) and a lookahead that refuses the empty string. Usable as a JSON Schema "pattern".
PATTERN = r"^(0|(?=[0-9])([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"
_RE = re.compile(PATTERN)
_UNITS_MS = (
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
)
EXAMPLES = "e.g. 15s, 5m, 1h30m, 500ms, 2d"


def parse(text: str) -> float:
    """Seconds in a Prometheus duration string (``"1h30m"`` -> 5400.0, ``"500ms"`` -> 0.5).

    Raises ValueError, saying what to write, on anything else (``"5 minutes"``, ``"1.5h"``,
    ``"30m1h"``, ``""``)."""
    m = _RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not a Prometheus duration: expected {EXAMPLES}")
    total_ms = 0
    for group, (unit, size_ms) in zip(m.groups()[1:], _UNITS_MS, strict=False):
        if group:
            total_ms += int(group[: -len(unit)]) * size_ms
    return total_ms / 1000


def seconds(value: float | int | str) -> float:
    """Seconds in a number (taken as seconds) or a Prometheus duration string.

    Booleans, NaN and infinities are refused: YAML's ``yes`` is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: expected seconds or {EXAMPLES}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration: expected seconds or {EXAMPLES}")
        return float(value)
    return parse(value)


def format_seconds(seconds: float) -> str:
    """Seconds as the shortest exact Prometheus duration in one unit (600 -> ``10m``, 90 ->
    ``90s``, 86400 -> ``1d``, 0.5 -> ``500ms``). Days are the largest unit used."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
