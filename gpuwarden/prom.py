"""The one Prometheus HTTP API client: instant and range queries, series, label values, alerts,
the loaded configuration. The predictor, the dashboards' renderer and live checks, and the agent's
inventory discovery all read Prometheus through it.

Why not a library: ``prometheus-api-client`` (the maintained one) pulls pandas, matplotlib and
requests in for what is here a few JSON GETs, and its errors do not tell "Prometheus is down"
from "the query is wrong"; ``prometheus-client``, already a dependency, only exposes metrics.
So this stays a small client over urllib, with one error type:

- ``PrometheusError``, whose message names the URL and what to do. Two kinds the predictor
  handles differently (keep the last result vs. report the query):
  - ``PrometheusUnavailable``: refused, timed out, 5xx, no API at that URL, not Prometheus' JSON;
  - ``PrometheusQueryError``: Prometheus rejected the query (bad PromQL, bad range), or the
    answer is not the kind asked for.

Every request is bounded by ``timeout`` seconds. Values are floats as Prometheus answered them
("NaN", "+Inf" included); times are unix seconds.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from gpuwarden import durations

__all__ = ["PrometheusClient", "PrometheusError", "PrometheusQueryError", "PrometheusUnavailable", "Series"]


class PrometheusError(Exception):
    """Prometheus could not be queried; the message names its URL and what to do."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class PrometheusUnavailable(PrometheusError):
    """Prometheus did not answer usefully (down, slow, 5xx, no API there, not JSON)."""


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected the query (bad PromQL, bad range) or answered another result type."""


@dataclass(frozen=True)
class Series:
    """One series of a query's answer: its labels and its points (one for an instant query)."""

    labels: dict[str, str]
    times: np.ndarray  # unix seconds, float64
    values: np.ndarray  # float64; NaN and ±Inf as Prometheus answered them


class PrometheusClient:
    """Talks to one Prometheus at ``url`` (its base URL, e.g. ``http://127.0.0.1:9090``), each
    request bounded by ``timeout`` seconds."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout = timeout

    # --- the API ----------------------------------------------------------------------------

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """``/api/v1/query``: the value of ``expr`` at ``at`` (default: now); a scalar is one
        series without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", params, what=expr)
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            return [_series({}, [result])]
        if kind != "vector":
            raise PrometheusQueryError(
                f"{expr!r} gave a {kind}, not an instant vector or scalar (Prometheus at {self.url})", self.url
            )
        return [_series(r.get("metric", {}), [r["value"]]) for r in result]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """``/api/v1/query_range``: ``expr`` evaluated every ``step`` seconds from ``start`` to
        ``end``."""
        data = self.get(
            "/api/v1/query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
            what=expr,
        )
        if data.get("resultType") != "matrix":
            raise PrometheusQueryError(
                f"{expr!r} gave a {data.get('resultType')}, not a range vector (Prometheus at {self.url})", self.url
            )
        return [_series(r.get("metric", {}), r.get("values", [])) for r in data.get("result", [])]

    def series(
        self, match: Iterable[str], start: float | None = None, end: float | None = None
    ) -> list[dict[str, str]]:
        """``/api/v1/series``: the label sets of the series any selector in ``match`` selects."""
        selectors = list(match)
        params = [("match[]", m) for m in selectors]
        params += [(k, f"{v:.3f}") for k, v in (("start", start), ("end", end)) if v is not None]
        return list(self.get("/api/v1/series", params, what=", ".join(selectors)))

    def label_values(self, label: str, match: Iterable[str] = ()) -> list[str]:
        """``/api/v1/label/<label>/values``: the values ``label`` takes (in the series ``match``
        selects, when given)."""
        selectors = list(match)
        return list(
            self.get(
                f"/api/v1/label/{urllib.parse.quote(label, safe='')}/values",
                [("match[]", m) for m in selectors],
                what=", ".join(selectors) or label,
            )
        )

    def alerts(self) -> list[dict[str, Any]]:
        """``/api/v1/alerts``: the alerts pending or firing now, as Prometheus lists them (vmalert
        answers ``alerts: null`` for none)."""
        return list(self.get("/api/v1/alerts", {}).get("alerts") or [])

    def config(self) -> dict[str, Any]:
        """The configuration Prometheus has loaded (``/api/v1/status/config``), parsed."""
        text = self.get("/api/v1/status/config", {})["yaml"]
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} answered a config that is not YAML: {exc}", self.url
            ) from None

    def scrape_interval(self, default: float = 15.0) -> float:
        """The shortest scrape interval in the loaded config (``default`` when it cannot be read)."""
        try:
            config = self.config()
        except PrometheusError:
            return default
        try:
            found = [
                durations.parse(c["scrape_interval"])
                for c in config.get("scrape_configs") or []
                if c.get("scrape_interval")
            ]
            glob = (config.get("global") or {}).get("scrape_interval")
            if glob:
                found.append(durations.parse(glob))
        except (ValueError, AttributeError, TypeError):
            return default
        return min(found) if found else default

    # --- transport --------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, str] | list[tuple[str, str]], what: str = "") -> Any:
        """GETs ``path`` (an ``/api/v1/...`` path) and returns the answer's ``data``; raises
        PrometheusError naming the URL and what to do."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.url}{path}"
        asked = f" {what!r}" if what else f" {path}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc)
            if exc.code == 404:
                raise PrometheusUnavailable(
                    f"cannot query Prometheus at {self.url}: HTTP 404 for {path}: is that Prometheus' "
                    "base URL (e.g. http://host:9090, no path)?",
                    self.url,
                ) from None
            if 400 <= exc.code < 500:
                raise PrometheusQueryError(
                    f"Prometheus at {self.url} rejected{asked}: HTTP {exc.code} {detail}: fix the query", self.url
                ) from None
            raise PrometheusUnavailable(
                f"cannot query Prometheus at {self.url}: HTTP {exc.code} {detail}: "
                "see Prometheus' log; retried next time",
                self.url,
            ) from None
        except TimeoutError:
            raise self._timed_out() from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise self._timed_out() from None
            raise PrometheusUnavailable(
                f"cannot query Prometheus at {self.url}: unreachable ({reason}): "
                "check that it runs there and that the URL is right",
                self.url,
            ) from None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            raise PrometheusUnavailable(
                f"cannot query Prometheus at {self.url}: the answer to {path} is not "
                "Prometheus' JSON: is that Prometheus' base URL?",
                self.url,
            )
        if body.get("status") != "success":
            raise PrometheusQueryError(
                f"Prometheus at {self.url} rejected{asked}: {body.get('errorType')}: "
                f"{body.get('error')}: fix the query",
                self.url,
            )
        return body.get("data")

    def _timed_out(self) -> PrometheusUnavailable:
        return PrometheusUnavailable(
            f"cannot query Prometheus at {self.url}: did not answer within "
            f"{self.timeout:g}s: check its load, or raise the timeout",
            self.url,
        )


def _series(labels: dict[str, str], points: list[list[Any]]) -> Series:
    times = np.array([float(p[0]) for p in points], dtype=float)
    values = np.array([float(p[1]) for p in points], dtype=float)  # "NaN", "+Inf" parse as floats
    return Series(dict(labels), times, values)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()
    except OSError:
        return ""
    try:
        body = json.loads(raw)
        return f"{body.get('errorType')}: {body.get('error')}"
    except (ValueError, AttributeError):
        return raw[:200].decode(errors="replace").strip()
