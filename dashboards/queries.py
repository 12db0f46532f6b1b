"""Every PromQL query in a dashboard model, and the same queries with variables filled in.

Grafana expands ``$variables`` before a query reaches Prometheus; promtool, the live check and
the PNG renderer talk to Prometheus directly, so they need the concrete text Grafana would send.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Grafana's built-in variables (always defined by Grafana); ``$__all`` is the "All" selection.
BUILTINS = ("__rate_interval", "__interval", "__range", "__all")

# A name starts with a letter or _: ``$1`` is label_replace's regex group, which Grafana leaves
# alone (it keeps a reference to no variable as written).
_VAR = re.compile(r"\$([A-Za-z_]\w*)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)\s*$")


@dataclass(frozen=True)
class Query:
    """One query and where it lives, e.g. ``panel 9 "Temperature" target A``."""

    where: str
    expr: str
    panel: dict[str, Any] | None = None
    target: dict[str, Any] | None = None


def variables_used(text: str) -> set[str]:
    """Names of the variables referenced in ``text`` in any of Grafana's three syntaxes."""
    return {next(g for g in m.groups() if g) for m in _VAR.finditer(text)}


def substitute(text: str, values: dict[str, str]) -> str:
    """``text`` with every variable replaced by ``values[name]`` (KeyError names a missing one)."""

    def repl(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name not in values:
            raise KeyError(f"no value for variable ${name} in {text!r}")
        return values[name]

    return _VAR.sub(repl, text)


def panel_queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    """Every panel target's expression (rows included, however deeply nested)."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[Query]:
        for p in panels:
            for t in p.get("targets", []):
                yield Query(f'panel {p.get("id")} "{p.get("title")}" target {t.get("refId")}', t["expr"], p, t)
            yield from walk(p.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def annotation_queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    for a in dashboard.get("annotations", {}).get("list", []):
        if "expr" in a:
            yield Query(f'annotation "{a["name"]}"', a["expr"])


def variable_selectors(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(variable name, series selector, label) of every ``label_values(selector, label)`` variable."""
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = _LABEL_VALUES.match(q)
        if not m or not m.group("selector"):
            raise ValueError(f"variable ${v['name']}: expected label_values(selector, label), got {q!r}")
        yield v["name"], m.group("selector"), m.group("label")


def all_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Panel, annotation and variable queries: everything that Grafana sends to Prometheus."""
    out = list(panel_queries(dashboard)) + list(annotation_queries(dashboard))
    out += [Query(f"variable ${name}", selector) for name, selector, _ in variable_selectors(dashboard)]
    return out
