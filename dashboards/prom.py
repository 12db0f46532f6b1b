"""A minimal Prometheus HTTP API client (query, query_range, scrape config) for the renderer.

Kept apart from the renderer so that tests and the renderer share one place that turns
Prometheus' answers (and its errors) into Python values.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import yaml


class PrometheusError(Exception):
    """Prometheus could not be reached or rejected a query (the message names which)."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    times: list[float]   # unix seconds
    values: list[float]  # NaN where Prometheus answered NaN or ±Inf (nothing to draw)


def _number(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else math.nan


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                body = json.load(exc)
            except ValueError:
                raise PrometheusError(f"{url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"cannot query Prometheus at {self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus rejected {params.get('query', path)!r}: "
                                  f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            t, v = data["result"]
            return [Series({}, [float(t)], [_number(v)])]
        return [Series(r["metric"], [float(r["value"][0])], [_number(r["value"][1])])
                for r in data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}",
                                                 "end": f"{end:.3f}", "step": f"{step:g}"})
        return [Series(r["metric"], [float(t) for t, _ in r["values"]],
                       [_number(v) for _, v in r["values"]]) for r in data["result"]]

    def scrape_interval(self, default: float = 15.0) -> float:
        """The shortest scrape interval in Prometheus' loaded config (what $__rate_interval needs)."""
        try:
            config = yaml.safe_load(self._get("/api/v1/status/config", {})["yaml"]) or {}
        except (PrometheusError, yaml.YAMLError):
            return default
        found = [parse_duration(c["scrape_interval"]) for c in config.get("scrape_configs", [])
                 if c.get("scrape_interval")]
        glob = (config.get("global") or {}).get("scrape_interval")
        if glob:
            found.append(parse_duration(glob))
        return min(found) if found else default


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``15s``, ``1m30s`` or ``2h``."""
    total, number, i = 0.0, "", 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in _UNITS or not number:
            raise ValueError(f"bad duration {text!r}: expected e.g. 15s, 5m, 1h30m")
        total += float(number) * _UNITS[unit]
        number = ""
        i += len(unit)
    if number:
        raise ValueError(f"bad duration {text!r}: number {number} has no unit (s, m, h, d)")
    return total


def format_duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds`` (whole seconds, at least 1s)."""
    return f"{max(1, int(round(seconds)))}s"
