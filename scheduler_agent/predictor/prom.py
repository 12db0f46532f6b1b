"""Minimal Prometheus HTTP API client: ``/api/v1/query_range`` over urllib.

Errors are translated at this boundary into two kinds the service handles differently:
PrometheusUnavailable (refused, timed out, 5xx, not Prometheus: try again next period, keep the
last result) and PrometheusQueryError (4xx / status "error": our query is wrong, say which).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np


class PrometheusError(Exception):
    """Base of the predictor's Prometheus errors."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus did not answer usefully (down, slow, 5xx, not JSON)."""


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected the query (bad PromQL, bad range)."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    times: np.ndarray
    values: np.ndarray


class PrometheusClient:
    """Talks to one Prometheus at ``url`` (e.g. ``http://127.0.0.1:9090``) with a per-request timeout."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query_range(self, query: str, start: float, end: float, step: float) -> list[Series]:
        params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                         "step": f"{step:g}"})
        url = f"{self.url}/api/v1/query_range?{params}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc.read())
            if 400 <= exc.code < 500:
                raise PrometheusQueryError(f"Prometheus at {self.url} rejected {query!r}: HTTP {exc.code} {detail}") from None
            raise PrometheusUnavailable(f"Prometheus at {self.url} answered HTTP {exc.code} {detail}") from None
        except (socket.timeout, TimeoutError):
            raise PrometheusUnavailable(f"Prometheus at {self.url} did not answer within {self.timeout:g}s") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise PrometheusUnavailable(f"Prometheus at {self.url} did not answer within {self.timeout:g}s") from None
            raise PrometheusUnavailable(f"Prometheus at {self.url} is unreachable: {reason}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise PrometheusUnavailable(f"Prometheus at {self.url} answered something that is not JSON "
                                        f"(is --prometheus.url pointing at Prometheus?)") from None
        if body.get("status") != "success":
            raise PrometheusQueryError(f"Prometheus at {self.url} rejected {query!r}: "
                                       f"{body.get('errorType')}: {body.get('error')}")
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise PrometheusQueryError(f"{query!r} gave a {data.get('resultType')}, not a range vector")
        out = []
        for s in data.get("result", []):
            pts = s.get("values", [])
            t = np.array([float(p[0]) for p in pts], dtype=float)
            v = np.array([float(p[1]) for p in pts], dtype=float)  # "NaN"/"+Inf" parse as floats
            out.append(Series(dict(s.get("metric", {})), t, v))
        return out


def _error_text(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        return f"{body.get('errorType')}: {body.get('error')}"
    except ValueError:
        return raw[:200].decode(errors="replace")
