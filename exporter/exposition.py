"""The Prometheus text format (0.0.4), rendered fast.

prometheus_client's ``generate_latest`` re-validates and re-escapes every label name and value of
every sample on every scrape; at 8 GPUs that is most of a scrape's CPU. Our label sets repeat
scrape after scrape (the same GPUs), so this renderer escapes each distinct label set once and
remembers the result; everything else follows the same format, from the same metric families.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_CACHED = 100_000  # label sets; far above any real fleet, it only guards against label churn


class LabelSet(dict[str, str]):
    """A label dict that carries its own rendered text; build once, share, never mutate.

    Each GPU's label sets live as long as the GPU, so rendering them once (instead of escaping
    every label of every sample on every scrape) is where most of a scrape's CPU went.
    """

    __slots__ = ("text",)

    def __init__(self, labels: dict[str, str]) -> None:
        super().__init__(labels)
        self.text = _label_text(labels)


def _label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(str(v))}"' for k, v in labels.items()) + "}"


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n")


def _value(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:
        return "NaN"
    return repr(float(v))


class TextRenderer:
    """Renders a collector's families; one instance per served registry (it caches label text)."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}
        self._headers: dict[tuple[str, str, str], str] = {}

    def _label_text(self, labels: dict[str, str]) -> str:
        if type(labels) is LabelSet:
            return labels.text
        key = tuple(labels.items())
        text = self._labels.get(key)
        if text is None:
            text = _label_text(labels)
            if len(self._labels) >= _MAX_CACHED:
                self._labels.clear()
            self._labels[key] = text
        return text

    def _header(self, fam: Metric) -> str:
        name = fam.name + ("_total" if fam.type == "counter" else "")
        key = (name, fam.documentation, fam.type)
        text = self._headers.get(key)
        if text is None:
            mtype = fam.type if fam.type in ("counter", "gauge", "histogram", "summary") else "untyped"
            text = f"# HELP {name} {_escape_help(fam.documentation)}\n# TYPE {name} {mtype}\n"
            self._headers[key] = text
        return text

    def render_families(self, families: Iterable[Metric]) -> bytes:
        out: list[str] = []
        append = out.append
        label_text = self._label_text
        for fam in families:
            append(self._header(fam))
            skip_created = fam.type != "gauge"  # 0.0.4 has no _created series (client_python skips them)
            for s in fam.samples:
                if skip_created and s.name.endswith("_created"):
                    continue
                labels, v = s.labels, s.value
                text = labels.text if type(labels) is LabelSet else label_text(labels)
                # repr() is the shortest exact float; only inf and NaN need Prometheus spellings.
                value = repr(v) if type(v) is float and -math.inf < v < math.inf else _value(v)
                append(f"{s.name}{text} {value}\n")
        return "".join(out).encode()

    def render(self, collector: Collector) -> bytes:
        return self.render_families(collector.collect())
