"""The live view's line-per-change output (what `gpuwarden up` prints when not on a terminal)."""

from __future__ import annotations

import collections
import io
from typing import Any

from gpuwarden.stack.view import LiveView


class _Sink:
    def __init__(self, keep: int) -> None:
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.total = 0

    def page(self, rule: str) -> None:
        self.received.append({"at": 0, "receiver": "oncall", "status": "firing", "labels": {"rule": rule, "gpu": "3"}})
        self.total += 1


def _view(sink: _Sink) -> LiveView:
    return LiveView("http://agent", "http://prom", "t", sink, [], out=io.StringIO(), redraw=False)  # type: ignore[arg-type]


def _snap(state: str = "healthy", alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "gpus": [{"uuid": "GPU-a", "index": 3, "state": state}],
        "alerts": alerts or [],
        "actions": [],
        "errors": [],
    }


def test_each_notification_is_printed_once_even_past_the_sinks_memory() -> None:
    sink = _Sink(keep=3)
    view = _view(sink)
    for i in range(5):
        sink.page(f"R{i}")
    assert [line.split()[-3] for line in view.changes(_snap())] == ["R2", "R3", "R4"]
    sink.page("R5")
    assert [line.split()[-3] for line in view.changes(_snap())] == ["R5"]
    assert view.changes(_snap()) == []


def test_state_changes_and_alerts_are_printed_when_they_change() -> None:
    view = _view(_Sink(keep=10))
    assert view.changes(_snap()) == []  # a healthy GPU seen for the first time is not news
    firing = [{"state": "firing", "labels": {"rule": "ECC_UNCORRECTABLE", "gpu": "3"}}]
    lines = view.changes(_snap("quarantined", firing))
    assert any("gpu 3 (GPU-a) is quarantined" in line for line in lines)
    assert any("alert ECC_UNCORRECTABLE gpu 3 firing" in line for line in lines)
    assert view.changes(_snap("quarantined", firing)) == []
    assert any("alert ECC_UNCORRECTABLE gpu 3 resolved" in line for line in view.changes(_snap("quarantined")))


def test_an_alert_about_no_single_gpu_names_none() -> None:
    view = _view(_Sink(keep=10))
    pending = [{"state": "pending", "labels": {"rule": "GPU_METRICS_ABSENT"}}]
    lines = view.changes(_snap(alerts=pending))
    assert [line.split(" ", 1)[1] for line in lines] == ["alert GPU_METRICS_ABSENT pending"]
